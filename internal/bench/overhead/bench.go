package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cgscope/cgscope/internal/bench/benchutil"
)

// toolResult is one tool's cost during one frequency run.
type toolResult struct {
	name   string
	failed bool     // did not run for the window: no figures are reported
	errs   []string // why a figure is missing; shown in the table
	note   []string // context shown under the table

	haveUsage bool
	usage     benchutil.Usage

	haveBPF   bool
	bpf       time.Duration // run time of all the tool's BPF programs during bpfWall
	bpfWall   time.Duration
	bpfRuns   float64                  // runs of the sampling program
	sampleBPF time.Duration            // run time of the sampling program alone (cgscope)
	bpfByProg map[string]time.Duration // cgscope's programs by name

	haveSteady bool
	steadyCPU  time.Duration // user+sys during the measured window
	steadyWall time.Duration

	// The window's last two thirds, once what the tools started with has
	// been sampled, drained and symbolized (cgscope drains every 10 s).
	haveLate bool
	lateCPU  time.Duration
	lateWall time.Duration

	// Where the whole-life user+sys went: start-up (exec to the first
	// healthy /healthz; cgscope only), and shutdown (the stop signal to the
	// exit). Zero when not measured.
	startCPU, stopCPU time.Duration

	samples float64 // cgscope_samples_total during the window (cgscope only)
}

// abort records that the tool did not run through the window.
func (t *toolResult) abort(format string, args ...any) {
	t.failed = true
	t.fail(format, args...)
}

func (t *toolResult) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	t.errs = append(t.errs, msg)
	logf("%s: %s", t.name, msg)
}

func (t *toolResult) cpuPct() float64 {
	if !t.haveUsage || t.usage.Wall <= 0 {
		return 0
	}
	return 100 * (t.usage.User + t.usage.Sys).Seconds() / t.usage.Wall.Seconds()
}

func (t *toolResult) bpfPct() float64 {
	if !t.haveBPF || t.bpfWall <= 0 {
		return 0
	}
	return 100 * t.bpf.Seconds() / t.bpfWall.Seconds()
}

// totalPct is user+sys over the process's life plus its BPF run time rate.
func (t *toolResult) totalPct() float64 { return t.cpuPct() + t.bpfPct() }

func (t *toolResult) steadyPct() float64 {
	if !t.haveSteady || t.steadyWall <= 0 {
		return 0
	}
	return 100 * t.steadyCPU.Seconds() / t.steadyWall.Seconds()
}

func (t *toolResult) latePct() float64 {
	if !t.haveLate || t.lateWall <= 0 {
		return 0
	}
	return 100 * t.lateCPU.Seconds() / t.lateWall.Seconds()
}

// freqResult is one side-by-side run at one frequency.
type freqResult struct {
	hz     int
	window time.Duration
	// loadShare is the share of their CPUs the workloads got during the
	// window: the rest went to the tools (also in-kernel) and to anything
	// else running on the host.
	loadShare float64
	loadavg   string // /proc/loadavg at the end of the window
	attempts  int    // runs at this frequency; the quietest is kept
	variant   string // "" for cgscope as it starts by default, else what is different
	cgscope   *toolResult
	perf      *toolResult
	bpftrace  *toolResult
}

func (f *freqResult) tools() []*toolResult { return []*toolResult{f.cgscope, f.perf, f.bpftrace} }

// readyRun is one exec-to-healthy timing of cgscope.
type readyRun struct {
	ready  time.Duration
	cpu    time.Duration // user+sys of the whole short life (mostly start-up)
	maxRSS int64
	err    string
}

// report is everything the Markdown report is written from.
type report struct {
	started   time.Time
	finished  time.Time
	command   string
	machine   machineInfo
	freqs     []*freqResult
	ready     []readyRun
	benchOut  string // symbolizer benchmark lines, or empty
	benchErr  string // why the symbolizer benchmark is not available
	workload  string
	readyLoad string // /proc/loadavg before the start-up runs
	quiet     string // how idle the host was before the workloads started
	warnings  []string
	sysctlOld string
}

