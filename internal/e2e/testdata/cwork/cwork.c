/* cwork burns CPU in a static (local) function and in an exported one, for
 * argv[1] seconds. Built PIE with -O2 -fno-omit-frame-pointer -rdynamic, so
 * hot_exported is also in .dynsym and survives `strip --strip-all`. */
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

/* The stripped variant is built with another VARIANT so its build ID differs:
 * otherwise the symbolizer rightly reuses the unstripped copy's symbols. */
#ifndef VARIANT
#define VARIANT 1
#endif

static volatile uint64_t sink;

static __attribute__((noinline, noipa)) uint64_t hot_static(uint64_t n)
{
	uint64_t x = n;
	for (uint64_t i = 0; i < n; i++) {
		x = x * 6364136223846793005ULL + i;
		__asm__ volatile("" : "+r"(x));
	}
	return x;
}

/* A different constant from hot_static's, so gcc's identical code folding
 * cannot merge the two. */
__attribute__((noinline, noipa)) uint64_t hot_exported(uint64_t n)
{
	uint64_t x = n;
	for (uint64_t i = 0; i < n; i++) {
		x = x * 2862933555777941757ULL + i;
		__asm__ volatile("" : "+r"(x));
	}
	return x;
}

int main(int argc, char **argv)
{
	time_t end = time(NULL) + (argc > 1 ? atoi(argv[1]) : 10);
	while (time(NULL) < end) {
		sink += hot_static(2000000);
		sink += hot_exported(2000000);
	}
	return (int)(sink & VARIANT);
}
