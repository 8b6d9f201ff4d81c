// A C++ workload with a known call chain main -> fid_outer -> fid_middle ->
// fid_leaf<int>, whose work is std::sort instantiated in the template, built
// by the tests with g++ -O2 (no frame pointers). Usage: sortchain SECONDS
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <vector>

// fid_leaf refills v with pseudo-random values and sorts them: nearly all
// the time is under it.
template <typename T> __attribute__((noinline)) T fid_leaf(std::vector<T> &v, unsigned seed)
{
	for (auto &x : v)
		x = (T)(seed = seed * 1103515245u + 12345u);
	std::sort(v.begin(), v.end());
	return v[v.size() / 2];
}

template <typename T> __attribute__((noinline)) T fid_middle(std::vector<T> &v, unsigned seed)
{
	return fid_leaf(v, seed) + 1;
}

__attribute__((noinline)) long fid_outer(std::vector<int> &v, unsigned seed)
{
	return fid_middle(v, seed) * 3L;
}

volatile long sink;

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? std::atof(argv[1]) : 5;
	auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
	std::vector<int> v(200000);
	unsigned seed = 42;
	while (std::chrono::steady_clock::now() < until)
		sink += fid_outer(v, seed++);
	return 0;
}
