// A C workload with a known call chain main -> fid_outer -> fid_middle ->
// fid_leaf, built by the tests with -O2 and without frame pointers, as
// Debian builds C. Usage: chain SECONDS [signal]
//
// With "signal", the chain runs inside a SIGPROF handler instead, which
// interrupts spin_in_main: its stacks must continue through the signal
// frame (__restore_rt) to main.
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#ifndef VARIANT
#define VARIANT 0
#endif

volatile unsigned long sink;
// Binaries built with different VARIANTs differ, and so do their build IDs.
volatile int variant = VARIANT;

__attribute__((noinline)) unsigned long fid_leaf(unsigned long n)
{
	unsigned long x = n;
	for (unsigned long i = 0; i < n; i++)
		x = x * 6364136223846793005UL + i;
	return x;
}

__attribute__((noinline)) unsigned long fid_middle(unsigned long n)
{
	return fid_leaf(n) ^ 0x5555;
}

__attribute__((noinline)) unsigned long fid_outer(unsigned long n)
{
	return fid_middle(n) * 3;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void on_signal(int sig)
{
	(void)sig;
	sink += fid_outer(20000000); // tens of milliseconds in the handler
}

__attribute__((noinline)) void spin_in_main(double until)
{
	while (now() < until)
		sink++;
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 5;
	double until = now() + seconds;
	if (argc > 2 && strcmp(argv[2], "signal") == 0) {
		struct sigaction sa;
		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = on_signal;
		sigaction(SIGPROF, &sa, NULL);
		struct itimerval it = { { 0, 100000 }, { 0, 100000 } };
		setitimer(ITIMER_PROF, &it, NULL);
		spin_in_main(until);
		return 0;
	}
	while (now() < until)
		sink += fid_outer(1000000);
	return 0;
}
