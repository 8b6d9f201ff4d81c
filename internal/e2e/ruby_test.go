package e2e

import (
	"bufio"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"
)

// Ruby's own frames in stacks: Debian's ruby3.1 runs a known chain on its
// main thread and a singleton method through C methods on a second
// Thread; one copy is started before cgscope, one after. A third runs with
// a libruby whose version string says 9.9.9: counted, logged and profiled
// natively.

const rubyBin = "/usr/bin/ruby3.1"

// rubyChain is the workload: the chain on the main thread, lines 5-7 in
// fid_leaf, 13 in fid_middle, 17 in fid_outer.
const rubyChain = `class Work
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

// startRubyChain runs the chain with env added to the environment and
// returns its pid once it runs.
func startRubyChain(t *testing.T, dir string, env ...string) int {
	t.Helper()
	return startRubyChainIn(t, dir, nil, env...)
}

// startRubyChainIn runs the chain under the command prefix (which execs
// its arguments: the pid stays ruby's).
func startRubyChainIn(t *testing.T, dir string, prefix []string, env ...string) int {
	t.Helper()
	if _, err := os.Stat(rubyBin); err != nil {
		t.Fatalf("%s is missing (scripts/install-deps.sh installs ruby3.1): %v", rubyBin, err)
	}
	script := filepath.Join(dir, "chain.rb")
	if err := os.WriteFile(script, []byte(rubyChain), 0o644); err != nil {
		t.Fatal(err)
	}
	args := append(append(prefix[:len(prefix):len(prefix)], rubyBin, "--disable-gems"), script)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("ruby printed no pid: %v", err)
	}
	if strings.TrimSpace(line) != fmt.Sprint(cmd.Process.Pid) {
		t.Fatalf("ruby says pid %s, started %d", strings.TrimSpace(line), cmd.Process.Pid)
	}
	return cmd.Process.Pid
}

// rubyFrameChain is the main thread's chain, innermost first, with the
// lines each frame may be at (nil: a C method, no line).
var rubyFrameChain = []struct {
	fn    string
	lines []int64
}{
	{"Work#fid_leaf", []int64{5, 6, 7}},
	{"Work#fid_middle", []int64{13}},
	{"block in Work#fid_outer", []int64{17}},
	{"Kernel#loop", nil},
	{"Work#fid_outer", []int64{17}},
	{"<main>", []int64{33}},
}

// holdsRubyChain reports whether a sample's stack holds the chain in order
// from its innermost frame, with the right file and lines.
func holdsRubyChain(s *profile.Sample) bool {
	i := 0
	for _, l := range s.Location {
		for _, ln := range l.Line {
			if i == len(rubyFrameChain) {
				return true
			}
			w := rubyFrameChain[i]
			if ln.Function.Name != w.fn {
				continue
			}
			if w.lines != nil && (filepath.Base(ln.Function.Filename) != "chain.rb" || !containsInt64(w.lines, ln.Line)) {
				return false
			}
			i++
		}
	}
	return i == len(rubyFrameChain)
}

func containsInt64(s []int64, v int64) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func tidIs(tid int) func(*profile.Sample) bool {
	return func(s *profile.Sample) bool {
		v := s.NumLabel["tid"]
		return len(v) == 1 && v[0] == int64(tid)
	}
}

// patchedLibruby writes a copy of the process's libruby whose ruby_version
// says 9.9.9 into dir, named as the executable asks for it.
func patchedLibruby(t *testing.T, dir string) {
	t.Helper()
	const lib = "/usr/lib/x86_64-linux-gnu/libruby-3.1.so.3.1"
	data, err := os.ReadFile(lib)
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.Open(lib)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, _ := f.DynamicSymbols()
	var at uint64
	for _, s := range syms {
		if s.Name == "ruby_version" {
			for _, p := range f.Progs {
				if p.Type == elf.PT_LOAD && s.Value >= p.Vaddr && s.Value < p.Vaddr+p.Filesz {
					at = s.Value - p.Vaddr + p.Off
				}
			}
		}
	}
	if at == 0 || !strings.HasPrefix(string(data[at:]), "3.1.") {
		t.Fatalf("no ruby_version \"3.1.x\" in %s", lib)
	}
	copy(data[at:], "9.9.9")
	if err := os.WriteFile(filepath.Join(dir, filepath.Base(lib)), data, 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestRubyStacks(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	artifacts(t) // built before the first workload starts
	before := startRubyChain(t, dir)
	r := startOTLPReceiver(t, "")
	d := startCgscope(t, t.Cleanup, fmt.Sprintf("--profiling.frequency=%d", testFrequency), "--profiling.interval=1s",
		"--otlp.endpoint="+r.addr, "--otlp.insecure", "--otlp.interval=1s")
	after := startRubyChain(t, dir)
	// As in a container: its libruby is a file only its mount namespace
	// has (a tmpfs over an empty directory of the host's), reached
	// through /proc/PID/root.
	hidden := filepath.Join(dir, "container-lib")
	os.Mkdir(hidden, 0o755)
	const libruby = "/usr/lib/x86_64-linux-gnu/libruby-3.1.so.3.1"
	contained := startRubyChainIn(t, dir, []string{"unshare", "--mount", "--propagation", "private", "sh", "-c",
		fmt.Sprintf("mount -t tmpfs none %s && cp %s %s/ && exec env LD_LIBRARY_PATH=%s \"$@\"", hidden, libruby, hidden, hidden), "sh"})
	if maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", contained)); err != nil || !strings.Contains(string(maps), hidden+"/libruby") {
		t.Fatalf("the contained ruby does not map its own libruby (%v)", err)
	}
	if entries, _ := os.ReadDir(hidden); len(entries) != 0 {
		t.Fatalf("the host sees the contained libruby")
	}
	oldDir := filepath.Join(dir, "old")
	os.Mkdir(oldDir, 0o755)
	patchedLibruby(t, oldDir)
	old := startRubyChain(t, dir, "LD_LIBRARY_PATH="+oldDir)
	// Until the interpreters are found (at their first samples, again
	// while a process still loads).
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		body, _ := httpGet(t, d.url("/metrics"))
		v := parseMetrics(t, string(body))
		if v[`cgscope_interpreter_processes{runtime="ruby"}`] >= 3 && v[`cgscope_interpreter_processes_total{result="unsupported_version",runtime="ruby"}`] >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the Ruby interpreters were not all found in 20 s:\n%s", grepLines(string(body), "ruby"))
		}
	}
	p := d.capture(t, "seconds=5")
	time.Sleep(2500 * time.Millisecond) // two OTLP intervals after the capture's last window

	for _, c := range []struct {
		name string
		pid  int
	}{{"started before cgscope", before}, {"started after cgscope", after}, {"in its own mount namespace", contained}} {
		main := samplesWhere(p, func(s *profile.Sample) bool { return pidIs(c.pid)(s) && tidIs(c.pid)(s) })
		chain := samplesWhere(p, func(s *profile.Sample) bool { return pidIs(c.pid)(s) && tidIs(c.pid)(s) && holdsRubyChain(s) })
		mixed := samplesWhere(p, func(s *profile.Sample) bool {
			return pidIs(c.pid)(s) && tidIs(c.pid)(s) && stackHas(s, "Background.spin_other")
		})
		other := samplesWhere(p, func(s *profile.Sample) bool { return pidIs(c.pid)(s) && !tidIs(c.pid)(s) })
		spin := samplesWhere(p, func(s *profile.Sample) bool {
			return pidIs(c.pid)(s) && !tidIs(c.pid)(s) && stackHas(s, "Background.spin_other") && stackHas(s, "block in Background.spin_other")
		})
		otherMixed := samplesWhere(p, func(s *profile.Sample) bool {
			return pidIs(c.pid)(s) && !tidIs(c.pid)(s) && stackHas(s, "Work#fid_leaf")
		})
		t.Logf("%s: main thread %d samples, %d with the chain; other thread %d, %d in Background.spin_other", c.name, main, chain, other, spin)
		if main < 50 || other < 50 {
			t.Fatalf("%s: %d and %d samples of the two threads, want at least 50 each\n%s", c.name, main, other, rubyStacks(p, c.pid))
		}
		if float64(chain) < 0.95*float64(main) {
			t.Errorf("%s: %.1f%% of the main thread's samples hold the chain, want >= 95%%\n%s", c.name, 100*float64(chain)/float64(main), rubyStacks(p, c.pid))
		}
		if float64(spin) < 0.95*float64(other) {
			t.Errorf("%s: %.1f%% of the other thread's samples in Background.spin_other, want >= 95%%\n%s", c.name, 100*float64(spin)/float64(other), rubyStacks(p, c.pid))
		}
		if mixed != 0 || otherMixed != 0 {
			t.Errorf("%s: the threads' methods mixed up: %d main-thread samples in spin_other, %d other-thread ones in fid_leaf", c.name, mixed, otherMixed)
		}
	}
	t.Logf("a stack of the process started before cgscope:\n%s", firstStack(p, before))
	for _, l := range strings.Split(d.stderr.String(), "\n") {
		if strings.Contains(l, "interpreter") {
			t.Log(l)
		}
	}
	// The interpreter loop's native frame is replaced, not kept beside
	// the Ruby frames: each activation (block in fid_outer ← Kernel#loop)
	// appears once per sample.
	for _, s := range p.Sample {
		if !pidIs(before)(s) {
			continue
		}
		n := 0
		for _, l := range s.Location {
			for _, ln := range l.Line {
				if ln.Function.Name == "Work#fid_outer" {
					n++
				}
			}
		}
		if n > 1 {
			t.Fatalf("Work#fid_outer %d times in one stack", n)
		}
	}

	// The unsupported version: profiled natively, counted, logged.
	oldSamples := samplesWhere(p, pidIs(old))
	oldRuby := samplesWhere(p, func(s *profile.Sample) bool { return pidIs(old)(s) && stackHas(s, "Work#fid_leaf") })
	if oldSamples < 100 || oldRuby != 0 {
		t.Errorf("libruby 9.9.9: %d samples, %d with Ruby frames; want native samples only", oldSamples, oldRuby)
	}
	body, _ := httpGet(t, d.url("/metrics"))
	values := parseMetrics(t, string(body))
	for k, v := range values {
		if strings.HasPrefix(k, "cgscope_interpreter_") && strings.Contains(k, "ruby") {
			t.Logf("%s %v", k, v)
		}
	}
	profiled := values[`cgscope_interpreter_processes_total{result="profiled",runtime="ruby"}`]
	unsupported := values[`cgscope_interpreter_processes_total{result="unsupported_version",runtime="ruby"}`]
	if profiled < 3 || unsupported < 1 {
		t.Errorf("cgscope_interpreter_processes_total: ruby profiled %v, unsupported_version %v; want >= 3 and >= 1", profiled, unsupported)
	}
	typed, untyped := r.interpretedFrames(before, "Work#fid_leaf", "ruby")
	t.Logf("OTLP: Work#fid_leaf in %d locations with profile.frame.type=ruby, %d without", typed, untyped)
	if typed == 0 || untyped > 0 {
		t.Errorf("OTLP: Work#fid_leaf in %d locations with profile.frame.type=ruby, %d without", typed, untyped)
	}
	if n := values[`cgscope_interpreter_frames_total{result="named",runtime="ruby"}`]; n <= 0 {
		t.Errorf("no Ruby frames named")
	}
	if !strings.Contains(d.stderr.String(), "interpreter version not supported") || !strings.Contains(d.stderr.String(), "9.9.9") {
		t.Errorf("no log line for ruby 9.9.9:\n%s", d.stderr)
	}
	runs := values[`cgscope_bpf_program_runs_total{program="sample_cpu"}`]
	secs := values[`cgscope_bpf_program_run_seconds_total{program="sample_cpu"}`]
	if runs > 0 {
		t.Logf("sample_cpu: %.0f runs, %.2f µs each on average", runs, secs/runs*1e6)
	}
}

// rubyStacks prints the process's most frequent stacks, for failures.
func rubyStacks(p *profile.Profile, pid int) string {
	var b strings.Builder
	n := 0
	for _, s := range p.Sample {
		if !pidIs(pid)(s) || n >= 8 {
			continue
		}
		n++
		fmt.Fprintf(&b, "tid %v, %d samples:\n", s.NumLabel["tid"], s.Value[0])
		writeStack(&b, s)
	}
	return b.String()
}

// firstStack prints the pid's main-thread stack with the most samples.
func firstStack(p *profile.Profile, pid int) string {
	var best *profile.Sample
	for _, s := range p.Sample {
		if pidIs(pid)(s) && tidIs(pid)(s) && (best == nil || s.Value[0] > best.Value[0]) {
			best = s
		}
	}
	if best == nil {
		return ""
	}
	var b strings.Builder
	writeStack(&b, best)
	return b.String()
}

func writeStack(w io.Writer, s *profile.Sample) {
	for _, l := range s.Location {
		for _, ln := range l.Line {
			fmt.Fprintf(w, "    %s %s:%d\n", ln.Function.Name, filepath.Base(ln.Function.Filename), ln.Line)
		}
		if len(l.Line) == 0 {
			fmt.Fprintf(w, "    %#x\n", l.Address)
		}
	}
}