func run(opt options) error {
	rep := &report{started: time.Now().UTC(), command: opt.commandRun}
	// Two benchmarks at once would disturb each other's figures and fight
	// over the sysctl: the lock is taken first.
	tmp, err := benchutil.Prepare("cgscope-bench-")
	if err != nil {
		return err
	}
	logf("temporary files in %s", tmp)

	rep.machine = readMachine(opt.Cgscope)
	if b, err := os.ReadFile(bpfStatsSysctl); err == nil {
		rep.sysctlOld = strings.TrimSpace(string(b))
	}
	initialProgs, err := bpfProgs()
	if err != nil {
		return fmt.Errorf("bpftool is needed to read BPF run time: %w", err)
	}
	rep.quiet = waitQuiet(opt.quietWait)

	logf("building the workload")
	workload := filepath.Join(tmp, "gosplit")
	if _, err := output(5*time.Minute, opt.Repo, "go", "build", "-o", workload, "./internal/e2e/testdata/gosplit"); err != nil {
		return fmt.Errorf("building the workload: %w", err)
	}
	rep.workload = "2 × `internal/e2e/testdata/gosplit` (one goroutine each burning CPU), started before and stopped after all overhead and start-up runs"

	var loads []*benchutil.Child
	for i := 0; i < 2; i++ {
		c, err := benchutil.Start(fmt.Sprintf("workload-%d", i), filepath.Join(tmp, fmt.Sprintf("workload-%d.log", i)),
			workload, "-duration", "24h")
		if err != nil {
			return err
		}
		loads = append(loads, c)
	}
	stopLoads := func() {
		for _, c := range loads {
			c.Stop(syscall.SIGKILL, 5*time.Second)
		}
	}
	defer stopLoads()
	time.Sleep(time.Second) // let both reach their busy loops
	checkLoads := func(phase string) {
		for _, c := range loads {
			if c.Exited() {
				rep.warnings = append(rep.warnings, fmt.Sprintf("workload %s had exited during %s: %v", c.Name, phase, c.WaitErr))
			}
		}
	}

	if err := enableBPFStats(); err != nil {
		return err
	}
	runs := make([]variantRun, 0, 2*len(opt.freqs))
	for _, hz := range opt.freqs {
		runs = append(runs, variantRun{hz: hz})
	}
	// perf and bpftrace only profile; cgscope by default also runs the
	// per-cgroup collectors, whose programs fire on every context switch of
	// the host. The like-for-like comparison, at every frequency, runs
	// cgscope profiling only.
	for _, hz := range opt.freqs {
		runs = append(runs, variantRun{hz: hz, variant: "profiling only", args: profilingOnlyArgs})
	}
	for _, v := range runs {
		logf("=== %d Hz: cgscope%s, perf and bpftrace side by side for %v", v.hz, v.suffix(), opt.duration)
		best := runFrequency(opt, v, tmp, loads)
		attempts := 1
		for ; attempts <= opt.retries && best.loadShare < noisyShare && !loadsDead(loads); attempts++ {
			logf("%d Hz: other work took %.1f%% of the workloads' CPUs: running it again (%d of at most %d more)",
				v.hz, 100*(1-best.loadShare), attempts, opt.retries)
			if fr := runFrequency(opt, v, tmp, loads); fr.loadShare > best.loadShare || best.cgscope.failed {
				best = fr
			}
		}
		best.attempts = attempts
		rep.freqs = append(rep.freqs, best)
		checkLoads(fmt.Sprintf("the %d Hz%s run", v.hz, v.suffix()))
	}
	restoreBPFStats()

	logf("=== cgscope ready-to-serve time, %d runs", opt.readyRuns)
	rep.readyLoad = benchutil.Loadavg()
	for i := 0; i < opt.readyRuns; i++ {
		r := timeReady(opt, tmp, i)
		if r.err != "" {
			logf("ready run %d: %s", i+1, r.err)
		} else {
			logf("ready run %d: %v (start-up CPU %v, peak RSS %.1f MiB)", i+1, r.ready.Round(time.Millisecond),
				r.cpu.Round(time.Millisecond), mib(r.maxRSS))
		}
		rep.ready = append(rep.ready, r)
	}
	checkLoads("the start-up runs")
	stopLoads()

	logf("=== symbolizer benchmark")
	rep.benchOut, rep.benchErr = symbolizerBench(opt)

	if finalProgs, err := bpfProgs(); err == nil {
		before := progIDs(initialProgs)
		held := heldProgIDs()
		others := 0
		for _, p := range finalProgs {
			switch {
			case before[p.ID]:
			case held[p.ID]:
				others++ // loaded meanwhile by a process that is still running
			default:
				rep.warnings = append(rep.warnings, fmt.Sprintf("BPF program %d (%s, %q) was loaded during the run and is "+
					"still loaded, held by no process, after every tool had exited (leaked?)", p.ID, p.Type, p.Name))
			}
		}
		if others > 0 {
			rep.warnings = append(rep.warnings, fmt.Sprintf("%d BPF programs were loaded during the run by other processes "+
				"that are still running (another cgscope or test?): the host was not quiet", others))
		}
	}

	rep.finished = time.Now().UTC()
	if err := os.MkdirAll(filepath.Dir(opt.Out), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(opt.Out, []byte(rep.markdown()), 0o644); err != nil {
		return err
	}
	logf("wrote %s", opt.Out)
	fmt.Print(rep.summary())
	for _, f := range rep.freqs {
		if len(f.cgscope.errs) > 0 {
			return fmt.Errorf("cgscope failed at %d Hz: %s", f.hz, strings.Join(f.cgscope.errs, "; "))
		}
	}
	return nil
}

// variantRun is one side-by-side run to make: a frequency, and how cgscope
// is started beyond its defaults.
type variantRun struct {
	hz      int
	variant string   // "" for the defaults
	args    []string // extra cgscope flags
}

func (v variantRun) suffix() string {
	if v.variant == "" {
		return ""
	}
	return " (" + v.variant + ")"
}

// profilingOnlyArgs turn every per-cgroup collector off.
var profilingOnlyArgs = []string{"--no-collector.sched", "--no-collector.faults", "--no-collector.oom",
	"--no-collector.network", "--no-collector.tcp", "--no-collector.cgroupfs"}

// runFrequency runs cgscope, perf and bpftrace at v.hz side by side.
func runFrequency(opt options, v variantRun, tmp string, loads []*benchutil.Child) *freqResult {
	hz := v.hz
	fr := &freqResult{
		hz:       hz,
		variant:  v.variant,
		cgscope:  &toolResult{name: "cgscope" + v.suffix()},
		perf:     &toolResult{name: "perf"},
		bpftrace: &toolResult{name: "bpftrace"},
	}
	hzs := strconv.Itoa(hz)

	// cgscope first, so that its programs are in the snapshot taken before
	// bpftrace starts.
	var cg *benchutil.Child
	var cgPort int
	var m0 cgMetrics
	cgOK := false
	if port, err := benchutil.FreePort(); err != nil {
		fr.cgscope.abort("no free port: %v", err)
	} else if c, err := benchutil.Start("cgscope", filepath.Join(tmp, "cgscope-"+hzs+strings.ReplaceAll(v.variant, " ", "-")+".log"),
		append([]string{opt.Cgscope, fmt.Sprintf("--web.listen-address=127.0.0.1:%d", port), "--profiling.frequency=" + hzs}, v.args...)...); err != nil {
		fr.cgscope.abort("%v", err)
	} else {
		cg, cgPort = c, port
		if _, err := benchutil.WaitHealthy(cg, cgPort, 30*time.Second); err != nil {
			fr.cgscope.abort("%v", err)
		} else if fr.cgscope.startCPU, _, err = benchutil.ProcCPU(cg.PID()); err != nil {
			fr.cgscope.abort("CPU time at start-up: %v", err)
		} else if m0, err = scrape(cgPort); err != nil {
			fr.cgscope.abort("first /metrics scrape: %v", err)
		} else {
			cgOK = true
		}
	}

	before, err := bpfProgs()
	if err != nil {
		fr.bpftrace.abort("bpftool before start: %v", err)
	}
	beforeIDs := progIDs(before)

	perfData := filepath.Join(tmp, "perf-"+hzs+".data")
	pf, err := benchutil.Start("perf", filepath.Join(tmp, "perf-"+hzs+".log"),
		"perf", "record", "-e", "cpu-clock", "-F", hzs, "-a", "-g", "-o", perfData)
	if err != nil {
		fr.perf.abort("%v", err)
	}
	btOut := filepath.Join(tmp, "bpftrace-"+hzs+".out")
	bt, err := benchutil.Start("bpftrace", btOut,
		"bpftrace", "-e", fmt.Sprintf("profile:hz:%d { @[ustack, kstack] = count(); }", hz))
	if err != nil {
		fr.bpftrace.abort("%v", err)
	}

	// Wait (bounded) until bpftrace's program is loaded, so the measured
	// window has all three tools sampling.
	var btProgIDs map[int]bool
	if bt != nil && before != nil {
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) && !bt.Exited() {
			if now, err := bpfProgs(); err == nil {
				if ps := newPerfEventProgs(beforeIDs, now); len(ps) > 0 {
					btProgIDs = progIDs(ps)
					names := make([]string, 0, len(ps))
					for _, p := range ps {
						names = append(names, fmt.Sprintf("%d %q", p.ID, p.Name))
					}
					sort.Strings(names)
					fr.bpftrace.note = append(fr.bpftrace.note, "its perf_event programs: "+strings.Join(names, ", "))
					break
				}
			}
			time.Sleep(200 * time.Millisecond)
		}
		if btProgIDs == nil {
			if bt.Exited() {
				fr.bpftrace.abort("exited early: %v: %s", bt.WaitErr, bt.LogTail(3))
			} else {
				fr.bpftrace.abort("no new perf_event BPF program appeared within 60 s")
			}
		}
	}
	if pf != nil {
		time.Sleep(500 * time.Millisecond)
		if pf.Exited() {
			fr.perf.abort("exited early: %v: %s", pf.WaitErr, pf.LogTail(3))
		}
	}

	// The measured window.
	live := map[*toolResult]*benchutil.Child{fr.cgscope: cg, fr.perf: pf, fr.bpftrace: bt}
	cpu0 := map[*toolResult]time.Duration{}
	cpuSrc := map[*toolResult]string{}
	winStart := time.Now()
	load0, load0OK := workloadCPU(loads)
	for t, c := range live {
		if c != nil && !c.Exited() {
			if d, src, err := benchutil.ProcCPU(c.PID()); err == nil {
				cpu0[t], cpuSrc[t] = d, src
			}
		}
	}
	time.Sleep(opt.duration / 3)
	lateStart := time.Now()
	late0 := map[*toolResult]time.Duration{}
	for t, c := range live {
		if _, ok := cpu0[t]; ok && !c.Exited() {
			if d, src, err := benchutil.ProcCPU(c.PID()); err == nil && src == cpuSrc[t] {
				late0[t] = d
			}
		}
	}
	time.Sleep(time.Until(winStart.Add(opt.duration)))
	winEnd := time.Now()
	fr.window = winEnd.Sub(winStart)
	if load1, ok := workloadCPU(loads); ok && load0OK {
		fr.loadShare = (load1 - load0).Seconds() / (float64(len(loads)) * fr.window.Seconds())
		logf("%d Hz: workloads ran %.2f s of CPU in the %.1f s window (%.1f%% of their CPUs)",
			hz, (load1 - load0).Seconds(), fr.window.Seconds(), 100*fr.loadShare)
	}
	fr.loadavg = benchutil.Loadavg()
	for t, c := range live {
		d0, ok := cpu0[t]
		if !ok || c == nil || c.Exited() {
			continue
		}
		if d1, src, err := benchutil.ProcCPU(c.PID()); err == nil && src == cpuSrc[t] {
			t.haveSteady, t.steadyCPU, t.steadyWall = true, max(d1-d0, 0), winEnd.Sub(winStart)
			if l0, ok := late0[t]; ok {
				t.haveLate, t.lateCPU, t.lateWall = true, max(d1-l0, 0), winEnd.Sub(lateStart)
			}
			if src != "schedstat" {
				t.note = append(t.note, "steady figure from /proc/PID/stat (10 ms ticks)")
			}
		}
	}

	// Just before stopping: cgscope's /metrics and bpftrace's bpf_stats.
	if cgOK && !cg.Exited() {
		if m1, err := scrape(cgPort); err != nil {
			fr.cgscope.fail("last /metrics scrape: %v", err)
		} else {
			t := fr.cgscope
			t.haveBPF = true
			t.bpfWall = m1.at.Sub(m0.at)
			t.bpfByProg = map[string]time.Duration{}
			for prog, v1 := range m1.progSeconds {
				d := time.Duration((v1 - m0.progSeconds[prog]) * 1e9)
				t.bpf += d
				t.bpfByProg[prog] = d
			}
			t.sampleBPF = t.bpfByProg[sampleProg]
			t.bpfRuns = m1.progRuns[sampleProg] - m0.progRuns[sampleProg]
			t.samples = m1.samples - m0.samples
			t.note = append(t.note, fmt.Sprintf("at the last scrape: %.1f MiB resident, %.0f ELF objects and %.0f processes cached by the symbolizer",
				mib(int64(m1.other["process_resident_memory_bytes"])), m1.other["cgscope_symbolizer_cached_objects"],
				m1.other["cgscope_symbolizer_cached_processes"]))
		}
	} else if cgOK {
		fr.cgscope.abort("exited during the run: %v: %s", cg.WaitErr, cg.LogTail(3))
	}
	if btProgIDs != nil && !bt.Exited() {
		if now, err := bpfProgs(); err != nil {
			fr.bpftrace.fail("bpftool at the end: %v", err)
		} else {
			t := fr.bpftrace
			var ns, runs uint64
			seen := 0
			for _, p := range now {
				if btProgIDs[p.ID] {
					ns += p.RunTimeNs
					runs += p.RunCnt
					seen++
				}
			}
			if seen == 0 {
				t.fail("its BPF programs disappeared before the end of the run")
			} else {
				// The programs were loaded after bpf_stats was enabled, so
				// their counters cover their whole life.
				t.haveBPF, t.bpf, t.bpfWall, t.bpfRuns = true, time.Duration(ns), time.Since(bt.Started), float64(runs)
			}
		}
	} else if btProgIDs != nil {
		fr.bpftrace.abort("exited during the run: %v: %s", bt.WaitErr, bt.LogTail(3))
	}

	// Stop: cgscope with SIGTERM, perf and bpftrace with SIGINT (they flush
	// perf.data and print the map at exit, which is part of their cost).
	stops := []struct {
		t   *toolResult
		c   *benchutil.Child
		sig syscall.Signal
	}{{fr.cgscope, cg, syscall.SIGTERM}, {fr.perf, pf, syscall.SIGINT}, {fr.bpftrace, bt, syscall.SIGINT}}
	for _, s := range stops {
		if s.c == nil {
			continue
		}
		wasRunning := !s.c.Exited()
		var beforeStop time.Duration
		haveBefore := false
		if wasRunning {
			if d, _, err := benchutil.ProcCPU(s.c.PID()); err == nil {
				beforeStop, haveBefore = d, true
			}
		}
		clean := s.c.Stop(s.sig, 60*time.Second)
		if wasRunning && !clean {
			s.t.fail("did not exit on %v within 60 s; killed", s.sig)
		}
		u, err := s.c.Usage()
		if err != nil {
			s.t.fail("rusage: %v", err)
			continue
		}
		s.t.haveUsage, s.t.usage = true, u
		if haveBefore && clean {
			s.t.stopCPU = max(u.User+u.Sys-beforeStop, 0)
		}
		if wasRunning && clean && !s.c.Cmd.ProcessState.Success() && !diedOf(s.c, s.sig) {
			s.t.note = append(s.t.note, fmt.Sprintf("exit status after %v: %v", s.sig, s.c.Cmd.ProcessState))
		}
	}
	if st, err := os.Stat(perfData); err == nil {
		fr.perf.note = append(fr.perf.note, fmt.Sprintf("perf.data: %.1f MiB", mib(st.Size())))
	}
	if st, err := os.Stat(btOut); err == nil && bt != nil && !fr.bpftrace.failed {
		fr.bpftrace.note = append(fr.bpftrace.note, fmt.Sprintf("map printed at exit: %.1f KiB", float64(st.Size())/1024))
	}
	for _, t := range fr.tools() {
		if t.haveUsage {
			logf("%d Hz %s: user+sys %.3f s over %.1f s (%.3f%%), BPF %.3f%%, total %.3f%%, peak RSS %.1f MiB",
				hz, t.name, (t.usage.User + t.usage.Sys).Seconds(), t.usage.Wall.Seconds(), t.cpuPct(),
				t.bpfPct(), t.totalPct(), mib(t.usage.MaxRSS))
		}
	}
	return fr
}

