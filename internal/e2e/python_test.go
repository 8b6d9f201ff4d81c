package e2e

import (
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"
	"go.opentelemetry.io/collector/pdata/pprofile"
)

// Python functions in place of the interpreter's native frames: one daemon
// (exporting OTLP too) and Debian's python3.11 running the workloads of
// testdata/python, one started before the daemon and the others after,
// all captured over the same window.

// debianPython is named by path: a pyenv python may come first on PATH.
const debianPython = "/usr/bin/python3.11"

// pyFrame is an interpreted frame as pprof shows it.
type pyFrame struct {
	fn, file string
	line     int64
}

// pyFrames lists a sample's frames, innermost first, with the file name
// (base) and line of each.
func pyFrames(s *profile.Sample) []pyFrame {
	var out []pyFrame
	for _, l := range s.Location {
		for _, ln := range l.Line {
			out = append(out, pyFrame{ln.Function.Name, filepath.Base(ln.Function.Filename), ln.Line})
		}
		if len(l.Line) == 0 {
			out = append(out, pyFrame{})
		}
	}
	return out
}

// holdsPyChain reports whether the frames hold chain.py's chain with its
// lines: fid_leaf in its loop, called by fid_middle on line 14, called by
// Outer.fid_outer on line 19, called by the module's loop on line 25, with
// nothing but native frames above fid_leaf.
func holdsPyChain(frames []pyFrame) bool {
	i := 0
	for i < len(frames) && frames[i].file != "chain.py" {
		i++
	}
	if len(frames)-i < 4 {
		return false
	}
	f := frames[i : i+4]
	return f[0] == pyFrame{"chain.fid_leaf", "chain.py", f[0].line} && f[0].line >= 7 && f[0].line <= 10 &&
		f[1] == pyFrame{"chain.fid_middle", "chain.py", 14} &&
		f[2] == pyFrame{"chain.Outer.fid_outer", "chain.py", 19} &&
		f[3] == pyFrame{"chain.<module>", "chain.py", 25}
}

