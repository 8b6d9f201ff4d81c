package python

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cgscope/cgscope/interp"
	"github.com/cgscope/cgscope/symbolizer"
)

// The layouts against real interpreters: Debian's python3.11 and, where
// pyenv installed them, CPython 3.11, 3.12 and 3.13 built from source (a
// shared libpython), and 3.10 (no layout). Each runs a known chain; the
// test finds the interpreter as the registry would, then walks the main
// thread's stack here, in userspace, exactly as the BPF walker does with
// the State it was given, and names the frames.

// pythons are the interpreters tried, with the minor version each is.
func pythons(t *testing.T) map[string]int {
	out := map[string]int{"/usr/bin/python3.11": 11}
	home, _ := os.UserHomeDir()
	for _, v := range []string{"3.10", "3.11", "3.12", "3.13"} {
		matches, _ := filepath.Glob(filepath.Join(home, ".pyenv/versions", v+".*", "bin", "python"+v))
		for _, m := range matches {
			minor, _ := strconv.Atoi(strings.TrimPrefix(v, "3."))
			out[m] = minor
		}
	}
	return out
}

// chainScript burns CPU in fid_leaf ← fid_middle ← fid_outer (through
// map(), a C function: two activations of the interpreter loop) and prints
// its pid once running.
const chainScript = `
import os, sys
def fid_leaf(n):
    x = 0
    while True:
        x = (x * 31 + n) % 1000003

def fid_middle(n):
    return list(map(fid_leaf, [n]))

class Outer:
    def fid_outer(self):
        return fid_middle(7)

print(os.getpid(), flush=True)
Outer().fid_outer()
`

func startPython(t *testing.T, python, script string) int {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "chain.py")
	if err := os.WriteFile(path, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(python, path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	_, err = bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("%s printed no pid: %v", python, err)
	}
	time.Sleep(200 * time.Millisecond) // into the loop
	return cmd.Process.Pid
}

// liveTargets returns the registry's view of pid: its mappings and each
// candidate as a Target.
func liveTargets(t *testing.T, pid int, cache *interp.Cache) []*interp.Target {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	maps, err := symbolizer.ParseMaps(f)
	if err != nil {
		t.Fatal(err)
	}
	var exec []interp.Mapping
	for _, m := range maps {
		if m.Exec && strings.HasPrefix(m.Path, "/") {
			exec = append(exec, interp.Mapping{Start: m.Start, Limit: m.Limit, Offset: m.Offset, Path: m.Path, Object: m.Path})
		}
	}
	var out []*interp.Target
	rt := New()
	for _, m := range exec {
		if !rt.Candidate(m.Path) {
			continue
		}
		path := fmt.Sprintf("/proc/%d/root%s", pid, m.Path)
		out = append(out, &interp.Target{PID: uint32(pid), Mem: interp.NewMemory(uint32(pid)), Mappings: exec, Candidate: m,
			Cache: cache, Owner: uint64(pid),
			Read: func(read func(io.ReaderAt) error) error {
				f, err := os.Open(path)
				if err != nil {
					return err
				}
				defer f.Close()
				return read(f)
			}})
	}
	return out
}

