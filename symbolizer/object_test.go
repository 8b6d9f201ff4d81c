package symbolizer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func readTrue(t testing.TB) []byte {
	t.Helper()
	data, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Skip(err)
	}
	if len(data) < 64 || data[4] != 2 || data[5] != 1 {
		t.Skip("/bin/true is not a little-endian ELF64 file")
	}
	return data
}

func TestOpenObjectTrue(t *testing.T) {
	obj, err := OpenObject(bytes.NewReader(readTrue(t)))
	if err != nil {
		t.Fatal(err)
	}
	if obj.BuildID() == "" || obj.HasGoTable() {
		t.Errorf("build ID %q, Go table %v", obj.BuildID(), obj.HasGoTable())
	}
}

func TestOpenObjectLibc(t *testing.T) {
	paths, _ := filepath.Glob("/usr/lib/*/libc.so.6")
	if len(paths) == 0 {
		t.Skip("no libc.so.6")
	}
	obj := openObjectFile(t, paths[0])
	getpid, _ := elfSymbol(t, paths[0], "getpid", true)
	if fn, _, _ := obj.Lookup(getpid); fn != "getpid" || obj.NumSymbols() < 1000 {
		t.Errorf("getpid named %q; %d symbols", fn, obj.NumSymbols())
	}
}

// corrupt returns a copy of data with a little-endian value written at off.
func corrupt(data []byte, off int, size int, v uint64) []byte {
	c := bytes.Clone(data)
	switch size {
	case 2:
		binary.LittleEndian.PutUint16(c[off:], uint16(v))
	case 4:
		binary.LittleEndian.PutUint32(c[off:], uint32(v))
	case 8:
		binary.LittleEndian.PutUint64(c[off:], v)
	}
	return c
}

func TestOpenObjectMalformed(t *testing.T) {
	data := readTrue(t)
	phoff := int(binary.LittleEndian.Uint64(data[0x20:]))
	phentsize := int(binary.LittleEndian.Uint16(data[0x36:]))
	phnum := int(binary.LittleEndian.Uint16(data[0x38:]))
	// The first two PT_LOAD headers, to make them overlap.
	var loads []int
	for i := 0; i < phnum; i++ {
		if binary.LittleEndian.Uint32(data[phoff+i*phentsize:]) == 1 {
			loads = append(loads, phoff+i*phentsize)
		}
	}
	if len(loads) < 2 {
		t.Skip("fewer than two PT_LOAD segments")
	}
	firstVaddr := binary.LittleEndian.Uint64(data[loads[0]+16:])
	cases := map[string][]byte{
		"empty":                 nil,
		"header only":           data[:64],
		"half":                  data[:len(data)/2],
		"no section table end":  data[:len(data)-1],
		"shoff past end":        corrupt(data, 0x28, 8, uint64(len(data))+4096),
		"shoff into code":       corrupt(data, 0x28, 8, 0x40),
		"huge shnum":            corrupt(data, 0x3c, 2, 0xffff),
		"bad shstrndx":          corrupt(data, 0x3e, 2, 0xfff0),
		"overlapping PT_LOAD":   corrupt(data, loads[1]+16, 8, firstVaddr),
		"filesz over memsz":     corrupt(data, loads[0]+32, 8, 1<<40),
		"wrapping vaddr":        corrupt(data, loads[1]+16, 8, ^uint64(0)-10),
		"garbage":               bytes.Repeat([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0}, 200),
		"no program headers":    corrupt(data, 0x38, 2, 0),
		"phoff past end":        corrupt(data, 0x20, 8, uint64(len(data))),
		"bad phentsize":         corrupt(data, 0x36, 2, 3),
		"machine code as ELF":   append([]byte{0x7f, 'E', 'L', 'F'}, data[0x1000:0x1400]...),
		"section headers zeros": zeroTail(data, int(binary.LittleEndian.Uint64(data[0x28:]))),
	}
	for name, input := range cases {
		t.Run(name, func(t *testing.T) {
			obj, err := OpenObject(bytes.NewReader(input))
			if err == nil {
				t.Fatalf("accepted as an object with %d symbols", obj.NumSymbols())
			}
			if !errors.Is(err, ErrMalformedObject) {
				t.Errorf("error %v does not wrap ErrMalformedObject", err)
			}
		})
	}
}

func zeroTail(data []byte, from int) []byte {
	c := bytes.Clone(data)
	if from < 0 || from > len(c) {
		return c
	}
	clear(c[from:])
	return c
}

