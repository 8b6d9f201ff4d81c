package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/pprof/profile"
)

// Native code built without frame pointers, as users build it: whole
// stacks come from the unwind tables cgscope compiles from .eh_frame, and
// are checked against perf --call-graph dwarf on the same window.

// pythonSpin keeps Debian's python3 (debianPython: stripped, without frame
// pointers) on the CPU for 30 s.
const pythonSpin = "import time\nend = time.time() + 30\nx = 0\nwhile time.time() < end:\n    x = (x * 31 + 7) % 1000003"

// chain is the call chain the native workloads run, innermost first.
var chain = []string{"fid_leaf", "fid_middle", "fid_outer"}

var (
	nativeOnce sync.Once
	nativeDir  string
	nativeErr  error
)

// nativeWorkloads builds the C, C++, Rust and cgo workloads once.
func nativeWorkloads(t *testing.T) string {
	t.Helper()
	nativeOnce.Do(func() {
		nativeDir, nativeErr = os.MkdirTemp("", "cgscope-native-")
		if nativeErr != nil {
			return
		}
		os.Chmod(nativeDir, 0o755)
		src := "./testdata/native"
		steps := [][]string{
			{"gcc", "-O2", "-fomit-frame-pointer", "-o", filepath.Join(nativeDir, "chain"), src + "/chain.c"},
			{"g++", "-O2", "-fomit-frame-pointer", "-o", filepath.Join(nativeDir, "sortchain"), src + "/sortchain.cpp"},
			// Debian's rustc, by path: a rustup one may come first on PATH.
			{"/usr/bin/rustc", "-O", "-o", filepath.Join(nativeDir, "rustchain"), src + "/chain.rs"},
		}
		for _, s := range steps {
			if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
				nativeErr = fmt.Errorf("%s: %v\n%s", strings.Join(s, " "), err, out)
				return
			}
		}
		cmd := exec.Command("go", "build", "-o", filepath.Join(nativeDir, "cgochain"), ".")
		cmd.Dir = src + "/cgochain"
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			nativeErr = fmt.Errorf("go build cgochain: %v\n%s", err, out)
		}
	})
	if nativeErr != nil {
		t.Fatal(nativeErr)
	}
	return nativeDir
}

// holdsChain reports whether the stack holds the chain's functions, in
// order from the leaf, followed by an outer frame named outer.
func holdsChain(frames []string, outer string) bool {
	return holdsInOrder(frames, append(slices.Clone(chain), outer)...)
}

// holdsInOrder reports whether the stack holds functions named want, in
// order from the leaf (a C++ template's or a Rust path's name matches by
// its base name).
func holdsInOrder(frames []string, want ...string) bool {
	i := 0
	for _, f := range frames {
		if i < len(want) && (f == want[i] || strings.HasPrefix(f, want[i]+"<") || strings.HasSuffix(f, "::"+want[i])) {
			i++
		}
	}
	return i == len(want)
}

// sampleFrames lists a sample's function names, innermost first, inlined
// calls included.
func sampleFrames(s *profile.Sample) []string {
	var out []string
	for _, l := range s.Location {
		for _, ln := range l.Line {
			out = append(out, ln.Function.Name)
		}
		if len(l.Line) == 0 {
			out = append(out, "")
		}
	}
	return out
}

// chainShare is the share of pid's samples whose stack holds the chain up
// to outer.
func chainShare(p *profile.Profile, pid int, outer string) (share float64, total int64) {
	whole := samplesWhere(p, func(s *profile.Sample) bool { return pidIs(pid)(s) && holdsChain(sampleFrames(s), outer) })
	total = samplesWhere(p, pidIs(pid))
	if total == 0 {
		return 0, 0
	}
	return float64(whole) / float64(total), total
}

