package symbolizer

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// fakeGoProcess builds a fake /proc in which pid 1000 maps the Go compiler (a large Go
// binary) the way the loader would, so the benchmark needs no running process. It returns
// the proc root and addresses spread over the compiler's functions.
func fakeGoProcess(b *testing.B, n int) (string, []uint64) {
	bin := filepath.Join(runtime.GOROOT(), "pkg", "tool", runtime.GOOS+"_"+runtime.GOARCH, "compile")
	if _, err := os.Stat(bin); err != nil {
		b.Skip(err)
	}
	root := b.TempDir()
	return root, fakeProcess(b, root, 1000, bin, n, rand.New(rand.NewPCG(1, 2)))
}

// BenchmarkSymbolizeGoBinary reports addresses per second through the whole Symbolizer
// (maps snapshot, object cache, .gopclntab lookup with file and line) for the Go compiler.
// cold: a new Symbolizer per batch, so each batch parses the binary; warm and recurring:
// see below.
func BenchmarkSymbolizeGoBinary(b *testing.B) {
	const batch = 10000
	root, addrs := fakeGoProcess(b, batch)
	stacks := make([][]uint64, 0, batch/32)
	for i := 0; i+32 <= len(addrs); i += 32 {
		stacks = append(stacks, addrs[i:i+32]) // 32-frame stacks
	}
	symbolizeAll := func(b *testing.B, s *Symbolizer) {
		for _, st := range stacks {
			if frames := s.User(1000, st); frames[0].Function == "" {
				b.Fatalf("unnamed frame at %#x", st[0])
			}
		}
	}
	b.Run("cold", func(b *testing.B) {
		for b.Loop() {
			s := New(Options{ProcRoot: root})
			if err := s.ProcessStarted(1000); err != nil {
				b.Fatal(err)
			}
			symbolizeAll(b, s)
		}
		b.ReportMetric(float64(b.N*len(stacks)*32)/b.Elapsed().Seconds(), "addrs/s")
	})
	// warm: the objects cached, the frame cache off: what an address not
	// seen lately costs. recurring: the same addresses drain after drain
	// (hot code) with the default frame cache, of 16,384 slots.
	for _, c := range []struct {
		name       string
		frameCache int
	}{{"warm", -1}, {"recurring", 0}} {
		b.Run(c.name, func(b *testing.B) {
			s := New(Options{ProcRoot: root, FrameCacheSize: c.frameCache})
			if err := s.ProcessStarted(1000); err != nil {
				b.Fatal(err)
			}
			symbolizeAll(b, s)
			before := s.Stats()
			b.ResetTimer()
			for b.Loop() {
				symbolizeAll(b, s)
			}
			b.ReportMetric(float64(b.N*len(stacks)*32)/b.Elapsed().Seconds(), "addrs/s")
			st := s.Stats()
			if hits, misses := st.FrameCacheHits-before.FrameCacheHits, st.FrameCacheMisses-before.FrameCacheMisses; hits+misses > 0 {
				b.ReportMetric(float64(hits)/float64(hits+misses), "frame-cache-hit-ratio")
			}
		})
	}
}

// BenchmarkProcessStartedCached measures announcing a process whose objects are cached.
func BenchmarkProcessStartedCached(b *testing.B) {
	mustBeRoot(b)
	s := New(Options{})
	pid := uint32(os.Getpid())
	if err := s.ProcessStarted(pid); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := s.ProcessStarted(pid); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLoadKallsyms measures reading and indexing /proc/kallsyms.
func BenchmarkLoadKallsyms(b *testing.B) {
	s := New(Options{})
	for b.Loop() {
		if err := s.ReloadKallsyms(); err != nil {
			b.Skip(err)
		}
	}
	b.ReportMetric(float64(s.kernel.Load().len()), "symbols")
}

// BenchmarkELFSymbolTable measures indexing the function symbols of the largest shared
// library at hand (libLLVM's 36k .dynsym functions where installed): what the first
// sample in a big C++ library costs.
func BenchmarkELFSymbolTable(b *testing.B) {
	var path string
	for _, pattern := range []string{"/usr/lib/*/libLLVM*.so*", "/usr/lib/*/libstdc++.so.6", "/usr/lib/*/libc.so.6"} {
		if m, _ := filepath.Glob(pattern); len(m) > 0 {
			path = m[0]
			break
		}
	}
	if path == "" {
		b.Skip("no large shared library found")
	}
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		b.Fatal(err)
	}
	n := 0
	for b.Loop() {
		obj, err := parseObject(newObjFile(f, uint64(fi.Size()), newBlockCache(blockCacheBytes)), "")
		if err != nil {
			b.Fatal(err)
		}
		n = obj.NumSymbols()
	}
	b.ReportMetric(float64(n), "symbols")
}
