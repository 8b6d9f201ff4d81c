// gosplit burns CPU in two functions with identical loop bodies, calling the
// first three times as often as the second: a 75% / 25% split of CPU time.
// With -inline it burns in viaInline through mix, which the compiler inlines.
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

// mix is small enough for the compiler to inline: with -inline its
// instructions run inside viaInline, where only the inline tree of the
// binary's pclntab still names it.
func mix(x uint64, i int) uint64 {
	x = x*6364136223846793005 + uint64(i)
	x ^= x >> 29
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 32
	return x
}

//go:noinline
func viaInline(n int) uint64 {
	x := uint64(n)
	for i := 0; i < n; i++ {
		x = mix(x, i)
	}
	return x
}

func main() {
	duration := flag.Duration("duration", time.Minute, "how long to run")
	inline := flag.Bool("inline", false, "burn in viaInline, through the inlined mix, instead")
	flag.Parse()
	deadline := time.Now().Add(*duration)
	if *inline {
		for time.Now().Before(deadline) {
			sink += viaInline(40000)
		}
		fmt.Fprintln(os.Stderr, sink)
		return
	}
	for time.Now().Before(deadline) {
		for i := 0; i < 50; i++ {
			sink += hotSeventyFive(30000)
			sink += hotTwentyFive(10000)
		}
	}
	fmt.Fprintln(os.Stderr, sink)
}
