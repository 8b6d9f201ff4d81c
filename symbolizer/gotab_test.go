package symbolizer

import (
	"bytes"
	"debug/elf"
	"debug/gosym"
	"encoding/binary"
	"os"
	"slices"
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
	ref, err := gosym.NewTable(nil, gosym.NewLineTable(data, text))
	if err != nil {
		t.Fatal(err)
	}
	main := ref.LookupFunc("runtime.main")
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
					f.Add(data[:4096], uint64(0x401000), uint64(0))
				}
			}
		}
	}
	synth, gofunc := synthPclntabInline()
	f.Add(synth, uint64(0x401000), gofunc)
	f.Fuzz(func(t *testing.T, data []byte, text, gofunc uint64) {
		if len(data) < 16 || !knownPclntabMagics[pclntabMagic(data)] {
			return
		}
		g, err := goTableFromData(data, text)
		if err != nil {
			return
		}
		g.setGoFunc(gofunc, uint64(len(data)))
		for _, pc := range []uint64{g.lo, g.lo + 1, (g.lo + g.hi) / 2, g.hi - 1, g.hi - g.hi%16 - 13} {
			g.lookup(pc)
			g.lookupFrame(pc, true)
		}
	})
}

// synthPclntab builds a small Go 1.20 table (little-endian, 64-bit, instruction size 1)
// with two 16-byte functions, main.a (a.go:10) and main.b (b.go:20, 21 from its 8th byte),
// and main.c inlined in main.b's first 8 bytes at the call site of its 8th byte. The
// inline tree (gofunc) is at the end of the table.
func synthPclntab() []byte {
	data, _ := synthPclntabInline()
	return data
}

// synthPclntabInline is synthPclntab that also returns the offset of its gofunc.
func synthPclntabInline() ([]byte, uint64) {
	le := binary.LittleEndian
	const hdr = 8 + 8*8
	names := []byte("main.a\x00main.b\x00main.c\x00")
	files := []byte("a.go\x00b.go\x00")
	cutab := le.AppendUint32(le.AppendUint32(nil, 0), 5) // CU 0: file 0 at 0, file 1 at 5
	pctab := []byte{0,
		22, 16, 0, // a pcln: line -1+11 = 10 for 16 bytes
		2, 16, 0, // a pcfile: file -1+1 = 0
		42, 8, 2, 8, 0, // b pcln: 20 for 8 bytes, then 21 for 8
		4, 16, 0, // b pcfile: file 1
		2, 8, 1, 8, 0, // b inline tree index: 0 for 8 bytes, then -1 for 8
	}
	funcnameOff := uint64(hdr)
	cuOff := funcnameOff + uint64(len(names))
	filetabOff := cuOff + uint64(len(cutab))
	pctabOff := filetabOff + uint64(len(files))
	pclnOff := pctabOff + uint64(len(pctab))
	var funcs []byte
	functab := []uint32{0, 20, 16, 20 + 44, 32}
	for _, fn := range []struct{ entry, name, pcfile, pcln, npcdata, nfuncdata uint32 }{
		{0, 0, 4, 1, 0, 0}, {16, 7, 12, 7, 3, 4}} {
		rec := make([]byte, 44)
		le.PutUint32(rec[0:], fn.entry)
		le.PutUint32(rec[4:], fn.name)
		le.PutUint32(rec[20:], fn.pcfile)
		le.PutUint32(rec[24:], fn.pcln)
		le.PutUint32(rec[28:], fn.npcdata)
		rec[43] = byte(fn.nfuncdata)
		funcs = append(funcs, rec...)
	}
	// main.b's pcdata (tables 0 and 1 absent, 2 the inline tree index) and funcdata
	// (0 to 2 absent, 3 the inline tree at gofunc+0).
	for _, v := range []uint32{0, 0, 15, ^uint32(0), ^uint32(0), ^uint32(0), 0} {
		funcs = le.AppendUint32(funcs, v)
	}
	out := le.AppendUint32(nil, 0xfffffff1)
	out = append(out, 0, 0, 1, 8)
	for _, w := range []uint64{2, 2, 0, funcnameOff, cuOff, filetabOff, pctabOff, pclnOff} {
		out = le.AppendUint64(out, w)
	}
	out = append(append(append(append(out, names...), cutab...), files...), pctab...)
	for _, v := range functab {
		out = le.AppendUint32(out, v)
	}
	out = append(out, funcs...)
	gofunc := uint64(len(out))
	// inlinedCall{funcID 0, nameOff 14 (main.c), parentPc 8, startLine 30}
	out = append(out, 0, 0, 0, 0)
	for _, v := range []uint32{14, 8, 30} {
		out = le.AppendUint32(out, v)
	}
	return out, gofunc
}

