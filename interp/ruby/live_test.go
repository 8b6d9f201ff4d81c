package ruby

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cgscope/cgscope/interp"
	"github.com/cgscope/cgscope/symbolizer"
)

// The layout against Debian's ruby3.1: a script runs a known chain on its
// main thread and a singleton method through C methods on another; the
// test finds the interpreter as the registry would, then walks each
// thread's stack here, in userspace, exactly as the BPF walker does with
// the State it was given, and names the frames.

const rubyBin = "/usr/bin/ruby3.1"

// chainScript burns CPU in Work#fid_leaf ← Work#fid_middle ← block in
// Work#fid_outer ← Kernel#loop ← Work#fid_outer on the main thread, and in
// Background.spin_other through Kernel#loop and Array#each on a thread of
// its own, and prints its pid once both run.
const chainScript = `class Work
  def fid_leaf(n)
    x = 0
    i = 0
    while i < n
      x = (x * 31 + i) % 1_000_003
      i += 1
    end
    x
  end

  def fid_middle
    fid_leaf(200_000)
  end

  def fid_outer
    loop { fid_middle }
  end
end

module Background
  def self.spin_other
    arr = (1..1000).to_a
    loop do
      arr.each { |v| v * v }
    end
  end
end

t = Thread.new { Background.spin_other }
$stdout.puts Process.pid
$stdout.flush
Work.new.fid_outer
`