func TestPython(t *testing.T) {
	if _, err := os.Stat(debianPython); err != nil {
		t.Fatalf("%s missing (scripts/install-deps.sh installs python3.11): %v", debianPython, err)
	}
	dir, err := filepath.Abs("testdata/python")
	if err != nil {
		t.Fatal(err)
	}
	script := func(name string) string { return filepath.Join(dir, name) }
	unsupported := fakeVersionPython(t)
	artifacts(t) // built before the first workload starts

	// Started before the daemon: found by its first samples.
	before := workload(t, debianPython, script("chain.py"), "60")
	time.Sleep(500 * time.Millisecond)

	r := startOTLPReceiver(t, "")
	d := startCgscope(t, t.Cleanup, fmt.Sprintf("--profiling.frequency=%d", testFrequency), "--profiling.interval=1s",
		"--otlp.endpoint="+r.addr, "--otlp.insecure", "--otlp.interval=1s")
	after := workload(t, debianPython, script("chain.py"), "60")
	threads := workload(t, debianPython, script("threads.py"), "60")
	compress := workload(t, debianPython, script("compress.py"), "60")
	var old []int
	for range 2 {
		// Its copy's prefix is not Debian's: PYTHONHOME names the library.
		w := exec.Command(unsupported, script("chain.py"), "60")
		w.Env = append(os.Environ(), "PYTHONHOME=/usr")
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.Process.Kill(); w.Wait() })
		old = append(old, w.Process.Pid)
	}
	contained := containedPython(t, script("chain.py"))
	// Python embedded: Debian's gdb runs it from libpython3.11.so.
	embedded := workload(t, "gdb", "-batch", "-nx", "-ex",
		"python import runpy, sys; sys.argv = ['chain.py', '60']; runpy.run_path('"+script("chain.py")+"')")
	// CPython 3.12 and 3.13 (built by pyenv, with a shared libpython)
	// where this host has them: Debian 12 has neither.
	others := map[string]int{}
	home, _ := os.UserHomeDir()
	for _, v := range []string{"3.12", "3.13"} {
		matches, _ := filepath.Glob(filepath.Join(home, ".pyenv/versions", v+".*", "bin", "python"+v))
		for _, m := range matches {
			others[m] = workload(t, m, script("chain.py"), "60").Process.Pid
		}
	}
	if len(others) == 0 {
		t.Log("NOTE: no pyenv CPython 3.12 or 3.13 on this host: only 3.11 is walked")
	}
	// Interpreters are looked for at the processes' first samples (and
	// again while they start): wait until every one is walked or refused.
	waitInterpreters(t, d, 6+len(others), 2)
	time.Sleep(time.Second)
	// A short-lived one, started and ended inside the capture: its last
	// samples are drained after it exited, and still named.
	short := make(chan *exec.Cmd, 1)
	go func() {
		time.Sleep(time.Second)
		w := exec.Command(debianPython, script("chain.py"), "2")
		if err := w.Start(); err != nil {
			t.Error(err)
			close(short)
			return
		}
		w.Wait()
		short <- w
	}()
	p := d.capture(t, "seconds=6")
	time.Sleep(2500 * time.Millisecond) // two OTLP intervals after the capture's last window

	t.Run("chain", func(t *testing.T) {
		ws := []struct {
			name string
			pid  int
		}{{"started before cgscope", before.Process.Pid}, {"started after", after.Process.Pid}, {"in a container", contained}, {"embedded (gdb, libpython3.11.so)", embedded.Process.Pid}}
		for python, pid := range others {
			ws = append(ws, struct {
				name string
				pid  int
			}{python, pid})
		}
		for _, w := range ws {
			whole := samplesWhere(p, func(s *profile.Sample) bool { return pidIs(w.pid)(s) && holdsPyChain(pyFrames(s)) })
			total := samplesWhere(p, pidIs(w.pid))
			t.Logf("%s: chain with files and lines in %d of %d samples\n%s", w.name, whole, total, pidStacks(p, w.pid, 2))
			if total < 30 || float64(whole) < 0.95*float64(total) {
				t.Errorf("%s: chain fid_leaf ← fid_middle ← Outer.fid_outer named with file and line in %d of %d samples, want at least 95%%", w.name, whole, total)
			}
		}
	})

	t.Run("short-lived", func(t *testing.T) {
		w := <-short
		if w == nil {
			t.Fatal("the short-lived workload did not run")
		}
		pid := w.Process.Pid
		whole := samplesWhere(p, func(s *profile.Sample) bool { return pidIs(pid)(s) && holdsPyChain(pyFrames(s)) })
		total := samplesWhere(p, pidIs(pid))
		// Its start-up (the interpreter initializing, importing) runs no
		// chain; what would show names lost at its exit is the
		// interpreter loop's native frame left in place of its frames.
		loop := samplesWhere(p, func(s *profile.Sample) bool { return pidIs(pid)(s) && stackHas(s, "_PyEval_EvalFrameDefault") })
		t.Logf("a 2 s python: chain with files and lines in %d of %d samples, %d with the interpreter loop unreplaced\n%s", whole, total, loop, pidStacks(p, pid, 2))
		if total < 30 || float64(whole) < 0.8*float64(total) || float64(loop) > 0.03*float64(total) {
			t.Errorf("a process that ended during the capture: chain in %d of %d samples (want 80%%), %d with the interpreter loop (want under 3%%)", whole, total, loop)
		}
	})

	t.Run("threads", func(t *testing.T) {
		tids := map[string]map[int64]int64{"threads.fid_alpha": {}, "threads.fid_beta": {}}
		for _, s := range p.Sample {
			if !pidIs(threads.Process.Pid)(s) || len(s.NumLabel["tid"]) != 1 {
				continue
			}
			for fn := range tids {
				if stackHas(s, fn) {
					tids[fn][s.NumLabel["tid"][0]] += s.Value[0]
				}
			}
		}
		t.Logf("samples by function and thread: %v", tids)
		for fn, byTID := range tids {
			if len(byTID) != 1 {
				t.Errorf("%s: in %d threads' samples, want one", fn, len(byTID))
			}
			for tid, n := range byTID {
				if n < 20 {
					t.Errorf("%s: %d samples of thread %d, want at least 20", fn, n, tid)
				}
				for other, byTID := range tids {
					if other != fn && byTID[tid] > 0 {
						t.Errorf("thread %d's samples name both %s and %s", tid, fn, other)
					}
				}
			}
		}
	})

	t.Run("C extension", func(t *testing.T) {
		// Samples in libz: the Python caller is outside (after) the native
		// frames of zlib, and no frame of the interpreter loop is left.
		var inZlib, withCaller, loops int64
		for _, s := range p.Sample {
			if !pidIs(compress.Process.Pid)(s) {
				continue
			}
			if stackHas(s, "_PyEval_EvalFrameDefault") {
				loops += s.Value[0]
			}
			z, caller := -1, -1
			for i, l := range s.Location {
				if l.Mapping != nil && strings.Contains(filepath.Base(l.Mapping.File), "libz.so") {
					z = i
				}
				if len(l.Line) > 0 && l.Line[0].Function.Name == "compress.fid_compress" && caller < 0 {
					caller = i
				}
			}
			if z >= 0 {
				inZlib += s.Value[0]
				if caller > z {
					withCaller += s.Value[0]
				}
			}
		}
		total := samplesWhere(p, pidIs(compress.Process.Pid))
		t.Logf("%d of %d samples in libz, %d of them below compress.fid_compress; %d with an interpreter loop frame\n%s",
			inZlib, total, withCaller, loops, pidStacks(p, compress.Process.Pid, 1))
		if inZlib < 30 || float64(withCaller) < 0.95*float64(inZlib) {
			t.Errorf("compress.fid_compress above libz's frames in %d of %d samples, want at least 95%%", withCaller, inZlib)
		}
		if float64(loops) > 0.02*float64(total) {
			t.Errorf("%d of %d samples keep a _PyEval_EvalFrameDefault frame: the loop's frames should be replaced", loops, total)
		}
	})

	t.Run("unsupported version", func(t *testing.T) {
		// Profiled natively (the interpreter loop, no Python frame),
		// counted, logged once for the binary.
		for _, pid := range old {
			total := samplesWhere(p, pidIs(pid))
			native := samplesWhere(p, func(s *profile.Sample) bool { return pidIs(pid)(s) && stackHas(s, "_PyEval_EvalFrameDefault") })
			named := samplesWhere(p, func(s *profile.Sample) bool { return pidIs(pid)(s) && stackHas(s, "chain.fid_leaf") })
			t.Logf("pid %d: %d samples, %d in the interpreter loop, %d naming Python functions", pid, total, native, named)
			if total < 30 || float64(native) < 0.9*float64(total) || named > 0 {
				t.Errorf("pid %d: %d samples, %d in the interpreter loop, %d naming Python functions: want native stacks", pid, total, native, named)
			}
		}
		body, _ := httpGet(t, d.url("/metrics"))
		if n := metricValue(t, body, `cgscope_interpreter_processes_total{result="unsupported_version",runtime="cpython"}`); n < 2 {
			t.Errorf("cgscope_interpreter_processes_total unsupported_version = %v, want at least 2", n)
		}
		// Only the lines of this binary: the daemon sees the whole host.
		lines := regexp.MustCompile(`(?m)^.*interpreter version not supported.*object=`+regexp.QuoteMeta(unsupported)+`( .*)?$`).FindAllString(d.stderr.String(), -1)
		if len(lines) != 1 || !strings.Contains(lines[0], "3.10") {
			t.Errorf("want one log line naming %s and 3.10, got %q", unsupported, lines)
		}
		if n := metricValue(t, body, `cgscope_interpreter_processes_total{result="profiled",runtime="cpython"}`); n < 4 {
			t.Errorf("cgscope_interpreter_processes_total profiled = %v, want at least 4", n)
		}
	})

	t.Run("OTLP", func(t *testing.T) {
		typed, untyped := r.interpretedFrames(before.Process.Pid, "chain.fid_leaf", "cpython")
		t.Logf("OTLP: chain.fid_leaf in %d locations with profile.frame.type=cpython, %d without", typed, untyped)
		if typed == 0 || untyped > 0 {
			t.Errorf("chain.fid_leaf: %d locations with profile.frame.type=cpython, %d without", typed, untyped)
		}
	})
}