// setGoFunc places a table's inline trees at off in its file, as if found there.
func (g *goTable) setGoFunc(off, end uint64) {
	g.inl.once.Do(func() {})
	g.inl.data = goFuncData{off: off, end: end, ok: true}
}

func TestGoTableSyntheticInline(t *testing.T) {
	data, gofunc := synthPclntabInline()
	g, err := goTableFromData(data, 0x401000)
	if err != nil {
		t.Fatal(err)
	}
	// Without gofunc there is no inline expansion, and the position is pc's own.
	if fn, file, line, inl := g.lookupFrame(0x401010, true); fn != "main.b" || file != "b.go" || line != 20 || inl != nil {
		t.Errorf("without gofunc: %q %s:%d %v", fn, file, line, inl)
	}
	g.setGoFunc(gofunc, uint64(len(data)))
	fn, file, line, inl := g.lookupFrame(0x401013, true)
	want := []InlinedCall{{Function: "main.c", File: "b.go", Line: 20}}
	if fn != "main.b" || file != "b.go" || line != 21 || !slices.Equal(inl, want) {
		t.Errorf("inlined: %q %s:%d %v, want main.b b.go:21 %v", fn, file, line, inl, want)
	}
	// lookup, which does not expand, keeps pc's own position.
	if fn, file, line := g.lookup(0x401013); fn != "main.b" || file != "b.go" || line != 20 {
		t.Errorf("lookup: %q %s:%d", fn, file, line)
	}
	for _, pc := range []uint64{0x401000, 0x401018} {
		if _, _, _, inl := g.lookupFrame(pc, true); inl != nil {
			t.Errorf("%#x: inlined %v in code with no inlining", pc, inl)
		}
	}
	// A tree entry whose caller is outside the function, one that is cut off, one whose
	// name is out of the table: no expansion.
	for name, mutate := range map[string]func([]byte){
		"parentPc beyond the function": func(d []byte) { binary.LittleEndian.PutUint32(d[gofunc+8:], 16) },
		"negative parentPc":            func(d []byte) { binary.LittleEndian.PutUint32(d[gofunc+8:], ^uint32(0)) },
		"name beyond the table":        func(d []byte) { binary.LittleEndian.PutUint32(d[gofunc+4:], 1<<20) },
	} {
		bad := bytes.Clone(data)
		mutate(bad)
		g, err := goTableFromData(bad, 0x401000)
		if err != nil {
			t.Fatal(err)
		}
		g.setGoFunc(gofunc, uint64(len(bad)))
		if fn, _, line, inl := g.lookupFrame(0x401013, true); fn != "main.b" || line != 20 || inl != nil {
			t.Errorf("%s: %q line %d %v", name, fn, line, inl)
		}
	}
	g, _ = goTableFromData(data, 0x401000)
	g.setGoFunc(gofunc, uint64(len(data))-1) // the entry crosses the end of its section
	if _, _, _, inl := g.lookupFrame(0x401013, true); inl != nil {
		t.Errorf("read an inline tree entry past its section: %v", inl)
	}
}

func TestGoTableSynthetic(t *testing.T) {
	g, err := goTableFromData(synthPclntab(), 0x401000)
	if err != nil {
		t.Fatal(err)
	}
	if g.lo != 0x401000 || g.hi != 0x401020 {
		t.Errorf("range [%#x, %#x)", g.lo, g.hi)
	}
	tests := []struct {
		pc       uint64
		fn, file string
		line     int
	}{
		{0x400fff, "", "", 0},
		{0x401000, "main.a", "a.go", 10},
		{0x40100f, "main.a", "a.go", 10},
		{0x401010, "main.b", "b.go", 20},
		{0x401018, "main.b", "b.go", 21},
		{0x40101f, "main.b", "b.go", 21},
		{0x401020, "", "", 0},
	}
	for _, tc := range tests {
		fn, file, line := g.lookup(tc.pc)
		if fn != tc.fn || file != tc.file || line != tc.line {
			t.Errorf("%#x: %q %s:%d, want %q %s:%d", tc.pc, fn, file, line, tc.fn, tc.file, tc.line)
		}
	}
}
