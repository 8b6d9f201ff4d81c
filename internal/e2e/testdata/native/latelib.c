// A program that maps a library only after it has been sampled: it spins
// in main first (cgscope announces it and reads its mappings, the library
// not among them), then dlopen()s liblate.so and calls late_loop there,
// which calls back into late_callback and late_leaf here. The leaves lie
// in the program, known from the first read; the caller in between lies in
// the library, mapped since. Built like chain.c (-O2, no frame pointers).
// Usage: latelib LIBRARY SECONDS
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

volatile unsigned long sink;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) void late_leaf(void)
{
	for (int i = 0; i < 2000; i++)
		sink = sink * 31 + i;
}

__attribute__((noinline)) void late_callback(void)
{
	late_leaf();
	sink++; // not a tail call
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: latelib LIBRARY SECONDS\n");
		return 2;
	}
	double end = now() + atof(argv[2]);
	for (double t = now() + 0.5; now() < t;)
		sink = sink * 7 + 1; // sampled, so announced, before the library is mapped
	void *lib = dlopen(argv[1], RTLD_NOW);
	if (!lib) {
		fprintf(stderr, "dlopen: %s\n", dlerror());
		return 1;
	}
	void (*loop)(void (*)(void), double) = (void (*)(void (*)(void), double))dlsym(lib, "late_loop");
	if (!loop) {
		fprintf(stderr, "dlsym: %s\n", dlerror());
		return 1;
	}
	loop(late_callback, end);
	return 0;
}