// interpretedFrames counts the locations of fn in the samples of pid's
// received profiles with and without profile.frame.type=frameType.
func (r *otlpReceiver) interpretedFrames(pid int, fn, frameType string) (typed, untyped int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, pd := range r.profiles {
		d := pd.Dictionary()
		str := func(i int32) string { return d.StringTable().At(int(i)) }
		for i := 0; i < pd.ResourceProfiles().Len(); i++ {
			rp := pd.ResourceProfiles().At(i)
			if v, ok := rp.Resource().Attributes().Get("process.pid"); !ok || v.Int() != int64(pid) {
				continue
			}
			seen := map[int32]bool{}
			profs := rp.ScopeProfiles().At(0).Profiles()
			for j := 0; j < profs.Len(); j++ {
				samples := profs.At(j).Samples()
				for k := 0; k < samples.Len(); k++ {
					locs := d.StackTable().At(int(samples.At(k).StackIndex())).LocationIndices()
					for m := 0; m < locs.Len(); m++ {
						li := locs.At(m)
						if seen[li] {
							continue
						}
						seen[li] = true
						typed, untyped = countTyped(d, li, fn, frameType, str, typed, untyped)
					}
				}
			}
		}
	}
	return typed, untyped
}

func countTyped(d pprofile.ProfilesDictionary, li int32, fn, frameType string, str func(int32) string, typed, untyped int) (int, int) {
	l := d.LocationTable().At(int(li))
	if l.Lines().Len() == 0 || str(d.FunctionTable().At(int(l.Lines().At(0).FunctionIndex())).NameStrindex()) != fn {
		return typed, untyped
	}
	for a := 0; a < l.AttributeIndices().Len(); a++ {
		kv := d.AttributeTable().At(int(l.AttributeIndices().At(a)))
		if str(kv.KeyStrindex()) == "profile.frame.type" && kv.Value().Str() == frameType {
			return typed + 1, untyped
		}
	}
	return typed, untyped + 1
}