// attach finds the interpreter of pid, trying again while it starts.
func attach(t *testing.T, rt *Runtime, pid int) (interp.Process, error) {
	t.Helper()
	cache := interp.NewCache(1 << 20)
	deadline := time.Now().Add(5 * time.Second)
	for {
		var lastErr error = interp.ErrNotInterpreter
		for _, tg := range liveTargets(t, pid, cache) {
			p, err := rt.Attach(tg)
			if err == nil || !isNotInterpreter(err) {
				lastErr = err
				if err == nil {
					return p, nil
				}
				break
			}
		}
		if !isNotReady(lastErr) || time.Now().After(deadline) {
			return nil, lastErr
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// userWalk reads the thread's interpreter stack as bpf/interp.bpf.h does,
// from the thread pointer tp, and returns the words it would record.
func userWalk(t *testing.T, mem *interp.Memory, st *interp.State, tp uint64) []uint64 {
	t.Helper()
	ts, err := mem.U64(uint64(int64(tp) + st.TLS))
	if err == nil && st.TwoLevel && ts != 0 {
		ts, err = mem.U64(ts + st.TLS2)
	}
	if err != nil || ts == 0 {
		t.Fatalf("no thread state at the thread pointer: %v", err)
	}
	off := func(i int) uint64 { return uint64(st.Offsets[i]) }
	if id, _ := mem.U64(ts + off(0)); id != tp {
		t.Fatalf("thread state names thread %#x, not %#x", id, tp)
	}
	frame, _ := mem.U64(ts + off(1))
	if st.Offsets[2] != interp.NoOffset {
		frame, _ = mem.U64(frame + off(2))
	}
	var words []uint64
	buf := make([]byte, st.Offsets[7])
	for frame != 0 && len(words) < 124 {
		if err := mem.Read(frame, buf); err != nil {
			t.Fatalf("reading frame %#x: %v", frame, err)
		}
		code, instr := interp.Word(buf, int(off(3))), interp.Word(buf, int(off(5)))
		entry := buf[off(6)]
		frame = interp.Word(buf, int(off(4)))
		if owner := st.Values[0]; owner != 0 {
			if uint64(entry) == owner {
				if n := len(words); n > 0 {
					words[n-1] |= wordEntry
				}
				continue
			}
			entry = 0
		}
		lasti := (int64(instr-code) - int64(off(8))) >> 1
		v := uint64(max(lasti+1, 0))
		w := code | v<<wordLastiShift
		if entry != 0 {
			w |= wordEntry
		}
		words = append(words, w)
	}
	return words
}

// mainThreadPointer is the main thread's pthread_self(): the thread_id of
// the interpreter's oldest thread state.
func mainThreadPointer(t *testing.T, p *process, mem *interp.Memory) uint64 {
	t.Helper()
	rtAddr := p.runtimeAddr
	is, _ := mem.U64(rtAddr + p.lay.runtimeInterpreters)
	ts, _ := mem.U64(is + p.lay.interpThreads)
	var tp uint64
	for ts != 0 {
		tp, _ = mem.U64(ts + uint64(p.lay.tstateThreadID))
		ts, _ = mem.U64(ts + uint64(p.lay.tstateNext))
	}
	return tp // the list's last: the first thread
}

func TestLiveInterpreters(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("reading another process's memory needs root")
	}
	for python, minor := range pythons(t) {
		t.Run(fmt.Sprintf("3.%d:%s", minor, python), func(t *testing.T) {
			pid := startPython(t, python, chainScript)
			rt := New()
			proc, err := attach(t, rt, pid)
			if layouts[minor] == nil {
				var unsupported *interp.UnsupportedError
				if !asUnsupported(err, &unsupported) || unsupported.Build {
					t.Fatalf("3.%d: got %v, want an unsupported version", minor, err)
				}
				t.Logf("unsupported as expected: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("attach: %v", err)
			}
			p := proc.(*process)
			mem := interp.NewMemory(uint32(pid))
			words := userWalk(t, mem, p.state, mainThreadPointer(t, p, mem))
			frames := p.Frames(words)
			var names []string
			for _, f := range frames {
				names = append(names, fmt.Sprintf("%s %s:%d entry=%v", f.Function, filepath.Base(f.File), f.Line, f.Entry))
			}
			t.Logf("%s (%s):\n  %s", python, p.Version(), strings.Join(names, "\n  "))
			want := []struct {
				fn    string
				line  []int
				entry bool
			}{
				{"chain.fid_leaf", []int{5, 6}, true}, // the loop's line, or its test's
				{"chain.fid_middle", []int{9}, false},
				{"chain.Outer.fid_outer", []int{13}, false},
				{"chain.<module>", []int{16}, true},
			}
			if len(frames) != len(want) {
				t.Fatalf("%d frames, want %d", len(frames), len(want))
			}
			for i, w := range want {
				f := frames[i]
				if f.Function != w.fn || !containsInt(w.line, f.Line) || f.Entry != w.entry || filepath.Base(f.File) != "chain.py" {
					t.Errorf("frame %d: %s %s:%d entry=%v, want %s line %v entry=%v", i, f.Function, f.File, f.Line, f.Entry, w.fn, w.line, w.entry)
				}
			}
		})
	}
}

func isNotInterpreter(err error) bool { return errors.Is(err, interp.ErrNotInterpreter) }

func isNotReady(err error) bool {
	var u *interp.UnsupportedError
	return errors.Is(err, interp.ErrNotReady) || errors.As(err, &u) && u.Retry
}

func asUnsupported(err error, u **interp.UnsupportedError) bool { return errors.As(err, u) }

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