// perfDwarf records pid with perf's DWARF unwinding for d and returns the
// share of its samples holding the chain up to outer. perf copies 32 KiB of
// stack per sample, enough for every frame of these workloads.
func perfDwarf(t *testing.T, pid int, d time.Duration, outer string) (share float64, samples int) {
	t.Helper()
	data := filepath.Join(t.TempDir(), "perf.data")
	rec := exec.Command("perf", "record", "-q", "-F", "99", "-e", "cpu-clock", "--call-graph", "dwarf,32768",
		"-p", fmt.Sprint(pid), "-o", data, "--", "sleep", fmt.Sprint(d.Seconds()))
	if out, err := rec.CombinedOutput(); err != nil {
		t.Fatalf("perf record: %v\n%s", err, out)
	}
	out, err := exec.Command("perf", "script", "-i", data, "-F", "ip,sym", "--demangle").Output()
	if err != nil {
		t.Fatalf("perf script: %v", err)
	}
	var whole int
	for _, block := range bytes.Split(out, []byte("\n\n")) {
		var frames []string
		sc := bufio.NewScanner(bytes.NewReader(block))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) >= 2 {
				name := strings.Join(f[1:], " ")
				name, _, _ = strings.Cut(name, "(") // C++ parameter lists
				name, _, _ = strings.Cut(name, "+0x")
				frames = append(frames, strings.TrimSpace(name))
			}
		}
		if len(frames) == 0 {
			continue
		}
		samples++
		if holdsChain(frames, outer) {
			whole++
		}
	}
	if samples == 0 {
		t.Fatal("perf recorded no sample")
	}
	return float64(whole) / float64(samples), samples
}

// compareWithPerf captures pid with cgscope while perf records it with DWARF
// unwinding, over the same window.
func compareWithPerf(t *testing.T, d *daemon, pid int, outer string) (cg, ref float64) {
	t.Helper()
	var (
		p    *profile.Profile
		wg   sync.WaitGroup
		refN int
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		p = d.capture(t, fmt.Sprintf("seconds=6&pid=%d", pid))
	}()
	time.Sleep(500 * time.Millisecond)
	ref, refN = perfDwarf(t, pid, 5*time.Second, outer)
	wg.Wait()
	cg, total := chainShare(p, pid, outer)
	t.Logf("chain up to %s: cgscope %.1f%% of %d samples, perf --call-graph dwarf %.1f%% of %d\n%s",
		outer, cg*100, total, ref*100, refN, topStacks(p, 4))
	return cg, ref
}

// topStacks prints the most frequent stacks, for failure messages.
func topStacks(p *profile.Profile, n int) string {
	type st struct {
		s string
		v int64
	}
	var all []st
	for _, s := range p.Sample {
		all = append(all, st{strings.Join(sampleFrames(s), " < "), s.Value[0]})
	}
	slices.SortFunc(all, func(a, b st) int { return int(b.v - a.v) })
	var sb strings.Builder
	for i := 0; i < n && i < len(all); i++ {
		fmt.Fprintf(&sb, "  %5d %s\n", all[i].v, all[i].s)
	}
	return sb.String()
}

// C, C++ and Rust built without frame pointers: leaf, chain and main in
// at least 95% of the samples, and within 5 points of perf's DWARF
// unwinding of the same window.
func TestNativeChainsWithoutFramePointers(t *testing.T) {
	dir := nativeWorkloads(t)
	for _, c := range []struct{ bin, outer string }{
		{"chain", "main"},
		{"sortchain", "main"},
		{"rustchain", "chain::main"},
	} {
		t.Run(c.bin, func(t *testing.T) {
			d := sharedCgscope(t)
			w := workload(t, filepath.Join(dir, c.bin), "30")
			time.Sleep(time.Second) // its tables load on its first sample
			cg, ref := compareWithPerf(t, d, w.Process.Pid, c.outer)
			if cg < 0.95 {
				t.Errorf("cgscope: chain up to %s in %.1f%% of samples, want at least 95%%", c.outer, cg*100)
			}
			if diff := cg - ref; diff < -0.05 || diff > 0.05 {
				t.Errorf("cgscope %.1f%% and perf --call-graph dwarf %.1f%% differ by more than 5 points", cg*100, ref*100)
			}
		})
	}
}