// timeReady times one cgscope start from exec to the first 200 on /healthz.
func timeReady(opt options, tmp string, i int) readyRun {
	port, err := benchutil.FreePort()
	if err != nil {
		return readyRun{err: err.Error()}
	}
	c, err := benchutil.Start("cgscope", filepath.Join(tmp, fmt.Sprintf("ready-%d.log", i)), opt.Cgscope,
		fmt.Sprintf("--web.listen-address=127.0.0.1:%d", port))
	if err != nil {
		return readyRun{err: err.Error()}
	}
	ready, err := benchutil.WaitHealthy(c, port, 30*time.Second)
	var r readyRun
	if err != nil {
		r.err = err.Error()
	} else {
		r.ready = ready.Sub(c.Started)
	}
	if !c.Stop(syscall.SIGTERM, 30*time.Second) && r.err == "" {
		r.err = "did not exit on SIGTERM within 30 s"
	}
	if u, err := c.Usage(); err == nil {
		r.cpu, r.maxRSS = u.User+u.Sys, u.MaxRSS
	}
	return r
}

// symbolizerBench runs the symbolizer's benchmark; it returns the benchmark
// lines, or why they are not available.
func symbolizerBench(opt options) (string, string) {
	out, err := output(10*time.Minute, opt.Repo,
		"go", "test", "./symbolizer", "-run", "^$", "-bench", "BenchmarkSymbolize", "-benchtime", "3x")
	var keep []string
	found := false
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, "Benchmark") && strings.Contains(line, "ns/op"):
			found = true
			keep = append(keep, line)
		case strings.HasPrefix(line, "goos:"), strings.HasPrefix(line, "goarch:"),
			strings.HasPrefix(line, "pkg:"), strings.HasPrefix(line, "cpu:"):
			keep = append(keep, line)
		}
	}
	switch {
	case err != nil:
		logf("symbolizer benchmark not available: %v", err)
		return "", firstLine(err.Error())
	case !found:
		logf("symbolizer benchmark not available: no BenchmarkSymbolize results")
		return "", "`go test ./symbolizer -bench BenchmarkSymbolize` ran no benchmark (none defined yet?)"
	}
	return strings.Join(keep, "\n"), ""
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return strings.ReplaceAll(s, "\n", " / ")
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// diedOf reports whether the child was ended by sig itself (perf re-raises
// SIGINT after writing perf.data: that is a normal exit).
func diedOf(c *benchutil.Child, sig syscall.Signal) bool {
	ws, ok := c.Cmd.ProcessState.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == sig
}

