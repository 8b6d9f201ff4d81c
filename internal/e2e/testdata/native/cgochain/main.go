// A Go program calling C through cgo, the C built with -O2 and without
// frame pointers: its stacks hold Go frames above (main.main,
// main.callC) and C frames below (fid_outer, fid_middle, fid_leaf).
// Usage: cgochain SECONDS
package main

/*
#cgo CFLAGS: -O2 -fomit-frame-pointer
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
*/
import "C"

import (
	"os"
	"strconv"
	"time"
)

var sink uint64

//go:noinline
func callC() { sink += uint64(C.fid_outer(20000000)) }

func main() {
	secs := 5.0
	if len(os.Args) > 1 {
		secs, _ = strconv.ParseFloat(os.Args[1], 64)
	}
	until := time.Now().Add(time.Duration(secs * float64(time.Second)))
	for time.Now().Before(until) {
		callC()
	}
}