// With every object's table compiled on demand (--unwind.on-demand-bytes=1B,
// not the default 1 MiB), the walker asks for the tables of the code it
// meets: the C chain's, whose frames need one. Once it is in, the stacks
// are whole, within 5 points of perf's DWARF unwinding of the same window;
// objects whose code no sample met stay uncompiled.
func TestNativeTablesOnDemand(t *testing.T) {
	dir := nativeWorkloads(t)
	d := startCgscope(t, t.Cleanup, fmt.Sprintf("--profiling.frequency=%d", testFrequency), "--profiling.interval=2s",
		"--unwind.on-demand-bytes=1B")
	w := workload(t, filepath.Join(dir, "chain"), "30")
	time.Sleep(time.Second) // its first samples ask for its table
	cg, ref := compareWithPerf(t, d, w.Process.Pid, "main")
	body, _ := httpGet(t, d.url("/metrics"))
	wanted := metricValue(t, body, "cgscope_unwind_tables_wanted_total")
	waiting := metricValue(t, body, "cgscope_unwind_objects_on_demand")
	t.Logf("tables compiled on demand: %v; objects still waiting: %v", wanted, waiting)
	if cg < 0.95 {
		t.Errorf("cgscope: chain up to main in %.1f%% of samples, want at least 95%%; the daemon's unwind metrics:\n%s",
			cg*100, d.metricLines(t, "cgscope_unwind_"))
	}
	if diff := cg - ref; diff < -0.05 || diff > 0.05 {
		t.Errorf("cgscope %.1f%% and perf --call-graph dwarf %.1f%% differ by more than 5 points", cg*100, ref*100)
	}
	if wanted < 1 {
		t.Errorf("the walker asked for no table, though the chain's frames need its own")
	}
	if waiting < 1 {
		t.Errorf("no object waits for its code to run: every table was compiled, on demand or not")
	}
}

// Debian's python3 is stripped and has no frame pointers: its native
// stacks reach the interpreter's entry (Py_BytesMain, called by main) and
// the process's first frame (_start).
func TestNativePythonReachesMain(t *testing.T) {
	if _, err := os.Stat(debianPython); err != nil {
		t.Fatalf("%s missing (make test installs python3.11): %v", debianPython, err)
	}
	d := sharedCgscope(t)
	w := workload(t, debianPython, "-c", pythonSpin)
	time.Sleep(time.Second)
	p := d.capture(t, fmt.Sprintf("seconds=4&pid=%d", w.Process.Pid))
	whole := samplesWhere(p, func(s *profile.Sample) bool {
		f := sampleFrames(s)
		return slices.Contains(f, "Py_BytesMain") && len(f) > 0 && f[len(f)-1] == "_start"
	})
	total := samplesWhere(p, pidIs(w.Process.Pid))
	t.Logf("python3: %d of %d samples reach Py_BytesMain and _start\n%s", whole, total, topStacks(p, 3))
	if total == 0 || float64(whole) < 0.9*float64(total) {
		t.Errorf("only %d of %d samples of python3 have whole native stacks; the daemon's unwind metrics:\n%s",
			whole, total, d.metricLines(t, "cgscope_unwind_"))
	}
}

// A compiler whose library has a table as large as most of the budget
// (rustc's librustc_driver, 14 MB) runs for a second: the processes
// already walked keep their tables (libc's above all), so their stacks
// stay whole after it.
func TestNativeTablesOutliveALargeCompile(t *testing.T) {
	d := sharedCgscope(t)
	w := workload(t, debianPython, "-c", pythonSpin)
	time.Sleep(time.Second)
	out := filepath.Join(t.TempDir(), "chain")
	if b, err := exec.Command("/usr/bin/rustc", "-O", "-o", out, "./testdata/native/chain.rs").CombinedOutput(); err != nil {
		t.Fatalf("rustc: %v\n%s", err, b)
	}
	time.Sleep(time.Second) // the compiler's tables are compiled after its samples
	p := d.capture(t, fmt.Sprintf("seconds=3&pid=%d", w.Process.Pid))
	whole := samplesWhere(p, func(s *profile.Sample) bool {
		f := sampleFrames(s)
		return len(f) > 0 && f[len(f)-1] == "_start"
	})
	total := samplesWhere(p, pidIs(w.Process.Pid))
	t.Logf("python3 after rustc: %d of %d samples reach _start\n%s", whole, total, topStacks(p, 3))
	if total == 0 || float64(whole) < 0.9*float64(total) {
		t.Errorf("only %d of %d samples of python3 reach _start after a large compile; the daemon's unwind metrics:\n%s",
			whole, total, d.metricLines(t, "cgscope_unwind_"))
	}
}

