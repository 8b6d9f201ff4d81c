// The library latelib maps late: late_loop calls back into the program
// until the monotonic clock passes end. Built -O2 without frame pointers.
#include <time.h>

volatile unsigned long late_sink;

__attribute__((noinline)) void late_loop(void (*cb)(void), double end)
{
	struct timespec ts;
	do {
		for (int i = 0; i < 1000; i++) {
			cb();
			late_sink++; // not a tail call
		}
		clock_gettime(CLOCK_MONOTONIC, &ts);
	} while (ts.tv_sec + ts.tv_nsec / 1e9 < end);
}
