package symbolizer

import (
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// inlineProgram has a hot loop in outer, which cannot be inlined, calling mid, which the
// compiler inlines, calling leaf, inlined into mid: at some of outer's instructions the
// chain is leaf in mid in outer. plain inlines nothing. The markers name the lines of the
// calls and of the leaf's body.
const inlineProgram = `package main

import (
	"bufio"
	"fmt"
	"os"
)

func leaf(x int) int {
	return x*x + 3 // LEAF
}

func mid(x int) int {
	return leaf(x+1) ^ 7 // MID
}

//go:noinline
func outer(n int) int {
	s := 0
	for i := 0; i < n; i++ {
		s += mid(i) // OUTER
	}
	return s
}

//go:noinline
func plain(n int) int {
	s := 0
	for i := 0; i < n; i++ {
		s = s*31 + i
	}
	return s
}

func main() {
	fmt.Println("ready", outer(10), plain(10))
	bufio.NewReader(os.Stdin).ReadString('\n')
}
`

// markerLine returns the line of inlineProgram holding marker.
func markerLine(t testing.TB, marker string) int {
	t.Helper()
	for i, l := range strings.Split(inlineProgram, "\n") {
		if strings.HasSuffix(l, "// "+marker) {
			return i + 1
		}
	}
	t.Fatalf("no marker %s", marker)
	return 0
}

// goFuncRange finds fn's [entry, end) with debug/gosym (goSymTable).
func goFuncRange(t testing.TB, path, fn string) (uint64, uint64) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fun := goSymTable(t, f).LookupFunc(fn)
	if fun == nil {
		t.Fatalf("%s: no %s", path, fn)
	}
	return fun.Entry, fun.End
}

func openObjectFile(t testing.TB, path string) *Object {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	obj, err := OpenObject(f)
	if err != nil {
		t.Fatal(err)
	}
	return obj
}

// TestGoInlinedCalls looks up every byte of outer in binaries built static, stripped and
// position-independent: each must be outer, alone or with the chain of the calls inlined
// there, which must be mid or leaf-in-mid at their source lines, with outer at the line of
// its call; the whole chain must appear, and plain must have none.
func TestGoInlinedCalls(t *testing.T) {
	leafLine, midLine, outerLine := markerLine(t, "LEAF"), markerLine(t, "MID"), markerLine(t, "OUTER")
	for name, flags := range map[string][]string{
		"static":         nil,
		"stripped":       {"-ldflags=-s -w"},
		"pie":            {"-buildmode=pie"},
		"pie stripped":   {"-buildmode=pie", "-ldflags=-s -w"},
		"no inlining -l": {"-gcflags=-l"},
	} {
		t.Run(name, func(t *testing.T) {
			path := buildGo(t, t.TempDir(), inlineProgram, flags...)
			obj := openObjectFile(t, path)
			noInlining := strings.Contains(name, "-l")
			entry, end := goFuncRange(t, path, "main.outer")
			chains := 0
			for pc := entry; pc < end; pc++ {
				fn, file, line, inl := obj.LookupFrame(pc)
				if fn == "main.outer" && file == "" && line == 0 && inl == nil {
					continue // padding after the code, which has no position
				}
				if fn != "main.outer" || !strings.HasSuffix(file, "/main.go") {
					t.Fatalf("%#x: %q in %s", pc, fn, file)
				}
				if inl == nil {
					continue
				}
				if noInlining {
					t.Fatalf("%#x: inlined %v in a build without inlining", pc, inl)
				}
				if line != outerLine {
					t.Errorf("%#x: outer at line %d with %v inlined, want its call at %d", pc, line, inl, outerLine)
				}
				want := []InlinedCall{{"main.mid", file, midLine}}
				if len(inl) == 2 {
					want = []InlinedCall{{"main.leaf", file, leafLine}, {"main.mid", file, midLine}}
					chains++
				}
				if !slices.Equal(inl, want) {
					t.Errorf("%#x: inlined %v, want %v", pc, inl, want)
				}
			}
			if !noInlining && chains == 0 {
				t.Errorf("no address of outer [%#x, %#x) has leaf inlined in mid", entry, end)
			}
			pEntry, pEnd := goFuncRange(t, path, "main.plain")
			for pc := pEntry; pc < pEnd; pc++ {
				if fn, _, _, inl := obj.LookupFrame(pc); fn != "main.plain" || inl != nil {
					t.Fatalf("%#x: %q with %v inlined, want main.plain alone", pc, fn, inl)
				}
			}
			// Lookup keeps the innermost position, as before.
			for pc := entry; pc < end; pc++ {
				if _, _, _, inl := obj.LookupFrame(pc); len(inl) == 2 {
					if fn, _, line := obj.Lookup(pc); fn != "main.outer" || line != leafLine {
						t.Errorf("Lookup(%#x): %q line %d, want main.outer at %d", pc, fn, line, leafLine)
					}
					break
				}
			}
		})
	}
}