// Go calling C through cgo, the C without frame pointers: Go frames above,
// C frames below, in one stack.
func TestNativeCgo(t *testing.T) {
	dir := nativeWorkloads(t)
	d := sharedCgscope(t)
	w := workload(t, filepath.Join(dir, "cgochain"), "30")
	time.Sleep(time.Second)
	p := d.capture(t, fmt.Sprintf("seconds=4&pid=%d", w.Process.Pid))
	whole := samplesWhere(p, func(s *profile.Sample) bool {
		f := sampleFrames(s)
		return holdsChain(f, "main.callC") && slices.Contains(f, "main.main")
	})
	total := samplesWhere(p, pidIs(w.Process.Pid))
	t.Logf("cgo: %d of %d samples hold the C chain under main.callC and main.main\n%s", whole, total, topStacks(p, 3))
	if total == 0 || float64(whole) < 0.9*float64(total) {
		t.Errorf("only %d of %d cgo samples are whole; the daemon's unwind metrics:\n%s", whole, total, d.metricLines(t, "cgscope_unwind_"))
	}
}

// A library mapped after the process was first sampled (dlopen, or the
// dynamic loader still running at the first sample): its frames between
// leaves in the program and main are walked by its table once the walker
// meets one of its pcs, not only a leaf in it.
func TestNativeLibraryMappedLater(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	bin, lib := filepath.Join(dir, "latelib"), filepath.Join(dir, "liblate.so")
	for _, argv := range [][]string{
		{"gcc", "-O2", "-fomit-frame-pointer", "-shared", "-fPIC", "-o", lib, "./testdata/native/liblate.c"},
		{"gcc", "-O2", "-fomit-frame-pointer", "-o", bin, "./testdata/native/latelib.c", "-ldl"},
	} {
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
		}
	}
	d := sharedCgscope(t)
	w := workload(t, bin, lib, "30")
	time.Sleep(2 * time.Second) // 0.5 s before the dlopen, then the refresh
	p := d.capture(t, fmt.Sprintf("seconds=3&pid=%d", w.Process.Pid))
	want := []string{"late_leaf", "late_callback", "late_loop", "main"}
	whole := samplesWhere(p, func(s *profile.Sample) bool { return holdsInOrder(sampleFrames(s), want...) })
	total := samplesWhere(p, pidIs(w.Process.Pid))
	t.Logf("library mapped later: %d of %d samples hold %s\n%s", whole, total, strings.Join(want, " < "), topStacks(p, 3))
	if total < 50 || float64(whole) < 0.9*float64(total) {
		t.Errorf("only %d of %d samples walk through the library mapped later; the daemon's unwind metrics:\n%s",
			whole, total, d.metricLines(t, "cgscope_unwind_"))
	}
}

// A process forked without an exec (a shell's subshell) takes its parent's
// mappings snapshot instead of a read of /proc: its frames are named by
// the parent's objects and walked by their tables to the shell's _start.
// Its notice wakes nobody: until it is read the walker uses the parent's
// tables, so the stacks are whole from the fork on. The capture spans the
// fork.
func TestForkedProcessSharesParentSnapshot(t *testing.T) {
	d := sharedCgscope(t)
	body, _ := httpGet(t, d.url("/metrics"))
	before := metricValue(t, body, "cgscope_symbolizer_fork_snapshots_total")
	parentTablesBefore := metricValue(t, body, "cgscope_user_stacks_parent_tables_total")
	// The shell spins for two seconds (it is sampled, so its snapshot is
	// read and its tables loaded), then forks a subshell that spins
	// without an exec.
	script := `end=$((SECONDS+2)); while ((SECONDS<end)); do :; done; (while :; do :; done) & echo $!; wait`
	cmd := exec.Command("/bin/bash", "-c", script)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pids := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		pids <- line
	}()
	var child int
	t.Cleanup(func() {
		if child > 0 {
			syscall.Kill(child, syscall.SIGKILL)
		}
		cmd.Process.Kill()
		cmd.Wait()
	})
	time.Sleep(time.Second)
	p := d.capture(t, "seconds=4") // the fork is a second into it
	line := <-pids
	if child, err = strconv.Atoi(strings.TrimSpace(line)); err != nil {
		t.Fatalf("subshell pid %q: %v", line, err)
	}
	whole := samplesWhere(p, func(s *profile.Sample) bool {
		f := sampleFrames(s)
		return pidIs(child)(s) && len(f) > 0 && f[len(f)-1] == "_start" && slices.Contains(f, "__libc_start_main")
	})
	total := samplesWhere(p, pidIs(child))
	body, _ = httpGet(t, d.url("/metrics"))
	after := metricValue(t, body, "cgscope_symbolizer_fork_snapshots_total")
	parentTables := metricValue(t, body, "cgscope_user_stacks_parent_tables_total") - parentTablesBefore
	t.Logf("forked subshell: %d of %d samples reach _start; fork snapshots %v -> %v; %v stacks walked by the parent's tables\n%s",
		whole, total, before, after, parentTables, topStacks(p, 3))
	if after <= before {
		t.Errorf("the subshell's snapshot was not its parent's: cgscope_symbolizer_fork_snapshots_total stayed %v", after)
	}
	// Its first sample at least is taken before its notice can be read.
	if parentTables < 1 {
		t.Errorf("no stack was walked by the parent's tables: cgscope_user_stacks_parent_tables_total grew by %v", parentTables)
	}
	if total < 50 || float64(whole) < 0.9*float64(total) {
		t.Errorf("only %d of %d samples of the forked subshell reach _start; the daemon's unwind metrics:\n%s",
			whole, total, d.metricLines(t, "cgscope_unwind_"))
	}
}