// workloadCPU sums the workloads' CPU time; false if one has exited.
func workloadCPU(loads []*benchutil.Child) (time.Duration, bool) {
	var sum time.Duration
	for _, c := range loads {
		if c.Exited() {
			return 0, false
		}
		d, _, err := benchutil.ProcCPU(c.PID())
		if err != nil {
			return 0, false
		}
		sum += d
	}
	return sum, len(loads) > 0
}

// waitQuiet waits, at most maxWait, until the host is idle, and describes
// the outcome for the report.
func waitQuiet(maxWait time.Duration) string {
	busy, quiet, err := benchutil.WaitQuiet(maxWait)
	switch {
	case err != nil:
		return "unknown (" + err.Error() + ")"
	case quiet:
		return fmt.Sprintf("idle before the run (%.1f%% of all CPUs busy over 3 s)", 100*busy)
	}
	msg := fmt.Sprintf("**busy**: %.0f%% of all CPUs were in use by other work over 3 s before the run", 100*busy)
	if maxWait > 0 {
		msg += fmt.Sprintf(" (after waiting %v for it to become idle)", maxWait)
	}
	return msg
}

func loadsDead(loads []*benchutil.Child) bool {
	for _, c := range loads {
		if c.Exited() {
			return true
		}
	}
	return false
}
