// The loads of the scheduler benchmark (internal/bench/sched), compiled at
// run time with `gcc -O2`. Each counts its own work into a slot of a
// counter file that the benchmark maps too, and ends on its own after the
// seconds it is given, or with the benchmark (parent-death SIGKILL).
//
//   loads pingpong COUNTER SLOT SECONDS
//     Two processes bounce one byte over two pipes, each blocking in
//     read(2) until the other writes: every round trip puts each of them to
//     sleep and wakes it again. Counts round trips. (In C rather than Go:
//     a Go process adds runtime threads that wake on their own, and these
//     would add context switches that no real ping-pong has.)
//
//   loads faults COUNTER SLOT SECONDS [KIB]
//     Maps KIB (default 512) of fresh anonymous memory, writes one byte to
//     each page, unmaps it, again and again: one user page fault per page
//     (transparent huge pages are refused for the range). Counts pages.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 64

static double now(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
	fprintf(stderr, "loads: %s: %s\n", what, strerror(errno));
	exit(1);
}

static volatile uint64_t *counter(const char *path, long slot) {
	if (slot < 0 || slot >= SLOTS) {
		fprintf(stderr, "loads: slot %ld: want 0..%d\n", slot, SLOTS - 1);
		exit(2);
	}
	int fd = open(path, O_RDWR | O_CREAT, 0600);
	if (fd < 0) die(path);
	if (ftruncate(fd, SLOTS * 8) < 0) die("ftruncate");
	uint64_t *words = mmap(NULL, SLOTS * 8, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (words == MAP_FAILED) die("mmap counter");
	close(fd);
	return &words[slot];
}

static int pingpong(volatile uint64_t *n, double seconds) {
	int ping[2], pong[2];
	if (pipe2(ping, O_CLOEXEC) < 0 || pipe2(pong, O_CLOEXEC) < 0) die("pipe2");
	pid_t partner = fork();
	if (partner < 0) die("fork");
	if (partner == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		close(ping[1]);
		close(pong[0]);
		char c;
		for (;;) {
			ssize_t m = read(ping[0], &c, 1);
			if (m < 0 && errno == EINTR) continue;
			if (m != 1) _exit(m == 0 ? 0 : 1); // the leader closed its end
			if (write(pong[1], &c, 1) != 1) _exit(1);
		}
	}
	close(ping[0]);
	close(pong[1]);
	char c = 1;
	uint64_t count = 0;
	double end = now() + seconds;
	do {
		for (int i = 0; i < 1024; i++) {
			if (write(ping[1], &c, 1) != 1) die("write");
			ssize_t m;
			while ((m = read(pong[0], &c, 1)) < 0 && errno == EINTR)
				;
			if (m != 1) die("read (partner gone?)");
			__atomic_store_n(n, ++count, __ATOMIC_RELAXED);
		}
	} while (now() < end);
	close(ping[1]);
	int status;
	waitpid(partner, &status, 0);
	return 0;
}

static int faults(volatile uint64_t *n, double seconds, long kib) {
	long page = sysconf(_SC_PAGESIZE);
	size_t size = (size_t)kib * 1024;
	if (size < (size_t)page) size = page;
	uint64_t count = 0;
	double end = now() + seconds;
	for (long i = 0;; i++) {
		char *b = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (b == MAP_FAILED) die("mmap");
		if (madvise(b, size, MADV_NOHUGEPAGE) < 0) die("madvise");
		for (size_t off = 0; off < size; off += page) ((volatile char *)b)[off] = 1;
		if (munmap(b, size) < 0) die("munmap");
		count += size / page;
		__atomic_store_n(n, count, __ATOMIC_RELAXED);
		if (i % 16 == 0 && now() >= end) return 0;
	}
}

int main(int argc, char **argv) {
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (argc < 5) {
		fprintf(stderr, "usage: loads pingpong|faults COUNTER SLOT SECONDS [KIB]\n");
		return 2;
	}
	volatile uint64_t *n = counter(argv[2], atol(argv[3]));
	double seconds = atof(argv[4]);
	if (strcmp(argv[1], "pingpong") == 0) return pingpong(n, seconds);
	if (strcmp(argv[1], "faults") == 0) return faults(n, seconds, argc > 5 ? atol(argv[5]) : 512);
	fprintf(stderr, "loads: unknown load %s\n", argv[1]);
	return 2;
}
