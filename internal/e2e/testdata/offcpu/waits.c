// waits: threads that wait in known functions, for the off-CPU tests.
//
//   waits            one thread sleeps 50 ms at a time in fid_sleep_50ms,
//                    one waits on a pipe in fid_pipe_wait (fed every 20 ms
//                    by a thread sleeping in fid_pipe_feed), and the main
//                    thread burns CPU in fid_burn.
//   waits io DEVICE  one thread reads 4 KiB blocks of DEVICE with O_DIRECT
//                    in fid_disk_read (uninterruptible I/O wait), and the
//                    main thread sleeps.
//
// Built without frame pointers: the stacks come from the unwind tables.
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int pipefd[2];
static const char *device;
volatile unsigned long sink;

static void nap(long ns)
{
	struct timespec d = {ns / 1000000000, ns % 1000000000};
	nanosleep(&d, NULL);
}

__attribute__((noinline)) void fid_sleep_50ms(void) { nap(50000000); }

__attribute__((noinline)) void fid_pipe_wait(void)
{
	char c;
	if (read(pipefd[0], &c, 1) != 1)
		exit(1);
}

__attribute__((noinline)) void fid_pipe_feed(void)
{
	nap(20000000);
	if (write(pipefd[1], "x", 1) != 1)
		exit(1);
}

__attribute__((noinline)) void fid_burn(void)
{
	for (unsigned long i = 0; i < 1000000; i++)
		sink += i;
}

__attribute__((noinline)) void fid_disk_read(int fd, void *buf, off_t blocks)
{
	off_t at = (off_t)(random() % blocks) * 4096;
	if (pread(fd, buf, 4096, at) != 4096) {
		perror("pread");
		exit(1);
	}
}

static void *sleeper(void *arg)
{
	for (;;)
		fid_sleep_50ms();
	return arg;
}

static void *reader(void *arg)
{
	for (;;)
		fid_pipe_wait();
	return arg;
}

static void *feeder(void *arg)
{
	for (;;)
		fid_pipe_feed();
	return arg;
}

static void *disk_reader(void *arg)
{
	int fd = open(device, O_RDONLY | O_DIRECT);
	if (fd < 0) {
		perror(device);
		exit(1);
	}
	off_t size = lseek(fd, 0, SEEK_END);
	void *buf;
	if (size < 4096 || posix_memalign(&buf, 4096, 4096))
		exit(1);
	for (;;)
		fid_disk_read(fd, buf, size / 4096);
	return arg;
}

static void start(void *(*fn)(void *))
{
	pthread_t t;
	if (pthread_create(&t, NULL, fn, NULL))
		exit(1);
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "io") == 0) {
		device = argv[2];
		start(disk_reader);
		for (;;)
			pause();
	}
	if (pipe(pipefd))
		return 1;
	start(sleeper);
	start(reader);
	start(feeder);
	for (;;)
		fid_burn();
}
