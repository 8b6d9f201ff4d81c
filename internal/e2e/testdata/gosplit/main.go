// gosplit burns CPU in two functions with identical loop bodies, calling the
// first three times as often as the second: a 75% / 25% split of CPU time.
// With -phase-switch it burns only in hotSeventyFive for the first half of
// -duration and only in hotTwentyFive for the second.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"
)

var sink uint64

//go:noinline
func hotSeventyFive(n int) uint64 {
	x := uint64(n)
	for i := 0; i < n; i++ {
		x = x*6364136223846793005 + uint64(i)
	}
	return x
}

//go:noinline
func hotTwentyFive(n int) uint64 {
	x := uint64(n)
	for i := 0; i < n; i++ {
		x = x*6364136223846793005 + uint64(i)
	}
	return x
}

func main() {
	duration := flag.Duration("duration", time.Minute, "how long to run")
	flag.Parse()
	deadline := time.Now().Add(*duration)
	for time.Now().Before(deadline) {
		for i := 0; i < 50; i++ {
			sink += hotSeventyFive(30000)
			sink += hotTwentyFive(10000)
		}
	}
	fmt.Fprintln(os.Stderr, sink)
}
