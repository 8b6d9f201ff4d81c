package symbolizer

import (
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// startC builds cProgram (optionally stripped), starts it and announces it to a new
// Symbolizer.
func startC(t *testing.T, strip bool, args ...string) (*Symbolizer, *testProgram, string) {
	t.Helper()
	mustBeRoot(t)
	dir := t.TempDir()
	bin := buildC(t, dir, "prog", cProgram, "-ldl")
	if strip {
		requireTool(t, "strip")
		stripped := bin + ".stripped"
		run(t, dir, "strip", "--strip-all", "-o", stripped, bin)
		bin = stripped
	}
	prog, _ := startProgram(t, bin, args...)
	s := New(Options{})
	if err := s.ProcessStarted(prog.pid); err != nil {
		t.Fatal(err)
	}
	return s, prog, bin
}

func TestUserCProgram(t *testing.T) {
	s, prog, bin := startC(t, false)
	hidden, hiddenSize := elfSymbol(t, bin, "hidden_work", false)
	exported, _ := elfSymbol(t, bin, "exported_work", false)
	hiddenRT := runtimeAddress(t, prog.pid, bin, hidden)
	exportedRT := runtimeAddress(t, prog.pid, bin, exported)
	hiddenEnd := hiddenRT + hiddenSize // a return address right after hidden_work's last byte

	frames := s.User(prog.pid, []uint64{hiddenRT + 1, exportedRT + 2, hiddenEnd})
	if len(frames) != 3 {
		t.Fatalf("got %d frames, want 3", len(frames))
	}
	want := []struct {
		fn      string
		addr    uint64
		objAddr uint64
	}{
		{"hidden_work", hiddenRT + 1, hidden + 1},
		{"exported_work", exportedRT + 2, exported + 2},
		{"hidden_work", hiddenEnd, hidden + hiddenSize}, // looked up at addr-1
	}
	buildID := gnuBuildID(t, bin)
	for i, w := range want {
		f := frames[i]
		if f.Function != w.fn || f.Address != w.addr || f.ObjAddress != w.objAddr {
			t.Errorf("frame %d = %q addr %#x obj %#x, want %q %#x %#x", i, f.Function, f.Address, f.ObjAddress, w.fn, w.addr, w.objAddr)
		}
		if f.Mapping == nil || f.Mapping.Path != bin || f.Mapping.BuildID != buildID || f.Kernel {
			t.Errorf("frame %d mapping %+v, want path %s build ID %s", i, f.Mapping, bin, buildID)
		}
	}
	if !s.ExecutableAddress(prog.pid, hiddenRT) || s.ExecutableAddress(prog.pid, 8) {
		t.Error("ExecutableAddress disagrees with the mappings")
	}
	st := s.Stats()
	if st.FramesSymbolized != 3 || st.FramesUnsymbolized != 0 || st.MapsReads != 1 || st.ProcessesCached != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestUserStrippedCProgram(t *testing.T) {
	s, prog, bin := startC(t, true)
	unstripped := strings.TrimSuffix(bin, ".stripped")
	hidden, _ := elfSymbol(t, unstripped, "hidden_work", false)
	exported, _ := elfSymbol(t, bin, "exported_work", true) // survives in .dynsym
	hiddenRT := runtimeAddress(t, prog.pid, bin, hidden)
	exportedRT := runtimeAddress(t, prog.pid, bin, exported)

	frames := s.User(prog.pid, []uint64{exportedRT + 1, hiddenRT + 1})
	if f := frames[0]; f.Function != "exported_work" {
		t.Errorf("exported frame: got %q, want exported_work", f.Function)
	}
	f := frames[1]
	if f.Function != "" {
		t.Errorf("static function in a stripped binary named %q, want unnamed", f.Function)
	}
	if f.Mapping == nil || f.Mapping.Path != bin || f.Mapping.BuildID != gnuBuildID(t, bin) || f.ObjAddress != hidden+1 {
		t.Errorf("unnamed frame lost its mapping: %+v obj %#x want %#x", f.Mapping, f.ObjAddress, hidden+1)
	}
	if st := s.Stats(); st.FramesSymbolized != 1 || st.FramesUnsymbolized != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestUserAfterExit(t *testing.T) {
	s, prog, bin := startC(t, false)
	exported, _ := elfSymbol(t, bin, "exported_work", false)
	addr := runtimeAddress(t, prog.pid, bin, exported)
	prog.exit(t)
	if err := os.Remove(bin); err != nil { // not even the file is left
		t.Fatal(err)
	}
	frames := s.User(prog.pid, []uint64{addr + 1, 0x10})
	if frames[0].Function != "exported_work" {
		t.Errorf("after exit: got %q, want exported_work", frames[0].Function)
	}
	if frames[1].Function != "" || frames[1].Mapping != nil || frames[1].ObjAddress != 0x10 {
		t.Errorf("unmapped frame: %+v", frames[1])
	}
}

func TestSharedLibrary(t *testing.T) {
	s, prog, _ := startC(t, false)
	var libc *Mapping
	for _, m := range readMaps(t, prog.pid) {
		if m.Exec && strings.Contains(filepath.Base(m.Path), "libc.so") {
			libc = &m
			break
		}
	}
	if libc == nil {
		t.Skip("libc not mapped (static build?)")
	}
	getpid, _ := elfSymbol(t, libc.Path, "getpid", true)
	addr := runtimeAddress(t, prog.pid, libc.Path, getpid)
	frames := s.User(prog.pid, []uint64{addr})
	t.Logf("libc getpid: %q (%s)", frames[0].Function, libc.Path)
	if aliases := aliasesAt(t, libc.Path, getpid); !aliases[frames[0].Function] {
		t.Errorf("libc getpid: got %q, want one of %v", frames[0].Function, aliases)
	}
	if frames[0].ObjAddress != getpid || frames[0].Mapping.Path != libc.Path || frames[0].Mapping.BuildID == "" {
		t.Errorf("libc frame %+v mapping %+v", frames[0], frames[0].Mapping)
	}
}

// aliasesAt returns the names of all dynamic function symbols at value.
func aliasesAt(t *testing.T, path string, value uint64) map[string]bool {
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.DynamicSymbols()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, s := range syms {
		if s.Value == value && elf.ST_TYPE(s.Info) == elf.STT_FUNC {
			names[s.Name] = true
		}
	}
	return names
}

// TestDlopenReread checks that an address in a library loaded after ProcessStarted is
// found by re-reading the maps.
func TestDlopenReread(t *testing.T) {
	mustBeRoot(t)
	dir := t.TempDir()
	lib := filepath.Join(dir, "libplugin.so")
	src := filepath.Join(dir, "plugin.c")
	if err := os.WriteFile(src, []byte("__attribute__((noinline)) int plugin_work(int x) { return x * 3 + 1; }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	requireTool(t, "gcc")
	run(t, dir, "gcc", "-O2", "-shared", "-fPIC", "-o", lib, src)
	s, prog, _ := startC(t, false, lib)
	s.mapsReread = 0
	if _, err := prog.stdin.Write([]byte("d")); err != nil {
		t.Fatal(err)
	}
	var addr uint64
	if _, err := fmt.Sscanf(prog.readLine(t), "loaded 0x%x", &addr); err != nil || addr == 0 {
		t.Fatalf("dlopen failed: %v", err)
	}
	frames := s.User(prog.pid, []uint64{addr + 1})
	if frames[0].Function != "plugin_work" || frames[0].Mapping == nil || frames[0].Mapping.Path != lib {
		t.Errorf("dlopen'ed function: got %q mapping %+v", frames[0].Function, frames[0].Mapping)
	}
	if got := s.Stats().MapsReads; got != 2 {
		t.Errorf("MapsReads = %d, want 2", got)
	}
}

func TestVDSO(t *testing.T) {
	s, prog, _ := startC(t, false)
	var vdso *Mapping
	for _, m := range readMaps(t, prog.pid) {
		if m.Path == "[vdso]" {
			vdso = &m
		}
	}
	if vdso == nil {
		t.Skip("no vDSO")
	}
	image, err := readProcMem(filepath.Join("/proc", itoa(prog.pid), "mem"), vdso.Start, vdso.Limit-vdso.Start)
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.NewFile(bytes.NewReader(image))
	if err != nil {
		t.Fatal(err)
	}
	syms, err := f.DynamicSymbols()
	if err != nil {
		t.Fatal(err)
	}
	for _, sym := range syms {
		if elf.ST_TYPE(sym.Info) != elf.STT_FUNC || sym.Value == 0 || sym.Size < 2 {
			continue
		}
		aliases := map[string]bool{}
		for _, o := range syms {
			if o.Value == sym.Value {
				aliases[o.Name] = true
			}
		}
		frames := s.User(prog.pid, []uint64{vdso.Start + sym.Value + 1})
		if !aliases[frames[0].Function] || frames[0].Mapping.BuildID == "" {
			t.Errorf("vDSO %s: got %q (build ID %q)", sym.Name, frames[0].Function, frames[0].Mapping.BuildID)
		}
		// The path for processes of another ABI reads the image from their memory.
		_, obj, err := s.vdsoObject(prog.pid, vdso, false)
		if err != nil || obj.BuildID() != frames[0].Mapping.BuildID {
			t.Errorf("vDSO read from process memory: %v, build ID %q", err, obj.BuildID())
		}
		return
	}
	t.Skip("no sized vDSO function")
}

const goProgram = `package main

import (
	"fmt"
	"os"
)

//go:noinline
func spin(n int) int {
	s := 0
	for i := 0; i < n; i++ {
		s += i ^ (s >> 1)
	}
	return s
}

func main() {
	fmt.Println("ready", spin(1000))
	buf := make([]byte, 1)
	os.Stdin.Read(buf)
}
`

func TestGoBinaryStripped(t *testing.T) {
	mustBeRoot(t)
	bin := buildGo(t, t.TempDir(), goProgram, "-ldflags=-s -w")
	entry := goFuncEntry(t, bin, "main.spin")
	prog, _ := startProgram(t, bin)
	s := New(Options{})
	if err := s.ProcessStarted(prog.pid); err != nil {
		t.Fatal(err)
	}
	addr := runtimeAddress(t, prog.pid, bin, entry) + 4
	frames := s.User(prog.pid, []uint64{addr})
	f := frames[0]
	t.Logf("Go frame: %s %s:%d obj %#x build ID %s", f.Function, f.File, f.Line, f.ObjAddress, f.Mapping.BuildID)
	if f.Function != "main.spin" || !strings.HasSuffix(f.File, "main.go") || f.Line <= 0 {
		t.Errorf("Go frame: %q %s:%d, want main.spin in main.go", f.Function, f.File, f.Line)
	}
	if f.Mapping == nil || f.Mapping.BuildID == "" {
		t.Errorf("Go frame has no build ID: %+v", f.Mapping)
	}
}

const cgoProgram = `package main

/*
__attribute__((noinline)) int c_spin(int n) {
	int s = 0;
	for (int i = 0; i < n; i++) s += i ^ (s >> 1);
	return s;
}
*/
import "C"

import (
	"fmt"
	"os"
)

func main() {
	fmt.Println("ready", C.c_spin(100))
	buf := make([]byte, 1)
	os.Stdin.Read(buf)
}
`

// TestCgoBinary checks an externally linked Go binary with C code, whose Go code does not
// start at .text: with .symtab, Go functions come from .gopclntab and C functions from
// .symtab; stripped, Go functions must still be right (runtime.text found in the
// moduledata), and C ones unnamed.
func TestCgoBinary(t *testing.T) {
	mustBeRoot(t)
	requireTool(t, "gcc")
	requireTool(t, "strip")
	t.Setenv("CGO_ENABLED", "1")
	dir := t.TempDir()
	bin := buildGo(t, dir, cgoProgram)
	stripped := bin + ".stripped"
	run(t, dir, "strip", "--strip-all", "-o", stripped, bin)
	cSpin, _ := elfSymbol(t, bin, "c_spin", false)
	mainMain, _ := elfSymbol(t, bin, "main.main", false)
	for _, tc := range []struct {
		path, cName string
	}{{bin, "c_spin"}, {stripped, ""}} {
		prog, _ := startProgram(t, tc.path)
		s := New(Options{})
		if err := s.ProcessStarted(prog.pid); err != nil {
			t.Fatal(err)
		}
		frames := s.User(prog.pid, []uint64{
			runtimeAddress(t, prog.pid, tc.path, cSpin) + 1,
			runtimeAddress(t, prog.pid, tc.path, mainMain) + 8,
		})
		if f := frames[0]; f.Function != tc.cName || f.File != "" {
			t.Errorf("%s: C frame: %q %s, want %q", tc.path, f.Function, f.File, tc.cName)
		}
		if f := frames[1]; f.Function != "main.main" || !strings.HasSuffix(f.File, "main.go") || f.Line <= 0 {
			t.Errorf("%s: Go frame: %q %s:%d", tc.path, f.Function, f.File, f.Line)
		}
	}
}

// goFuncEntry finds a function's entry with debug/gosym, since -s -w left no .symtab.
func goFuncEntry(t *testing.T, path, name string) uint64 {
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	stripped := f.Section(".symtab") == nil
	f.Close()
	if !stripped {
		t.Fatalf("%s still has .symtab", path)
	}
	entry, _ := goFuncRange(t, path, name)
	return entry
}

// TestConcurrentUse runs ProcessStarted, User, ExecutableAddress and Stats at once; run
// with -race.
func TestConcurrentUse(t *testing.T) {
	s, prog, bin := startC(t, false)
	exported, _ := elfSymbol(t, bin, "exported_work", false)
	addr := runtimeAddress(t, prog.pid, bin, exported) + 1
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				if g%2 == 0 {
					_ = s.ProcessStarted(prog.pid)
				}
				if f := s.User(prog.pid, []uint64{addr, addr + 1}); f[0].Function != "exported_work" {
					t.Errorf("concurrent lookup: %q", f[0].Function)
					return
				}
				s.ExecutableAddress(prog.pid, addr)
				s.Stats()
			}
		}()
	}
	wg.Wait()
}

// TestObjectSharedAcrossProcesses checks that a second process mapping the same files is
// served from the cache without parsing again.
func TestObjectSharedAcrossProcesses(t *testing.T) {
	s, _, bin := startC(t, false)
	misses := s.Stats().ObjectCacheMisses
	other, _ := startProgram(t, bin)
	if err := s.ProcessStarted(other.pid); err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.ObjectCacheMisses != misses || st.ObjectCacheHits == 0 {
		t.Errorf("second process parsed objects again: %+v (misses before %d)", st, misses)
	}
}

func TestProcessStartedMissingPID(t *testing.T) {
	s := New(Options{ProcRoot: t.TempDir()})
	if err := s.ProcessStarted(12345); err == nil {
		t.Error("want error for a pid without maps")
	}
	frames := s.User(12345, []uint64{0x1000, 0x2000})
	if len(frames) != 2 || frames[0].Function != "" || frames[1].Address != 0x2000 || frames[1].ObjAddress != 0x2000 {
		t.Errorf("frames %+v", frames)
	}
	if st := s.Stats(); st.Errors == 0 || st.FramesUnsymbolized != 2 {
		t.Errorf("stats %+v", st)
	}
}

// TestJITPerfMap uses a fake /proc whose process has an anonymous executable mapping
// described by a perf map.
func TestJITPerfMap(t *testing.T) {
	root := t.TempDir()
	pidDir := filepath.Join(root, "4242")
	containerRoot := filepath.Join(root, "container")
	for _, d := range []string{pidDir, filepath.Join(containerRoot, "tmp")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(path, content string) {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(pidDir, "maps"), "7f0000000000-7f0000100000 rwxp 00000000 00:00 0 \n")
	write(filepath.Join(pidDir, "status"), "Name:\tnode\nNSpid:\t4242\t7\n")
	if err := os.Symlink(containerRoot, filepath.Join(pidDir, "root")); err != nil {
		t.Fatal(err)
	}
	write(filepath.Join(containerRoot, "tmp", "perf-7.map"), strings.Join([]string{
		"7f0000001000 100 LazyCompile:~foo /app/x.js:1",
		"0x7f0000002000 0x80 Builtin:bar",
		"not a line",
		"7f0000001000 40 LazyCompile:*foo /app/x.js:1", // recompiled: replaces the first
		"zz 10 bad",
		"",
	}, "\n"))
	s := New(Options{ProcRoot: root})
	if err := s.ProcessStarted(4242); err != nil {
		t.Fatal(err)
	}
	frames := s.User(4242, []uint64{0x7f0000001010, 0x7f0000002080, 0x7f0000001050, 0x7f0000003000})
	want := []string{"LazyCompile:*foo /app/x.js:1", "Builtin:bar", "", ""}
	for i, w := range want {
		if frames[i].Function != w {
			t.Errorf("frame %d: got %q, want %q", i, frames[i].Function, w)
		}
		if frames[i].Mapping == nil || frames[i].ObjAddress != frames[i].Address {
			t.Errorf("frame %d: %+v", i, frames[i])
		}
	}
	if got := s.Stats().PerfMapBadLines; got != 2 {
		t.Errorf("PerfMapBadLines = %d, want 2", got)
	}
}

func TestUserNonPIE(t *testing.T) {
	mustBeRoot(t)
	dir := t.TempDir()
	bin := buildC(t, dir, "prog", cProgram, "-ldl", "-fno-PIE", "-no-pie")
	prog, _ := startProgram(t, bin)
	s := New(Options{})
	if err := s.ProcessStarted(prog.pid); err != nil {
		t.Fatal(err)
	}
	hidden, _ := elfSymbol(t, bin, "hidden_work", false)
	frames := s.User(prog.pid, []uint64{hidden + 3})
	if f := frames[0]; f.Function != "hidden_work" || f.ObjAddress != hidden+3 {
		t.Errorf("non-PIE frame %q obj %#x, want hidden_work %#x", f.Function, f.ObjAddress, hidden+3)
	}
}

// A process forked without an exec takes its parent's snapshot: its
// addresses are named without a read of its /proc, and the snapshot holds
// references of its own (the parent's release leaves it whole). Without a
// cached parent, its own mappings are read.
func TestProcessForkedSharesParentSnapshot(t *testing.T) {
	s, prog, bin := startC(t, false)
	hidden, _ := elfSymbol(t, bin, "hidden_work", false)
	addr := runtimeAddress(t, prog.pid, bin, hidden) + 1
	const child = 0x7ffffff0 // no such process: only the parent's snapshot can name it
	if err := s.ProcessForked(child, prog.pid); err != nil {
		t.Fatal(err)
	}
	s.ReleaseProcess(prog.pid)
	if f := s.User(child, []uint64{addr}); f[0].Function != "hidden_work" || f[0].Mapping == nil || f[0].Mapping.Path != bin {
		t.Errorf("forked process's frame %+v, want hidden_work in %s", f[0], bin)
	}
	st := s.Stats()
	if st.MapsReads != 1 || st.ForkSnapshots != 1 || st.OpenFiles == 0 {
		t.Errorf("after a fork: %d maps reads (want 1, the parent's), %d fork snapshots (want 1), %d files open (want the parent's objects)",
			st.MapsReads, st.ForkSnapshots, st.OpenFiles)
	}
	// A parent never snapshotted: its mappings are read for the child (the
	// child's own may be its next image's by now), and the parent gets no
	// snapshot of its own to release.
	other, _ := startProgram(t, bin)
	otherHidden := runtimeAddress(t, other.pid, bin, hidden) + 1
	const child2 = 0x7ffffff2
	if err := s.ProcessForked(child2, other.pid); err != nil {
		t.Fatal(err)
	}
	if f := s.User(child2, []uint64{otherHidden}); f[0].Function != "hidden_work" {
		t.Errorf("child of a parent never snapshotted: frame %+v, want hidden_work", f[0])
	}
	if st := s.Stats(); st.MapsReads != 2 || st.ForkSnapshots != 1 || st.ProcessesCached != 2 {
		t.Errorf("fork of a parent never snapshotted: %d maps reads (want 2), %d fork snapshots (want 1), %d processes cached (want 2: the children)",
			st.MapsReads, st.ForkSnapshots, st.ProcessesCached)
	}
	// A parent gone: the process's own mappings are read.
	if err := s.ProcessForked(other.pid, 0x7ffffff1); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.MapsReads != 4 || st.ForkSnapshots != 1 {
		t.Errorf("fork of a parent gone: %d maps reads (want 4: the parent's tried, then its own), %d fork snapshots (want 1)", st.MapsReads, st.ForkSnapshots)
	}
}

// A process whose image vanished before its mappings were read (the
// profiler read its exit or exec with its notice) is not read for its
// samples, which would fail or read the next image's, until its release.
func TestProcessVanishedNotRead(t *testing.T) {
	s, prog, bin := startC(t, false)
	exported, _ := elfSymbol(t, bin, "exported_work", false)
	addr := runtimeAddress(t, prog.pid, bin, exported)
	s.ReleaseProcess(prog.pid) // no snapshot
	s.ProcessVanished(prog.pid)
	before := s.Stats().MapsReads
	if f := s.User(prog.pid, []uint64{addr + 1})[0]; f.Function != "" || f.Mapping != nil {
		t.Errorf("a vanished image's frame named from a read of its pid's mappings: %+v", f)
	}
	if after := s.Stats().MapsReads; after != before {
		t.Errorf("maps read %d times for a vanished image", after-before)
	}
	s.ReleaseProcess(prog.pid) // a later image of the pid is read again
	if f := s.User(prog.pid, []uint64{addr + 1})[0]; f.Function != "exported_work" {
		t.Errorf("after the release: got %q, want exported_work", f.Function)
	}
}
