package symbolizer

import (
	"debug/elf"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// goToolBinaries lists the Go binaries of the toolchain: large, distinct Go executables.
func goToolBinaries() []string {
	goroot := runtime.GOROOT()
	paths, _ := filepath.Glob(filepath.Join(goroot, "pkg", "tool", runtime.GOOS+"_"+runtime.GOARCH, "*"))
	paths = append(paths, filepath.Join(goroot, "bin", "go"), filepath.Join(goroot, "bin", "gofmt"))
	var out []string
	for _, p := range paths {
		if f, err := elf.Open(p); err == nil {
			if f.Section(".gopclntab") != nil {
				out = append(out, p)
			}
			f.Close()
		}
	}
	return out
}

// copyWithNewBuildID copies the ELF file src to dst, changing a byte of every note's
// descriptor so that the copy has build IDs of its own (a distinct object to the cache).
func copyWithNewBuildID(t testing.TB, src, dst string, salt byte) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, sec := range f.Sections {
		if sec.Type != elf.SHT_NOTE || sec.Size < 16 {
			continue
		}
		off := sec.Offset
		nameSz := uint64(binary.LittleEndian.Uint32(data[off:]))
		descOff := off + 12 + alignUp(nameSz, 4)
		if descOff < off+sec.Size {
			data[descOff] ^= salt
		}
	}
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

// fakeProcess writes /proc/PID/maps for a process that maps bin the way the loader maps a
// non-PIE executable, and returns a few runtime addresses inside its Go functions.
func fakeProcess(t testing.TB, root string, pid int, bin string, n int, rng *rand.Rand) []uint64 {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := os.Stat(bin)
	if err != nil {
		t.Fatal(err)
	}
	var maps string
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD || p.Flags&elf.PF_X == 0 {
			continue
		}
		start, off := p.Vaddr&^0xfff, p.Off&^0xfff
		maps += fmt.Sprintf("%x-%x r-xp %08x 00:2a %d %s\n", start, (p.Vaddr+p.Memsz+0xfff)&^0xfff, off, inodeOf(fi), bin)
	}
	pidDir := filepath.Join(root, fmt.Sprint(pid))
	if err := os.MkdirAll(pidDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pidDir, "maps"), []byte(maps), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/", filepath.Join(pidDir, "root")); err != nil {
		t.Fatal(err)
	}
	tab := goSymTable(t, f)
	addrs := make([]uint64, n)
	for i := range addrs {
		fn := tab.Funcs[rng.IntN(len(tab.Funcs))]
		for fn.End <= fn.Entry {
			fn = tab.Funcs[rng.IntN(len(tab.Funcs))]
		}
		addrs[i] = fn.Entry + rng.Uint64N(fn.End-fn.Entry)
	}
	return addrs
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// BenchmarkManyGoProcesses announces 20 processes, each mapping a different large Go
// binary (the toolchain's, and copies of them with other build IDs), then symbolizes a few
// addresses of each. It reports the Go heap in use (after GC) that the Symbolizer holds
// after the announcements and after symbolizing, and the time both took.
func BenchmarkManyGoProcesses(b *testing.B) {
	const procs, addrsPerProc = 20, 8
	bins := goToolBinaries()
	if len(bins) == 0 {
		b.Skip("no Go toolchain binaries")
	}
	root := b.TempDir()
	copies := b.TempDir()
	rng := rand.New(rand.NewPCG(3, 4))
	addrs := make([][]uint64, procs)
	for i := range procs {
		bin := bins[i%len(bins)]
		if i >= len(bins) {
			cp := filepath.Join(copies, fmt.Sprintf("%s-%d", filepath.Base(bin), i))
			copyWithNewBuildID(b, bin, cp, byte(i))
			bin = cp
		}
		addrs[i] = fakeProcess(b, root, 1000+i, bin, addrsPerProc, rng)
	}
	var started, symbolized uint64
	var startTime, symTime time.Duration
	for b.Loop() {
		base := heapInUse()
		s := New(Options{ProcRoot: root})
		t0 := time.Now()
		for i := range procs {
			if err := s.ProcessStarted(uint32(1000 + i)); err != nil {
				b.Fatal(err)
			}
		}
		startTime += time.Since(t0)
		started = heapInUse() - base
		t0 = time.Now()
		for i := range procs {
			for j, f := range s.User(uint32(1000+i), addrs[i]) {
				if f.Function == "" {
					b.Fatalf("process %d: address %#x unnamed", i, addrs[i][j])
				}
			}
		}
		symTime += time.Since(t0)
		symbolized = heapInUse() - base
		runtime.KeepAlive(s)
	}
	b.ReportMetric(float64(started)/(1<<20), "heapMiB-started")
	b.ReportMetric(float64(symbolized)/(1<<20), "heapMiB-symbolized")
	b.ReportMetric(float64(startTime.Milliseconds())/float64(b.N), "ms-started")
	b.ReportMetric(float64(symTime.Milliseconds())/float64(b.N), "ms-symbolized")
}
