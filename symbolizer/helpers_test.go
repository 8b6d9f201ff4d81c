package symbolizer

import (
	"bufio"
	"bytes"
	"debug/elf"
	"debug/gosym"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testProgram is a child process started for a test. It blocks reading stdin; closing
// stdin lets it exit.
type testProgram struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
	pid   uint32
}

// startProgram runs path and waits for its first output line ("ready ..."), so its
// libraries are mapped when the test looks at it.
func startProgram(t testing.TB, path string, args ...string) (*testProgram, string) {
	t.Helper()
	cmd := exec.Command(path, args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &testProgram{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout), pid: uint32(cmd.Process.Pid)}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return p, p.readLine(t)
}

func (p *testProgram) readLine(t testing.TB) string {
	t.Helper()
	type result struct {
		line string
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		line, err := p.out.ReadString('\n')
		ch <- result{strings.TrimSpace(line), err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("reading from test program: %v", r.err)
		}
		return r.line
	case <-time.After(30 * time.Second):
		t.Fatal("test program did not answer")
	}
	return ""
}

// exit closes stdin and waits for the program to end.
func (p *testProgram) exit(t testing.TB) {
	t.Helper()
	p.stdin.Close()
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("test program: %v", err)
	}
}

func requireTool(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed", name)
	}
	return path
}

func run(t testing.TB, dir, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// cProgram blocks on stdin after printing "ready"; it has a static and an exported
// function that cannot be inlined or cloned, and can dlopen a library on request.
const cProgram = `
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>

__attribute__((noinline, noclone)) static int hidden_work(int x) {
	int s = 0;
	for (int i = 0; i < x; i++) s += (i * x) ^ (s >> 3);
	return s;
}

__attribute__((noinline, noclone)) int exported_work(int x) {
	return hidden_work(x) + 1;
}

int main(int argc, char **argv) {
	volatile int sink = exported_work(argc + 10);
	(void)sink;
	printf("ready %p %p\n", (void *)hidden_work, (void *)exported_work);
	fflush(stdout);
	char c;
	while (read(0, &c, 1) == 1) {
		if (c == 'd' && argc > 1) {
			void *h = dlopen(argv[1], RTLD_NOW);
			void *f = h ? dlsym(h, "plugin_work") : NULL;
			printf("loaded %p\n", f);
			fflush(stdout);
		}
	}
	return 0;
}
`

// buildC compiles src in dir as a PIE with frame pointers and exported symbols.
func buildC(t testing.TB, dir, name, src string, extra ...string) string {
	t.Helper()
	requireTool(t, "gcc")
	srcPath := filepath.Join(dir, name+".c")
	if err := os.WriteFile(srcPath, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, name)
	args := append([]string{"-O2", "-fno-omit-frame-pointer", "-fPIE", "-pie", "-rdynamic", "-Wl,--build-id", "-o", out, srcPath}, extra...)
	run(t, dir, "gcc", args...)
	return out
}

// buildGo builds a Go main package from src with the given flags.
func buildGo(t testing.TB, dir, src string, flags ...string) string {
	t.Helper()
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goTool); err != nil {
		goTool = requireTool(t, "go")
	}
	for name, content := range map[string]string{"go.mod": "module spin\n\ngo 1.21\n", "main.go": src} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "spin")
	args := append(append([]string{"build"}, flags...), "-o", out, ".")
	run(t, dir, goTool, args...)
	return out
}

// elfSymbol returns value and size of a function symbol from .symtab or .dynsym.
func elfSymbol(t testing.TB, path, name string, dynamic bool) (uint64, uint64) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if dynamic {
		syms, err = f.DynamicSymbols()
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range syms {
		if s.Name == name && elf.ST_TYPE(s.Info) == elf.STT_FUNC && s.Value != 0 {
			return s.Value, s.Size
		}
	}
	t.Fatalf("%s: no symbol %s", path, name)
	return 0, 0
}

// runtimeAddress finds where object address objAddr of file path is mapped in pid, from the
// ELF program headers and /proc/PID/maps (independently of the code under test).
func runtimeAddress(t testing.TB, pid uint32, path string, objAddr uint64) uint64 {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var fileOff uint64
	found := false
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && objAddr >= p.Vaddr && objAddr < p.Vaddr+p.Filesz {
			fileOff, found = objAddr-p.Vaddr+p.Off, true
		}
	}
	if !found {
		t.Fatalf("%s: %#x in no PT_LOAD", path, objAddr)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range readMaps(t, pid) {
		if m.Inode == inodeOf(fi) && fileOff >= m.Offset && fileOff < m.Offset+(m.Limit-m.Start) {
			return m.Start + fileOff - m.Offset
		}
	}
	t.Fatalf("pid %d: %s offset %#x not mapped", pid, path, fileOff)
	return 0
}

func readMaps(t testing.TB, pid uint32) []Mapping {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("/proc", itoa(pid), "maps"))
	if err != nil {
		t.Fatal(err)
	}
	maps, err := ParseMaps(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	return maps
}

func itoa(pid uint32) string { return strconv.FormatUint(uint64(pid), 10) }

// gnuBuildID reads the build ID note independently of the code under test.
func gnuBuildID(t testing.TB, path string) string {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sec := f.Section(".note.gnu.build-id")
	if sec == nil {
		t.Fatalf("%s has no .note.gnu.build-id", path)
	}
	data, err := sec.Data()
	if err != nil || len(data) < 16 {
		t.Fatalf("%s: bad build-id note", path)
	}
	return hex.EncodeToString(data[16:]) // 12-byte header + "GNU\0"
}

// mustBeRoot skips tests that need to read other processes' /proc/PID/map_files and mem.
func mustBeRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

// goSymTable reads the .gopclntab of a Go binary with debug/gosym, independently of the
// code under test; the test binaries are internally linked, so runtime.text is the
// start of .text.
func goSymTable(t testing.TB, f *elf.File) *gosym.Table {
	t.Helper()
	data, err := f.Section(".gopclntab").Data()
	if err != nil {
		t.Fatal(err)
	}
	tab, err := gosym.NewTable(nil, gosym.NewLineTable(data, f.Section(".text").Addr))
	if err != nil {
		t.Fatal(err)
	}
	return tab
}
