// phases burns CPU in phaseOne for the first -half of its run and in
// phaseTwo for the second, then exits: a history query over either half
// must show only that half's function.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"
)

var sink uint64

//go:noinline
func phaseOne(n int) uint64 {
	x := uint64(n)
	for i := 0; i < n; i++ {
		x = x*6364136223846793005 + uint64(i)
	}
	return x
}

//go:noinline
func phaseTwo(n int) uint64 {
	x := uint64(n)
	for i := 0; i < n; i++ {
		x = x*2862933555777941757 + uint64(i)
	}
	return x
}

func burn(until time.Time, fn func(int) uint64) {
	for time.Now().Before(until) {
		sink += fn(100000)
	}
}

func main() {
	half := flag.Duration("half", 5*time.Second, "length of each phase")
	flag.Parse()
	start := time.Now()
	burn(start.Add(*half), phaseOne)
	burn(start.Add(2**half), phaseTwo)
	fmt.Fprintln(os.Stderr, sink)
}
