package symbolizer

import (
	"debug/elf"
	"debug/gosym"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// TestGoTableMatchesGosym compares the .gopclntab reader with debug/gosym on every
// function of the test binary and of the Go toolchain's binaries: at the entry, one byte
// in, at a random offset and at the last byte. The table is read from memory and from the
// file through a block cache much smaller than it.
func TestGoTableMatchesGosym(t *testing.T) {
	paths := []string{"/proc/self/exe"}
	if !testing.Short() {
		paths = append(paths, goToolBinaries()...)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for _, path := range paths {
		f, err := elf.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		sec := f.Section(".gopclntab")
		data, err := sec.Data()
		if err != nil {
			t.Fatal(err)
		}
		text := f.Section(".text").Addr
		f.Close()
		file, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer file.Close()
		fi, err := file.Stat()
		if err != nil {
			t.Fatal(err)
		}
		fromFile, err := goTableAt(newObjFile(file, uint64(fi.Size()), newBlockCache(64<<10)), sec.Offset, sec.Size, text)
		if err != nil {
			t.Fatal(err)
		}
		if m := pclntabMagic(data); m != 0xfffffff0 && m != 0xfffffff1 {
			t.Fatalf("%s: magic %#x", path, m)
		}
		ref, err := gosym.NewTable(nil, gosym.NewLineTable(data, text))
		if err != nil {
			t.Fatal(err)
		}
		g, err := goTableFromData(data, text)
		if err != nil {
			t.Fatal(err)
		}
		if g.legacy != nil || g.lo != ref.Funcs[0].Entry || g.hi != ref.Funcs[len(ref.Funcs)-1].End {
			t.Fatalf("%s: range [%#x, %#x), want [%#x, %#x)", path, g.lo, g.hi, ref.Funcs[0].Entry, ref.Funcs[len(ref.Funcs)-1].End)
		}
		checked, mismatches := 0, 0
		for _, fn := range ref.Funcs {
			if fn.End <= fn.Entry {
				continue
			}
			for _, pc := range []uint64{fn.Entry, fn.Entry + 1, fn.Entry + rng.Uint64N(fn.End-fn.Entry), fn.End - 1} {
				if pc >= fn.End {
					continue
				}
				checked++
				wantFile, wantLine, wantFn := ref.PCToLine(pc)
				if wantLine < 0 {
					wantLine = 0
				}
				gotFn, gotFile, gotLine := g.lookup(pc)
				if fn2, file2, line2 := fromFile.lookup(pc); fn2 != gotFn || file2 != gotFile || line2 != gotLine {
					t.Errorf("%s: %#x: %s %s:%d read from the file, %s %s:%d from memory", path, pc, fn2, file2, line2, gotFn, gotFile, gotLine)
				}
				if strings.HasPrefix(gotFn, "go:") && gotFile == "" && gotLine == 0 {
					// A marker such as go:textfipsstart has no pc-value tables, which
					// debug/gosym decodes anyway; the runtime, like this package, does not.
					gotFile, gotLine = wantFile, wantLine
				}
				if gotFn != Demangle(wantFn.Name) || gotFile != wantFile || gotLine != wantLine {
					if mismatches++; mismatches <= 10 {
						t.Errorf("%s: %#x: got %s %s:%d, want %s %s:%d", path, pc, gotFn, gotFile, gotLine, wantFn.Name, wantFile, wantLine)
					}
				}
			}
		}
		t.Logf("%s: %d functions, %d addresses compared", filepath.Base(path), len(ref.Funcs), checked)
	}
}

// lazyFixture is a fake /proc with processes 1000+i mapping copies of Go binaries.
type lazyFixture struct {
	root  string
	bins  []string
	addrs [][]uint64
}

func newLazyFixture(t *testing.T, n int) *lazyFixture {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Skip(err)
	}
	fx := &lazyFixture{root: t.TempDir()}
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(7, 8))
	for i := range n {
		bin := filepath.Join(dir, "copy"+itoa(uint32(i)))
		copyWithNewBuildID(t, exe, bin, byte(i+1))
		fx.bins = append(fx.bins, bin)
		fx.addrs = append(fx.addrs, fakeProcess(t, fx.root, 1000+i, bin, 16, rng))
	}
	return fx
}

func (fx *lazyFixture) entry(t *testing.T, s *Symbolizer, pid uint32) *objEntry {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	p, _ := s.procs.peek(pid)
	if p == nil || len(p.maps) == 0 || !p.maps[0].hasObj {
		t.Fatalf("pid %d: no object", pid)
	}
	e, _ := s.objects.peek(p.maps[0].obj)
	return e
}

