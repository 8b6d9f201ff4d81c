// A call chain main -> fid_outer -> fid_middle -> fid_leaf for the unwind
// table tests, with a function whose stack is realigned for an
// over-aligned local, which GCC then addresses through rbp.
#include <stdio.h>
#include <stdlib.h>

typedef double v4 __attribute__((vector_size(32)));

__attribute__((noinline)) void fill(v4 *v, unsigned long n)
{
	for (int i = 0; i < 8; i++)
		v[i] = (v4){n, i, 0, 1};
}

__attribute__((noinline)) unsigned long fid_leaf(unsigned long n)
{
	unsigned long x = n;
	for (unsigned long i = 0; i < n; i++)
		x = x * 6364136223846793005UL + i;
	return x;
}

__attribute__((noinline)) unsigned long fid_middle(unsigned long n)
{
	return fid_leaf(n) ^ fid_leaf(n / 2);
}

__attribute__((noinline)) unsigned long fid_aligned(unsigned long n)
{
	v4 v[8];
	fill(v, fid_middle(n));
	return (unsigned long)(v[0][0] + v[7][1]);
}

__attribute__((noinline)) unsigned long fid_outer(unsigned long n)
{
	return fid_middle(n) + fid_aligned(n);
}

int main(int argc, char **argv)
{
	unsigned long n = argc > 1 ? strtoul(argv[1], NULL, 10) : 1000;
	printf("%lu\n", fid_outer(n));
	return 0;
}