// metricValue is a sample's value in a Prometheus text exposition.
func metricValue(t *testing.T, body []byte, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Errorf("no %s in /metrics", series)
	return 0
}

// fakeVersionPython copies Debian's python3.11 with its Py_Version (the
// version the process reports, PY_VERSION_HEX; the interpreter itself
// never reads it) changed to 3.10.15: a version cgscope has no layout
// for, on a real interpreter.
func fakeVersionPython(t *testing.T) string {
	t.Helper()
	f, err := elf.Open(debianPython)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.DynamicSymbols()
	if err != nil {
		t.Fatal(err)
	}
	var off int64 = -1
	for _, s := range syms {
		if s.Name != "Py_Version" {
			continue
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_LOAD && s.Value >= p.Vaddr && s.Value+8 <= p.Vaddr+p.Filesz {
				off = int64(s.Value - p.Vaddr + p.Off)
			}
		}
	}
	if off < 0 {
		t.Fatalf("%s: no Py_Version in a loaded segment", debianPython)
	}
	data, err := os.ReadFile(debianPython)
	if err != nil {
		t.Fatal(err)
	}
	if v := binary.LittleEndian.Uint64(data[off:]); v>>16 != 0x030b {
		t.Fatalf("%s: Py_Version %#x, want 3.11", debianPython, v)
	}
	binary.LittleEndian.PutUint64(data[off:], 0x030a0ff0)
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	path := filepath.Join(dir, "python3.11") // a name cgscope takes for CPython
	if err := os.WriteFile(path, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// pidStacks is topStacks of pid's samples.
func pidStacks(p *profile.Profile, pid, n int) string {
	q := &profile.Profile{SampleType: p.SampleType}
	for _, s := range p.Sample {
		if pidIs(pid)(s) {
			q.Sample = append(q.Sample, s)
		}
	}
	return topStacks(q, n)
}

// containedPython runs the script, as a container would, in PID and mount
// namespaces of its own, by a python3.11 on a tmpfs mounted only there:
// its binary is reachable only through /proc/PID/root, and its thread ids
// are not the host's. It returns the host's pid of the python.
func containedPython(t *testing.T, script string) int {
	t.Helper()
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	sh := fmt.Sprintf("mount -t tmpfs cgscope-e2e %[1]s && cp %[2]s %[1]s/python3.11 && PYTHONHOME=/usr exec %[1]s/python3.11 %[3]s 60", dir, debianPython, script)
	w := workload(t, "unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc", "sh", "-c", sh)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", w.Process.Pid, w.Process.Pid))
		for _, f := range strings.Fields(string(b)) {
			pid, _ := strconv.Atoi(f)
			if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); exe == dir+"/python3.11" {
				if _, err := os.Stat(exe); err == nil {
					t.Fatalf("%s is visible outside the namespace", exe)
				}
				return pid
			}
		}
	}
	t.Fatal("the contained python did not start")
	return 0
}

// waitInterpreters waits until the daemon walks the interpreters of at
// least walked processes and has refused unsupported ones.
func waitInterpreters(t *testing.T, d *daemon, walked, unsupported int) {
	t.Helper()
	start := time.Now()
	var w, u float64
	for time.Since(start) < 30*time.Second {
		body, _ := httpGet(t, d.url("/metrics"))
		w = metricValue(t, body, `cgscope_interpreter_processes{runtime="cpython"}`)
		u = metricValue(t, body, `cgscope_interpreter_processes_total{result="unsupported_version",runtime="cpython"}`)
		if w >= float64(walked) && u >= float64(unsupported) {
			t.Logf("%v walked and %v unsupported interpreters after %v", w, u, time.Since(start).Round(time.Millisecond))
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	body, _ := httpGet(t, d.url("/metrics"))
	t.Fatalf("after 30s, %v interpreters walked (want %d) and %v unsupported (want %d)\n%s\n%s", w, walked, u, unsupported,
		regexp.MustCompile(`(?m)^cgscope_interpreter.*$`).FindAllString(string(body), -1), d.stderr)
}