// TestLazyObjects checks that ProcessStarted opens but does not parse, that the first
// lookup parses, and that an evicted object is closed and loaded again on demand.
func TestLazyObjects(t *testing.T) {
	fx := newLazyFixture(t, 2)
	s := New(Options{ProcRoot: fx.root, MaxObjects: 1})
	if err := s.ProcessStarted(1000); err != nil {
		t.Fatal(err)
	}
	e0 := fx.entry(t, s, 1000)
	if e0 == nil || e0.parsed.Load() || e0.file == nil || e0.buildID == "" {
		t.Fatalf("after ProcessStarted: entry %+v, want open and unparsed", e0)
	}
	withLines := 0
	for _, f := range s.User(1000, fx.addrs[0]) {
		if f.Function == "" || f.Mapping.BuildID != e0.buildID {
			t.Errorf("frame %+v", f)
		}
		if f.File != "" && f.Line > 0 {
			withLines++
		}
	}
	if withLines < len(fx.addrs[0])/2 {
		t.Errorf("only %d of %d frames have file and line", withLines, len(fx.addrs[0]))
	}
	if !e0.parsed.Load() || e0.obj == nil || e0.obj.goTab == nil || e0.obj.goTab.f.r != e0.file {
		t.Fatal("not parsed from the open file after a lookup")
	}
	if err := s.ProcessStarted(1001); err != nil { // evicts the first object
		t.Fatal(err)
	}
	e0.mu.Lock()
	freed := e0.freed && e0.file == nil
	e0.mu.Unlock()
	if !freed || e0.refs.Load() != 0 {
		t.Errorf("evicted entry not freed (refs %d)", e0.refs.Load())
	}
	for i := range 2 {
		for _, f := range s.User(uint32(1000+i), fx.addrs[i]) {
			if f.Function == "" {
				t.Errorf("process %d: %#x unnamed", i, f.Address)
			}
		}
	}
}

// TestObjectDeleted checks that an object is parsed from the file opened by
// ProcessStarted after the file was removed.
func TestObjectDeleted(t *testing.T) {
	fx := newLazyFixture(t, 1)
	s := New(Options{ProcRoot: fx.root})
	if err := s.ProcessStarted(1000); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(fx.bins[0]); err != nil {
		t.Fatal(err)
	}
	for _, f := range s.User(1000, fx.addrs[0]) {
		if f.Function == "" {
			t.Errorf("%#x unnamed after the file was removed", f.Address)
		}
	}
}

// TestObjectTruncated truncates open files, before and after their first lookup: that
// must cost names, not the process.
func TestObjectTruncated(t *testing.T) {
	fx := newLazyFixture(t, 2)
	s := New(Options{ProcRoot: fx.root})
	for i := range 2 {
		if err := s.ProcessStarted(uint32(1000 + i)); err != nil {
			t.Fatal(err)
		}
	}
	if f := s.User(1000, fx.addrs[0][:1]); f[0].Function == "" {
		t.Fatal("unnamed before truncation")
	}
	for _, bin := range fx.bins {
		if err := os.Truncate(bin, 4096); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 2 {
		for range 2 {
			frames := s.User(uint32(1000+i), fx.addrs[i])
			if len(frames) != len(fx.addrs[i]) || frames[0].Mapping == nil {
				t.Fatalf("process %d: frames %+v", i, frames)
			}
		}
	}
	if e := fx.entry(t, s, 1001); e.obj != nil {
		t.Error("parsed a file truncated to its first page")
	}
}

// TestConcurrentEviction looks up addresses while other goroutines announce processes
// that evict the objects in use; run with -race.
func TestConcurrentEviction(t *testing.T) {
	const procs = 4
	fx := newLazyFixture(t, procs)
	s := New(Options{ProcRoot: fx.root, MaxObjects: 2})
	for i := range procs {
		if err := s.ProcessStarted(uint32(1000 + i)); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for g := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range 200 {
				i := (g + n) % procs
				if g%3 == 0 {
					_ = s.ProcessStarted(uint32(1000 + i))
					continue
				}
				for _, f := range s.User(uint32(1000+i), fx.addrs[i]) {
					if f.Function == "" {
						t.Errorf("process %d: %#x unnamed", i, f.Address)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	runtime.GC()
}
