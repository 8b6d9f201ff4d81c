/* cwork burns CPU in a static (local) function and in an exported one, for
 * argv[1] seconds. Built PIE with -O2 -fno-omit-frame-pointer -rdynamic, so
 * hot_exported is also in .dynsym and survives `strip --strip-all`. */
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

static volatile uint64_t sink;

static __attribute__((noinline)) uint64_t hot_static(uint64_t n)
{
	uint64_t x = n;
	for (uint64_t i = 0; i < n; i++) {
		x = x * 6364136223846793005ULL + i;
		__asm__ volatile("" : "+r"(x));
	}
	return x;
}

__attribute__((noinline)) uint64_t hot_exported(uint64_t n)
{
	uint64_t x = n;
	for (uint64_t i = 0; i < n; i++) {
		x = x * 6364136223846793005ULL + i;
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
	return (int)(sink & 1);
}
