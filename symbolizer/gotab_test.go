package symbolizer

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"os"
	"strings"
	"testing"
)

// selfPclntab returns the .gopclntab and .text address of the test binary itself.
func selfPclntab(t testing.TB) ([]byte, uint64) {
	t.Helper()
	f, err := elf.Open("/proc/self/exe")
	if err != nil {
		t.Skip(err)
	}
	defer f.Close()
	sec, text := f.Section(".gopclntab"), f.Section(".text")
	if sec == nil || text == nil {
		t.Skip("test binary has no .gopclntab")
	}
	data, err := sec.Data()
	if err != nil {
		t.Fatal(err)
	}
	return data, text.Addr
}

func TestGoTableSelf(t *testing.T) {
	data, text := selfPclntab(t)
	g, err := goTableFromData(data, text)
	if err != nil {
		t.Fatal(err)
	}
	main := g.tab.LookupFunc("runtime.main")
	if main == nil {
		t.Fatal("no runtime.main")
	}
	fn, file, line := g.lookup(main.Entry + 1)
	if fn != "runtime.main" || !strings.HasSuffix(file, "runtime/proc.go") || line <= 0 {
		t.Errorf("runtime.main: %q %s:%d", fn, file, line)
	}
}

func TestGoTableCorrupt(t *testing.T) {
	data, text := selfPclntab(t)
	huge := bytes.Clone(data)
	binary.LittleEndian.PutUint64(huge[8:], 0xffffffff) // four billion functions
	if _, err := goTableFromData(huge, text); err == nil {
		t.Error("accepted an impossible function count")
	}
	for _, n := range []int{16, 40, 64, 72, 100, 1000, len(data) / 3, len(data) / 2, len(data) - 1} {
		g, err := goTableFromData(data[:n], text)
		if err == nil {
			g.lookup(g.lo + 1) // must not panic
		}
	}
	garbled := bytes.Clone(data)
	for i := 64; i < len(garbled); i += 7 {
		garbled[i] ^= 0x5a
	}
	if g, err := goTableFromData(garbled, text); err == nil {
		for pc := g.lo; pc < g.hi && pc < g.lo+1<<16; pc += 97 {
			g.lookup(pc)
		}
	}
}

func FuzzGoTable(f *testing.F) {
	if exe, err := os.ReadFile("/proc/self/exe"); err == nil {
		if ef, err := elf.NewFile(bytes.NewReader(exe)); err == nil {
			if sec := ef.Section(".gopclntab"); sec != nil {
				if data, err := sec.Data(); err == nil && len(data) > 4096 {
					f.Add(data[:4096], uint64(0x401000))
				}
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, text uint64) {
		if len(data) < 16 || !knownPclntabMagics[pclntabMagic(data)] {
			return
		}
		g, err := goTableFromData(data, text)
		if err != nil {
			return
		}
		for _, pc := range []uint64{g.lo, g.lo + 1, (g.lo + g.hi) / 2, g.hi - 1} {
			g.lookup(pc)
		}
	})
}