func startRuby(t *testing.T, script string) int {
	t.Helper()
	if _, err := os.Stat(rubyBin); err != nil {
		t.Fatalf("%s is missing (scripts/install-deps.sh installs ruby3.1): %v", rubyBin, err)
	}
	path := filepath.Join(t.TempDir(), "chain.rb")
	if err := os.WriteFile(path, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(rubyBin, path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		t.Fatalf("ruby printed no pid: %v", err)
	}
	time.Sleep(200 * time.Millisecond)
	return cmd.Process.Pid
}

// liveTargets returns the registry's view of pid: its candidates as Targets.
func liveTargets(t *testing.T, rt *Runtime, pid int, cache *interp.Cache) []*interp.Target {
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
		for _, tg := range liveTargets(t, rt, pid, cache) {
			p, err := rt.Attach(tg)
			if err == nil {
				return p, nil
			}
			if !errors.Is(err, interp.ErrNotInterpreter) {
				lastErr = err
				break
			}
		}
		var u *interp.UnsupportedError
		if !(errors.Is(lastErr, interp.ErrNotReady) || errors.As(lastErr, &u) && u.Retry) || time.Now().After(deadline) {
			return nil, lastErr
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// userWalk reads a thread's control frames as bpf/interp_ruby.bpf.h does,
// from its thread pointer tp, and returns the words it would record.
func userWalk(t *testing.T, mem *interp.Memory, st *interp.State, tp uint64) []uint64 {
	t.Helper()
	ec, err := mem.U64(uint64(int64(tp) + st.TLS))
	if err != nil || ec == 0 {
		t.Fatalf("no execution context at the thread pointer: %v", err)
	}
	off := func(i int) uint64 { return uint64(st.Offsets[i]) }
	stack, _ := mem.U64(ec + off(0))
	size, _ := mem.U64(ec + off(1))
	cfp, _ := mem.U64(ec + off(2))
	fsize := off(6)
	end := stack + 8*size
	if cfp < stack || cfp >= end || (end-cfp)%fsize != 0 {
		t.Fatalf("cfp %#x outside the VM stack %#x..%#x", cfp, stack, end)
	}
	var words []uint64
	lastMe := ^uint64(0)
	for ; cfp < end-fsize && len(words) < 124; cfp += fsize {
		buf := make([]byte, fsize)
		if err := mem.Read(cfp, buf); err != nil {
			t.Fatal(err)
		}
		pc, iseq, ep := interp.Word(buf, int(off(3))), interp.Word(buf, int(off(4))), interp.Word(buf, int(off(5)))
		env := make([]byte, 24)
		if err := mem.Read(ep-16, env); err != nil {
			t.Fatal(err)
		}
		flags := interp.Word(env, 16)
		entry := uint64(0)
		if flags&0x20 != 0 {
			entry = wordEntry
		}
		if flags&0x80 == 0 {
			if pc == 0 {
				continue
			}
			me, specval, fl := interp.Word(env, 0), interp.Word(env, 8), flags
			for hops := 0; fl&2 == 0 && hops < 4; hops++ {
				if err := mem.Read(specval&^3-16, env); err != nil {
					t.Fatal(err)
				}
				me, specval, fl = interp.Word(env, 0), interp.Word(env, 8), interp.Word(env, 16)
			}
			if fl&2 == 0 {
				me = 0
			}
			if me == lastMe {
				words = append(words, iseq|tagISeq<<wordTagShift|entry|wordSameMe, pc)
			} else {
				words = append(words, iseq|tagISeq<<wordTagShift|entry, pc, me)
			}
			lastMe = me
		} else if flags&0x7fff0001 == 0x55550001 {
			words = append(words, interp.Word(env, 0)|tagCFunc<<wordTagShift|entry)
		}
	}
	return words
}

// rubyThreads returns the thread pointers of the process's Ruby threads,
// main first (the main ractor's thread list, ractor_core.h:94).
func rubyThreads(t *testing.T, p *process, mem *interp.Memory, vmPtr uint64) []uint64 {
	t.Helper()
	vm, _ := mem.U64(vmPtr)
	ractor, _ := mem.U64(vm + 0x20) // vm->ractor.main_ractor
	head := ractor + 0x130          // ractor->threads.set
	main, _ := mem.U64(vm + p.lay.vmMainThread)
	var out []uint64
	mainTP, _ := mem.U64(main + p.lay.threadID)
	out = append(out, mainTP)
	th, _ := mem.U64(head)
	for i := 0; th != 0 && th != head && i < 100; i++ {
		if th != main {
			tp, _ := mem.U64(th + p.lay.threadID)
			out = append(out, tp)
		}
		th, _ = mem.U64(th)
	}
	return out
}

func names(frames []interp.Frame) []string {
	var out []string
	for _, f := range frames {
		out = append(out, fmt.Sprintf("%s %s:%d entry=%v", f.Function, filepath.Base(f.File), f.Line, f.Entry))
	}
	return out
}

func TestLiveRuby(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("reading another process's memory needs root")
	}
	pid := startRuby(t, chainScript)
	rt := New()
	proc, err := attach(t, rt, pid)
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	p := proc.(*process)
	if p.Version() != "3.1.2" && !strings.HasPrefix(p.Version(), "3.1.") {
		t.Errorf("version %q", p.Version())
	}
	if p.symbols == 0 {
		t.Error("ruby_global_symbols not found: C methods and classes go unnamed")
	}
	mem := interp.NewMemory(uint32(pid))
	var vmPtr uint64
	for _, tg := range liveTargets(t, rt, pid, interp.NewCache(1<<20)) {
		bin, err := rt.objects.Get(tg, readObjectFacts)
		if err != nil {
			continue
		}
		bias, _ := bin.bias(&tg.Candidate)
		vmPtr = bin.vmPtr + bias
	}
	tps := rubyThreads(t, p, mem, vmPtr)
	if len(tps) != 2 {
		t.Fatalf("%d Ruby threads, want 2", len(tps))
	}
	type want struct {
		fn    string
		lines []int
		entry bool
	}
	check := func(name string, frames []interp.Frame, wants []want) {
		t.Logf("%s:\n  %s", name, strings.Join(names(frames), "\n  "))
		if len(frames) < len(wants) {
			t.Fatalf("%s: %d frames, want at least %d", name, len(frames), len(wants))
		}
		for i, w := range wants {
			f := frames[i]
			ok := f.Function == w.fn && f.Entry == w.entry && f.Interpreter == "ruby"
			if w.lines != nil {
				ok = ok && filepath.Base(f.File) == "chain.rb" && containsInt(w.lines, f.Line)
			}
			if !ok {
				t.Errorf("%s frame %d: %s %s:%d entry=%v, want %s line %v entry=%v", name, i, f.Function, f.File, f.Line, f.Entry, w.fn, w.lines, w.entry)
			}
		}
	}
	// The main thread; a sample may catch it between frames of the
	// chain: take a few walks and check one that is in fid_leaf.
	var main []interp.Frame
	for range 50 {
		main = p.Frames(userWalk(t, mem, p.state, tps[0]))
		if len(main) > 0 && main[0].Function == "Work#fid_leaf" {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	check("main thread", main, []want{
		{"Work#fid_leaf", []int{5, 6, 7}, false},
		{"Work#fid_middle", []int{13}, false},
		{"block in Work#fid_outer", []int{17}, true},
		{"Kernel#loop", nil, false},
		{"Work#fid_outer", []int{17}, false},
		{"<main>", []int{33}, true},
	})
	var bg []interp.Frame
	for range 50 {
		bg = p.Frames(userWalk(t, mem, p.state, tps[1]))
		if len(bg) > 0 && bg[0].Function == "block (2 levels) in Background.spin_other" {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	check("thread", bg, []want{
		{"block (2 levels) in Background.spin_other", []int{25}, true},
		{"Array#each", nil, false},
		{"block in Background.spin_other", []int{25}, true},
		{"Kernel#loop", nil, false},
		{"Background.spin_other", []int{24}, false},
		{"block in <main>", []int{30}, true},
	})
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// fiberScript burns CPU inside a Fiber on the main thread: the thread's
// ruby_current_ec is then the fiber's, whose stack starts at the fiber's
// block (Ruby's backtraces show the same).
const fiberScript = `def in_fiber_burn
  x = 0
  loop do
    i = 0
    while i < 100_000
      x = (x + i) % 7919
      i += 1
    end
  end
end

f = Fiber.new { in_fiber_burn }
$stdout.puts Process.pid
$stdout.flush
f.resume
`

func TestLiveRubyFiber(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("reading another process's memory needs root")
	}
	pid := startRuby(t, fiberScript)
	rt := New()
	proc, err := attach(t, rt, pid)
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	p := proc.(*process)
	mem := interp.NewMemory(uint32(pid))
	var vmPtr uint64
	for _, tg := range liveTargets(t, rt, pid, interp.NewCache(1<<20)) {
		if bin, err := rt.objects.Get(tg, readObjectFacts); err == nil {
			bias, _ := bin.bias(&tg.Candidate)
			vmPtr = bin.vmPtr + bias
		}
	}
	tp := rubyThreads(t, p, mem, vmPtr)[0]
	var frames []interp.Frame
	for range 50 {
		frames = p.Frames(userWalk(t, mem, p.state, tp))
		if len(frames) > 0 && frames[0].Function == "block in Object#in_fiber_burn" {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("in the fiber:\n  %s", strings.Join(names(frames), "\n  "))
	want := []string{"block in Object#in_fiber_burn", "Kernel#loop", "Object#in_fiber_burn", "block in <main>"}
	var got []string
	for _, f := range frames {
		got = append(got, f.Function)
	}
	if strings.Join(got, " < ") != strings.Join(want, " < ") {
		t.Errorf("fiber stack %q, want %q", got, want)
	}
}
