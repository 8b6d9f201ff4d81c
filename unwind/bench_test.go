package unwind

import (
	"os"
	"testing"
)

// BenchmarkCompileLibLLVM compiles the table of the largest object on the
// test hosts (its .eh_frame is about 6 MB, 118,000 FDEs).
func BenchmarkCompileLibLLVM(b *testing.B) {
	const path = "/usr/lib/x86_64-linux-gnu/libLLVM.so.19.1"
	f, err := os.Open(path)
	if err != nil {
		b.Skipf("SKIPPED: %s not installed (make test installs llvm-19): %v", path, err)
	}
	defer f.Close()
	b.ReportAllocs()
	for b.Loop() {
		t, err := Compile(f)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(len(t.Rows)), "rows")
	}
}