// A C workload burning its CPU in a signal handler: the stack continues
// through the signal frame into the interrupted code, up to main.
func TestNativeSignalFrame(t *testing.T) {
	dir := nativeWorkloads(t)
	d := sharedCgscope(t)
	w := workload(t, filepath.Join(dir, "chain"), "30", "signal")
	time.Sleep(time.Second)
	p := d.capture(t, fmt.Sprintf("seconds=4&pid=%d", w.Process.Pid))
	inHandler := samplesWhere(p, func(s *profile.Sample) bool { return holdsChain(sampleFrames(s), "on_signal") })
	through := samplesWhere(p, func(s *profile.Sample) bool {
		f := sampleFrames(s)
		return holdsChain(f, "on_signal") && slices.Contains(f, "spin_in_main") && slices.Contains(f, "main")
	})
	t.Logf("signal: %d samples in the handler's chain, %d of them continue to spin_in_main and main\n%s", inHandler, through, topStacks(p, 3))
	if inHandler < 20 || float64(through) < 0.9*float64(inHandler) {
		t.Errorf("stacks do not continue through the signal frame: %d of %d; the daemon's unwind metrics:\n%s",
			through, inHandler, d.metricLines(t, "cgscope_unwind_"))
	}
}

// Processes that live 200 ms, each a binary never seen before (so its table
// is compiled while it runs): whole stacks in at least 80% of their samples.
func TestNativeShortLivedProcesses(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	var bins []string
	for i := range 6 {
		bin := filepath.Join(dir, fmt.Sprintf("short%d", i))
		// A different constant per binary: a different build ID, so no table is shared.
		out, err := exec.Command("gcc", "-O2", "-fomit-frame-pointer", fmt.Sprintf("-DVARIANT=%d", i), "-o", bin, "./testdata/native/chain.c").CombinedOutput()
		if err != nil {
			t.Fatalf("gcc: %v\n%s", err, out)
		}
		bins = append(bins, bin)
	}
	d := sharedCgscope(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(500 * time.Millisecond)
		for _, bin := range bins {
			exec.Command(bin, "0.2").Run()
		}
	}()
	p := d.capture(t, "seconds=4")
	<-done
	short := regexp.MustCompile(`^short\d$`)
	isShort := func(s *profile.Sample) bool {
		return len(s.Label["comm"]) == 1 && short.MatchString(s.Label["comm"][0])
	}
	total := samplesWhere(p, isShort)
	whole := samplesWhere(p, func(s *profile.Sample) bool { return isShort(s) && holdsChain(sampleFrames(s), "main") })
	t.Logf("short-lived: %d of %d samples whole\n%s", whole, total, topStacks(p, 3))
	if total < 50 {
		t.Fatalf("only %d samples of the short-lived processes", total)
	}
	if float64(whole) < 0.8*float64(total) {
		t.Errorf("short-lived processes: %d of %d samples whole, want 80%%", whole, total)
	}
}
