package symbolizer

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"testing"
)

// goTool is a binary of the Go toolchain: large Go binaries with inlined
// calls, present wherever the tests build.
func goTool(t testing.TB, name string) string {
	t.Helper()
	bin := filepath.Join(runtime.GOROOT(), "pkg", "tool", runtime.GOOS+"_"+runtime.GOARCH, name)
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("the Go toolchain's %s: %v", name, err)
	}
	return bin
}

// The frame cache changes no frame: stacks symbolized with a small cache
// (so that entries are replaced), twice, are those symbolized without one,
// inlined calls included; and the second pass is served from the cache.
func TestFrameCacheSameFrames(t *testing.T) {
	root := t.TempDir()
	addrs := fakeProcess(t, root, 1000, goTool(t, "compile"), 4000, rand.New(rand.NewPCG(3, 4)))
	var stacks [][]uint64
	for i := 0; i+16 <= len(addrs); i += 16 {
		stacks = append(stacks, addrs[i:i+16])
	}
	symbolize := func(s *Symbolizer) [][]Frame {
		var out [][]Frame
		for _, st := range stacks {
			out = append(out, s.User(1000, st))
		}
		return out
	}
	uncached := symbolize(New(Options{ProcRoot: root, FrameCacheSize: -1}))
	s := New(Options{ProcRoot: root, FrameCacheSize: 512})
	first := symbolize(s)
	afterFirst := s.Stats()
	second := symbolize(s)
	inlined := 0
	for i := range uncached {
		for j := range uncached[i] {
			if !reflect.DeepEqual(first[i][j], uncached[i][j]) || !reflect.DeepEqual(second[i][j], uncached[i][j]) {
				t.Fatalf("stack %d frame %d: cached %+v then %+v, uncached %+v", i, j, first[i][j], second[i][j], uncached[i][j])
			}
			if len(uncached[i][j].Inlined) > 0 {
				inlined++
			}
		}
	}
	if inlined == 0 {
		t.Error("no frame with inlined calls: the comparison did not cover them")
	}
	st := s.Stats()
	if got := st.FrameCacheHits + st.FrameCacheMisses; got != uint64(2*len(addrs)) {
		t.Errorf("%d frame cache lookups for %d frames", got, 2*len(addrs))
	}
	if hits := st.FrameCacheHits - afterFirst.FrameCacheHits; hits == 0 || hits == uint64(len(addrs)) {
		// 4000 addresses in 512 slots: some stay, most are replaced.
		t.Errorf("%d hits in the second pass over %d addresses with 512 slots", hits, len(addrs))
	}
	if n := len(s.frames.slots); n != 512 {
		t.Errorf("%d slots, want 512", n)
	}
}

// An entry serves only its object: the same address in another object is
// looked up in that object, even in the same set (a cache of one set puts
// every address there). Two objects of one file are two objects too,
// since either may be evicted and its entries must then never match.
func TestFrameCacheKeyedByObject(t *testing.T) {
	compile, link := openObjectFile(t, goTool(t, "compile")), openObjectFile(t, goTool(t, "link"))
	again := openObjectFile(t, goTool(t, "compile"))
	if compile.id == 0 || compile.id == link.id || compile.id == again.id {
		t.Fatalf("object ids %d, %d, %d: want distinct and non-zero", compile.id, link.id, again.id)
	}
	c := newFrameCache(1)
	addrs := fakeProcess(t, t.TempDir(), 1, goTool(t, "link"), 200, rand.New(rand.NewPCG(5, 6)))
	differ := 0
	for _, a := range addrs {
		c.lookupFrame(compile, a)
		fn, _, line, _ := c.lookupFrame(link, a)
		wantFn, _, wantLine, _ := link.LookupFrame(a)
		if fn != wantFn || line != wantLine {
			t.Fatalf("%#x in link: %s:%d from the cache, %s:%d in the object", a, fn, line, wantFn, wantLine)
		}
		if cfn, _, _, _ := compile.LookupFrame(a); cfn != wantFn {
			differ++
		}
	}
	if differ == 0 {
		t.Error("compile and link name every address alike: the test shows nothing")
	}
	if c.hitCount() != 0 {
		t.Errorf("%d hits in a one-set cache alternating between objects", c.hitCount())
	}
	x := addrs[0]
	c.lookupFrame(compile, x)
	c.lookupFrame(again, x)
	if c.hitCount() != 0 {
		t.Error("a second object of the same file was served the first one's entry")
	}
	c.lookupFrame(again, x)
	if c.hitCount() != 1 {
		t.Errorf("%d hits after the same (object, address) twice in a row, want 1", c.hitCount())
	}
}