func FuzzOpenObject(f *testing.F) {
	data, err := os.ReadFile("/bin/true")
	if err == nil {
		f.Add(data)
		for _, n := range []int{16, 52, 64, 120, 512, 4096, len(data) / 2, len(data) - 64} {
			if n > 0 && n < len(data) {
				f.Add(data[:n])
			}
		}
	}
	f.Add([]byte("\x7fELF\x02\x01\x01\x00"))
	if lib := tinyLibrary(f); lib != nil {
		f.Add(lib) // small, with .symtab and .dynsym functions to mutate
	}
	f.Fuzz(func(t *testing.T, input []byte) {
		obj, err := OpenObject(bytes.NewReader(input))
		if err != nil {
			if !errors.Is(err, ErrMalformedObject) {
				t.Fatalf("error %v does not wrap ErrMalformedObject", err)
			}
			return
		}
		for _, addr := range []uint64{0, 0x1000, 0x400000, ^uint64(0)} {
			obj.Lookup(addr)
		}
		m := Mapping{Start: 0x1000, Limit: 0x100000, Offset: 0}
		obj.ObjAddress(&m, 0x2000)
		// The same input read the way the files of cached objects are, through a
		// (tiny) block cache; lookup, unlike Lookup, does not recover.
		cached, err := parseObject(newObjFile(bytes.NewReader(input), uint64(len(input)), newBlockCache(2*blockSize)), "")
		if err != nil {
			t.Fatalf("parsed from memory but not through the cache: %v", err)
		}
		for _, addr := range []uint64{0, 0x1000, 0x400000, ^uint64(0)} {
			want, _, _ := obj.Lookup(addr)
			if got, _, _, _ := cached.lookup(addr, true); got != want {
				t.Fatalf("%#x: named %q through the cache, %q from memory", addr, got, want)
			}
		}
	})
}

// tinyLibrary builds a small shared library without libc, or returns nil without gcc.
func tinyLibrary(f *testing.F) []byte {
	if _, err := exec.LookPath("gcc"); err != nil {
		return nil
	}
	dir := f.TempDir()
	src := filepath.Join(dir, "tiny.c")
	out := filepath.Join(dir, "tiny.so")
	code := "int alpha(int x) { return x + 1; }\nstatic int beta(int x) { return x * 2; }\nint gamma_(int x) { return beta(x) + alpha(x); }\n"
	if err := os.WriteFile(src, []byte(code), 0o644); err != nil {
		f.Fatal(err)
	}
	cmd := exec.Command("gcc", "-O1", "-shared", "-fPIC", "-nostdlib", "-Wl,--build-id", "-o", out, src)
	if msg, err := cmd.CombinedOutput(); err != nil {
		f.Fatalf("gcc: %v\n%s", err, msg)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		f.Fatal(err)
	}
	return data
}

func TestLRU(t *testing.T) {
	l := newLRU[int, string](2)
	l.put(1, "a")
	l.put(2, "b")
	if v, ok := l.get(1); !ok || v != "a" {
		t.Fatal("get 1")
	}
	l.put(3, "c") // evicts 2, the least recently used
	if _, ok := l.get(2); ok {
		t.Error("2 not evicted")
	}
	if _, ok := l.peek(1); !ok {
		t.Error("1 evicted")
	}
	l.put(3, "c2")
	if v, _ := l.get(3); v != "c2" || l.len() != 2 {
		t.Errorf("update: %q len %d", v, l.len())
	}
	l.remove(1)
	l.remove(1)
	if l.len() != 1 {
		t.Errorf("len %d after remove", l.len())
	}
}

func TestObjectCacheBound(t *testing.T) {
	mustBeRoot(t)
	s, prog, _ := startC(t, false)
	// The program maps itself, libc, libdl (maybe) and ld.so: more objects than the bound.
	small := New(Options{MaxObjects: 1})
	if err := small.ProcessStarted(prog.pid); err != nil {
		t.Fatal(err)
	}
	if got := small.Stats().ObjectsCached; got != 1 {
		t.Errorf("ObjectsCached = %d with MaxObjects 1", got)
	}
	// Evicted objects are reloaded on demand while the process lives.
	ref := s.User(prog.pid, []uint64{libcAddress(t, prog.pid)})
	got := small.User(prog.pid, []uint64{libcAddress(t, prog.pid)})
	if got[0].Function == "" || got[0].Function != ref[0].Function {
		t.Errorf("after eviction got %q, want %q", got[0].Function, ref[0].Function)
	}
}

// libcAddress returns the runtime address of libc's getpid.
func libcAddress(t *testing.T, pid uint32) uint64 {
	for _, m := range readMaps(t, pid) {
		if m.Exec && bytes.Contains([]byte(m.Path), []byte("libc.so")) {
			getpid, _ := elfSymbol(t, m.Path, "getpid", true)
			return runtimeAddress(t, pid, m.Path, getpid)
		}
	}
	t.Skip("no libc")
	return 0
}