// TestUserInlinedFrames symbolizes addresses of a running position-independent program
// through the Symbolizer, as leaf and as return address: both get the inlined calls.
func TestUserInlinedFrames(t *testing.T) {
	mustBeRoot(t)
	path := buildGo(t, t.TempDir(), inlineProgram, "-buildmode=pie")
	obj := openObjectFile(t, path)
	entry, end := goFuncRange(t, path, "main.outer")
	var pc uint64
	var want []InlinedCall
	for a := entry; a < end && pc == 0; a++ {
		if _, _, _, inl := obj.LookupFrame(a); len(inl) == 2 {
			pc, want = a, inl
		}
	}
	if pc == 0 {
		t.Fatal("no address with leaf inlined in mid")
	}
	p, ready := startProgram(t, path)
	if !strings.HasPrefix(ready, "ready") {
		t.Fatalf("program said %q", ready)
	}
	addr := runtimeAddress(t, p.pid, path, pc)
	plainAddr := runtimeAddress(t, p.pid, path, mustFuncEntry(t, path, "main.plain"))
	s := New(Options{})
	// addr as the leaf; addr+1 as the return address of a call from plain.
	frames := s.User(p.pid, []uint64{plainAddr, addr + 1})
	if len(frames) != 2 || frames[0].Function != "main.plain" || frames[0].Inlined != nil {
		t.Fatalf("leaf frame: %+v", frames)
	}
	if f := frames[1]; f.Function != "main.outer" || !slices.Equal(f.Inlined, want) {
		t.Errorf("return address frame: %q %v, want main.outer %v", f.Function, f.Inlined, want)
	}
	if frames := s.User(p.pid, []uint64{addr}); frames[0].Function != "main.outer" || !slices.Equal(frames[0].Inlined, want) {
		t.Errorf("leaf frame: %q %v, want main.outer %v", frames[0].Function, frames[0].Inlined, want)
	}
	if st := s.Stats(); st.FramesSymbolized != 3 || st.FramesUnsymbolized != 0 {
		t.Errorf("stats %+v, want 3 frames named", st)
	}
	p.exit(t)
}

func mustFuncEntry(t testing.TB, path, fn string) uint64 {
	t.Helper()
	entry, _ := goFuncRange(t, path, fn)
	return entry + 1
}

// TestGoFuncLocator checks that gofunc is found only when needed, and that the three ways
// of finding it agree: the symbol, the moduledata in the file, the moduledata's
// relocations (which position-independent binaries of some Go versions depend on).
func TestGoFuncLocator(t *testing.T) {
	dir := t.TempDir()
	path := buildGo(t, dir, inlineProgram, "-buildmode=pie")
	obj := openObjectFile(t, path)
	l := obj.goTab.inl.locator
	if l == nil || l.symtab == nil {
		t.Fatal("no locator for a Go 1.20+ table")
	}
	sym, ok := l.symtab.value("go:func.*")
	if !ok {
		t.Fatal("no go:func.* symbol")
	}
	if v, ok := l.moduledataGofunc(obj.goTab.f); !ok || v != sym {
		t.Errorf("moduledata: gofunc %#x, %v; symbol %#x", v, ok, sym)
	}
	if v, ok := l.relocatedModuledataGofunc(obj.goTab.f); !ok || v != sym {
		t.Errorf("relocations: gofunc %#x, %v; symbol %#x", v, ok, sym)
	}
	entry, end := goFuncRange(t, path, "main.outer")
	obj.Lookup(entry + (end-entry)/2)
	if obj.goTab.inl.locator == nil {
		t.Error("Lookup, which does not expand inlined calls, looked for gofunc")
	}
	pEntry, _ := goFuncRange(t, path, "main.plain")
	obj.LookupFrame(pEntry)
	if obj.goTab.inl.locator == nil {
		t.Error("a lookup in a function without inlining looked for gofunc")
	}
	for pc := entry; pc < end; pc++ {
		obj.LookupFrame(pc)
	}
	if d := obj.goTab.inl.data; obj.goTab.inl.locator != nil || !d.ok {
		t.Errorf("gofunc not found after expanding inlined calls: %+v", d)
	}
	// A moduledata that disagrees with the table is not used.
	l.text++
	if v, ok := l.moduledataGofunc(obj.goTab.f); ok {
		t.Errorf("accepted a moduledata with the wrong text: gofunc %#x", v)
	}
	if v, ok := l.relocatedModuledataGofunc(obj.goTab.f); ok {
		t.Errorf("accepted relocations with the wrong text: gofunc %#x", v)
	}
}

// Go 1.20 to 1.25 have no epclntab after gofunc (1.26 added it): nothing past gofunc
// may be relied on to find the moduledata. The word after it is overwritten in a copy
// of a binary; gofunc is still found, and still the go:func.* symbol's value.
func TestGoFuncLocatorIgnoresLaterFields(t *testing.T) {
	dir := t.TempDir()
	path := buildGo(t, dir, inlineProgram)
	ef, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	syms, err := ef.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	var md elf.Symbol
	for _, s := range syms {
		if s.Name == "runtime.firstmoduledata" {
			md = s
		}
	}
	if md.Value == 0 || int(md.Section) >= len(ef.Sections) {
		t.Fatal("no runtime.firstmoduledata symbol")
	}
	sec := ef.Sections[md.Section]
	off := sec.Offset + md.Value - sec.Addr + (mdGofunc+1)*8
	ef.Close()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	binary.LittleEndian.PutUint64(data[off:], 0xdeadbeefdeadbeef)
	patched := filepath.Join(dir, "patched")
	if err := os.WriteFile(patched, data, 0o755); err != nil {
		t.Fatal(err)
	}
	obj := openObjectFile(t, patched)
	l := obj.goTab.inl.locator
	if l == nil || l.symtab == nil {
		t.Fatal("no locator for a Go 1.20+ table")
	}
	sym, _ := l.symtab.value("go:func.*")
	if v, ok := l.moduledataGofunc(obj.goTab.f); !ok || v != sym {
		t.Errorf("moduledata with another word after gofunc: gofunc %#x, %v; symbol %#x", v, ok, sym)
	}
}
