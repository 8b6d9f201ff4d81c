package main

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cgscope/cgscope/internal/bench/benchutil"
)

// nativeSrc holds the native test workloads, relative to the repository.
const nativeSrc = "internal/e2e/testdata/native"

// profilingOnly turns every per-cgroup collector off: the sampler alone.
var profilingOnly = []string{"--no-collector.sched", "--no-collector.faults", "--no-collector.oom",
	"--no-collector.network", "--no-collector.tcp", "--no-collector.cgroupfs"}

// workload is one process to keep busy during a cgscope run; its argv ends
// with the seconds it runs for, appended at start.
type workload struct {
	name string
	argv []string
}

// spec is one cgscope run: its extra flags and the workloads it samples.
type spec struct {
	name   string
	args   []string
	loads  []workload
	tables bool // unwind tables on: wait for them to load before the window
}

// runResult is what one cgscope run measured. err is set when the run
// could not be measured; the rest is then partial.
type runResult struct {
	spec      spec
	err       error
	m0, m1    benchutil.Metrics // scrapes at the window's start and end
	loadCPU   time.Duration     // the workloads' CPU time during the window
	settled   time.Duration     // workloads' start to the window's start
	unstable  bool              // the table gauges still changed when the window began
	hwm       int64             // cgscope's VmHWM at the window's end, bytes
	maps      []bpfMap          // cgscope's BPF maps at the window's end
	host      string            // how busy the host was before the run
	quiet     bool              // it was idle
	attempts  int               // runs of this spec; the quietest is kept
	cleanTerm bool              // cgscope exited on SIGTERM
}

func (r *runResult) window() time.Duration { return r.m1.At.Sub(r.m0.At) }

// delta is how much a series grew during the window.
func (r *runResult) delta(series string) float64 { return r.m1.Get(series) - r.m0.Get(series) }

func (r *runResult) deltaSum(name string) float64 { return r.m1.Sum(name) - r.m0.Sum(name) }

const (
	sampleRuns    = `cgscope_bpf_program_runs_total{program="sample_cpu"}`
	sampleSeconds = `cgscope_bpf_program_run_seconds_total{program="sample_cpu"}`
	userFrames    = "cgscope_user_frames_total"
	userStacks    = "cgscope_user_stacks_total"
	// The stacks of processes without tables, walked by the kernel: the
	// walker counts no frames for them.
	kernelWalked = `cgscope_user_stacks_total{end="frame_pointers"}`
	complete     = `cgscope_user_stacks_total{end="complete"}`
)

// bpfPerSample is sample_cpu's mean run time in the window, in
// microseconds (NaN if it did not run).
func (r *runResult) bpfPerSample() float64 {
	if runs := r.delta(sampleRuns); runs > 0 {
		return r.delta(sampleSeconds) / runs * 1e6
	}
	return math.NaN()
}

// walked is the number of user stacks the BPF walker walked in the window.
func (r *runResult) walked() float64 { return r.deltaSum(userStacks) - r.delta(kernelWalked) }

// framesPerStack is user frames per stack walked by the BPF walker.
func (r *runResult) framesPerStack() float64 {
	if w := r.walked(); w > 0 {
		return r.deltaSum(userFrames) / w
	}
	return math.NaN()
}

// mapBytes sums the memlock of cgscope's maps whose name starts with prefix.
func (r *runResult) mapBytes(prefix string) (bytes int64, n int) {
	for _, m := range r.maps {
		if strings.HasPrefix(m.Name, prefix) {
			bytes += m.Memlock
			n++
		}
	}
	return bytes, n
}

// compileResult is the libLLVM table compile benchmark.
type compileResult struct {
	err      error
	line     string  // the benchmark's result line
	iters    int     // iterations in that line
	wallOp   float64 // ns/op as the benchmark reports it
	rows     string  // rows metric, as reported
	cpuOp    time.Duration
	cpuBase  time.Duration // user+sys of the run that benchmarks nothing
	cpuBench time.Duration
}

func run(opt options) error {
	res := &result{started: time.Now().UTC(), opt: opt, loadBefore: benchutil.Loadavg()}
	tmp, err := benchutil.Prepare("cgscope-native-bench-")
	if err != nil {
		return err
	}
	res.version = benchutil.Version(opt.Cgscope, opt.Repo)

	logf("building the workloads in %s", tmp)
	bin, err := buildWorkloads(opt.Repo, tmp)
	if err != nil {
		return err
	}
	chain := workload{"chain", []string{bin["chain"]}}
	// The walker and the kernel's frame-pointer walk sample the same
	// workloads in the same window, each in its own cgscope: their ratio
	// holds on a host whose speed drifts between runs (this VM's BPF
	// timings do, by up to 2x in an hour).
	pair := measureBest(opt, tmp,
		spec{name: "tables", args: profilingOnly, tables: true, loads: []workload{chain, chain}},
		spec{name: "frame-pointers", args: append(append([]string{}, profilingOnly...), "--no-unwind.tables")})
	res.cost, res.fp = pair[0], pair[1]
	res.memory = measureBest(opt, tmp, spec{name: "defaults", tables: true, loads: []workload{
		chain,
		{"sortchain", []string{bin["sortchain"]}},
		{"rustchain", []string{bin["rustchain"]}},
		{"python3.11", []string{"/usr/bin/python3.11", "-c", pythonLoop}},
	}})[0]
	res.compile = compileBench(opt, tmp)
	res.finished = time.Now().UTC()
	res.loadAfter = benchutil.Loadavg()

	if err := benchutil.WriteReport(opt.Out, sectionTitle, res.markdown()); err != nil {
		return err
	}
	if opt.Out != "" {
		logf("wrote the results into %s", opt.Out)
		fmt.Fprint(os.Stderr, res.targetLines())
	}
	// A target not met is a result; a measurement that failed is an error.
	var errs []error
	for _, e := range []error{res.cost.err, res.fp.err, res.memory.err, res.compile.err} {
		if e != nil {
			errs = append(errs, e)
		}
	}
	return errors.Join(errs...)
}

// pythonLoop is a CPU loop in the interpreter that ends on its own after
// the seconds given as its first argument.
const pythonLoop = "import sys, time\nend = time.time() + float(sys.argv[1])\nx = 0\nwhile time.time() < end:\n    x = (x * 31 + 7) % 1000003"

// buildWorkloads compiles the native workloads as the end-to-end tests do
// (optimized, without frame pointers) into dir.
func buildWorkloads(repo, dir string) (map[string]string, error) {
	src := filepath.Join(repo, nativeSrc)
	bin := map[string]string{
		"chain":     filepath.Join(dir, "chain"),
		"sortchain": filepath.Join(dir, "sortchain"),
		"rustchain": filepath.Join(dir, "rustchain"),
	}
	for _, argv := range [][]string{
		{"gcc", "-O2", "-fomit-frame-pointer", "-o", bin["chain"], filepath.Join(src, "chain.c")},
		{"g++", "-O2", "-fomit-frame-pointer", "-o", bin["sortchain"], filepath.Join(src, "sortchain.cpp")},
		{"/usr/bin/rustc", "-O", "-o", bin["rustchain"], filepath.Join(src, "chain.rs")},
	} {
		if _, _, err := benchutil.RunShort(5*time.Minute, dir, argv...); err != nil {
			return nil, fmt.Errorf("building the workloads: %w", err)
		}
	}
	return bin, nil
}

// measureBest measures specs together (see measure), and again, up to
// opt.retries times, while other work on the host crowded out the
// workloads (it would also put its own samples into the figures); the
// run whose workloads got the most CPU is kept. A run that failed is
// reported, not retried.
func measureBest(opt options, tmp string, specs ...spec) []*runResult {
	best := measure(opt, tmp, specs)
	last := best
	for n := 1; n <= opt.retries && failed(best) == nil && best[0].share() < noisyShare; n++ {
		logf("%s: other work took %.1f%% of the workloads' CPUs: measuring again (%d of at most %d more)",
			specs[0].name, 100*(1-last[0].share()), n, opt.retries)
		last = measure(opt, tmp, specs)
		if failed(last) == nil && last[0].share() > best[0].share() {
			best = last
		}
		for _, r := range best {
			r.attempts = n + 1
		}
	}
	for _, r := range best {
		r.attempts = max(r.attempts, 1)
	}
	return best
}

// failed returns the first error of a measurement's runs.
func failed(rs []*runResult) error {
	for _, r := range rs {
		if r.err != nil {
			return r.err
		}
	}
	return nil
}

// maxSettle bounds the wait for the table gauges to stop changing.
const maxSettle = 30 * time.Second

// measure starts one cgscope per spec at 99 Hz with its flags, then the
// first spec's workloads, which all of them sample; once the tables have
// loaded, it scrapes each /metrics at the start and end of the window and
// reads each cgscope's peak RSS and BPF maps at the end. Everything it
// started is stopped before it returns.
func measure(opt options, tmp string, specs []spec) []*runResult {
	rs := make([]*runResult, len(specs))
	agents := make([]*agentRun, len(specs))
	host, quiet := waitQuiet(opt.quiet)
	loads := specs[0].loads
	for i, s := range specs {
		s.loads = loads // the share of their CPUs is of the same workloads
		rs[i] = &runResult{spec: s, host: host, quiet: quiet}
	}
	fail := func(err error) []*runResult {
		for _, r := range rs {
			if r.err == nil {
				r.err = err
			}
		}
		return rs
	}
	defer func() {
		for i, a := range agents {
			if a != nil {
				a.stop(rs[i])
			}
		}
	}()
	for i, s := range specs {
		logf("=== cgscope %s: %d workloads, %v window", s.name, len(loads), opt.window)
		a, err := startAgent(opt, tmp, s)
		if err != nil {
			return fail(err)
		}
		agents[i] = a
	}

	// The workloads end on their own a minute after the window should have,
	// should this process die without killing them.
	secs := strconv.Itoa(int((opt.settle + maxSettle + opt.window + time.Minute).Seconds()))
	var children []*benchutil.Child
	defer func() {
		for _, c := range children {
			c.Stop(syscall.SIGKILL, 5*time.Second)
		}
	}()
	started := time.Now()
	for i, w := range loads {
		c, err := benchutil.Start(w.name, filepath.Join(tmp, fmt.Sprintf("%s-%s-%d.log", specs[0].name, w.name, i)), append(slices.Clone(w.argv), secs)...)
		if err != nil {
			return fail(fmt.Errorf("%s: %w", specs[0].name, err))
		}
		children = append(children, c)
	}

	time.Sleep(opt.settle)
	for i, s := range specs {
		if s.tables {
			rs[i].unstable = waitTables(agents[i].port, agents[i].cg, maxSettle)
		}
	}
	for _, r := range rs {
		r.settled = time.Since(started)
	}

	cpu0, err := loadsCPU(children)
	for i := range rs {
		if err == nil {
			rs[i].m0, err = benchutil.Scrape(agents[i].port)
		}
	}
	if err != nil {
		return fail(fmt.Errorf("%s: at the window's start: %w", specs[0].name, err))
	}
	time.Sleep(opt.window)
	cpu1, err := loadsCPU(children)
	if err != nil {
		return fail(fmt.Errorf("%s: at the window's end: %w", specs[0].name, err))
	}
	for i, r := range rs {
		r.loadCPU = cpu1 - cpu0
		agents[i].finish(r)
	}
	return rs
}

// agentRun is one cgscope of a measurement.
type agentRun struct {
	cg   *benchutil.Child
	port int
}

// startAgent starts cgscope with s's flags and waits until it is healthy.
func startAgent(opt options, tmp string, s spec) (*agentRun, error) {
	port, err := benchutil.FreePort()
	if err != nil {
		return nil, fmt.Errorf("%s: no free port: %w", s.name, err)
	}
	argv := append([]string{opt.Cgscope, fmt.Sprintf("--web.listen-address=127.0.0.1:%d", port),
		fmt.Sprintf("--profiling.frequency=%d", hz)}, s.args...)
	cg, err := benchutil.Start("cgscope", filepath.Join(tmp, "cgscope-"+s.name+".log"), argv...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.name, err)
	}
	a := &agentRun{cg: cg, port: port}
	if _, err := benchutil.WaitHealthy(cg, port, 30*time.Second); err != nil {
		a.stop(&runResult{})
		return nil, fmt.Errorf("%s: %w", s.name, err)
	}
	return a, nil
}

// finish reads the window's end into r: a scrape, the peak RSS and the
// BPF maps.
func (a *agentRun) finish(r *runResult) {
	var err error
	r.m1, err = benchutil.Scrape(a.port)
	if err == nil {
		r.hwm, err = benchutil.StatusBytes(a.cg.PID(), "VmHWM")
	}
	if err == nil {
		r.maps, err = heldMaps(a.cg.PID())
	}
	if err != nil {
		if a.cg.Exited() {
			err = fmt.Errorf("cgscope exited: %v: %s", a.cg.WaitErr, a.cg.LogTail(3))
		}
		r.err = fmt.Errorf("%s: at the window's end: %w", r.spec.name, err)
		return
	}
	if !r.m1.Has(sampleRuns) || r.delta(sampleRuns) <= 0 {
		r.err = fmt.Errorf("%s: sample_cpu shows no runs in /metrics: cgscope could not turn bpf_stats on "+
			"(see its log: %s)", r.spec.name, a.cg.LogTail(3))
		return
	}
	logf("%s: sample_cpu %.0f runs, %.2f µs each; %.2f frames per walked stack; workloads got %s of their CPUs",
		r.spec.name, r.delta(sampleRuns), r.bpfPerSample(), r.framesPerStack(), r.loadShare())
}

// stop ends cgscope with SIGTERM and records whether it exited cleanly.
func (a *agentRun) stop(r *runResult) {
	r.cleanTerm = a.cg.Stop(syscall.SIGTERM, 30*time.Second)
	if !r.cleanTerm && r.err == nil {
		r.err = fmt.Errorf("%s: cgscope did not exit cleanly on SIGTERM: %v: %s", r.spec.name, a.cg.WaitErr, a.cg.LogTail(3))
	}
}

// waitTables waits until cgscope's table gauges are the same in two
// scrapes a second apart, at most limit. It reports whether they still
// changed at the end.
func waitTables(port int, cg *benchutil.Child, limit time.Duration) (unstable bool) {
	gauges := []string{"cgscope_unwind_tables", "cgscope_unwind_table_rows", "cgscope_unwind_processes"}
	var last []float64
	for deadline := time.Now().Add(limit); time.Now().Before(deadline) && !cg.Exited(); time.Sleep(time.Second) {
		m, err := benchutil.Scrape(port)
		if err != nil {
			continue
		}
		now := make([]float64, len(gauges))
		for i, g := range gauges {
			now[i] = m.Get(g)
		}
		if last != nil && now[0] > 0 && fmt.Sprint(now) == fmt.Sprint(last) {
			return false
		}
		last = now
	}
	logf("the unwind table gauges still changed after %v: measuring anyway", limit)
	return true
}

// loadsCPU sums the workloads' CPU time; an error if one has exited.
func loadsCPU(loads []*benchutil.Child) (time.Duration, error) {
	var sum time.Duration
	for _, c := range loads {
		if c.Exited() {
			return 0, fmt.Errorf("workload %s exited early: %v: %s", c.Name, c.WaitErr, c.LogTail(3))
		}
		d, err := benchutil.ThreadsCPU(c.PID())
		if err != nil {
			return 0, fmt.Errorf("workload %s: %w", c.Name, err)
		}
		sum += d
	}
	return sum, nil
}

// compileBench runs BenchmarkCompileLibLLVM from a test binary, and a run
// of the same binary that benchmarks nothing: the difference of their
// rusage (user+sys) over the iterations is the CPU of one compile, the GC
// included, without the binary's start-up. The benchmark uses b.Loop, so
// with -benchtime Nx the compile runs exactly N times.
func compileBench(opt options, tmp string) compileResult {
	logf("=== compiling libLLVM's unwind table (BenchmarkCompileLibLLVM)")
	var c compileResult
	testBin := filepath.Join(tmp, "unwind.test")
	if _, _, err := benchutil.RunShort(10*time.Minute, opt.Repo, "go", "test", "-c", "-o", testBin, "./unwind"); err != nil {
		c.err = fmt.Errorf("building the unwind test binary: %w", err)
		return c
	}
	pkgDir := filepath.Join(opt.Repo, "unwind") // go test runs a test binary in its package's directory
	_, base, err := benchutil.RunShort(5*time.Minute, pkgDir, testBin, "-test.run", "^$", "-test.bench", "^BenchmarkNothingMatchesThis$")
	if err != nil {
		c.err = fmt.Errorf("baseline run of the unwind test binary: %w", err)
		return c
	}
	out, bench, err := benchutil.RunShort(10*time.Minute, pkgDir, testBin, "-test.run", "^$",
		"-test.bench", "^BenchmarkCompileLibLLVM$", "-test.benchtime", "5x")
	if err != nil {
		c.err = fmt.Errorf("BenchmarkCompileLibLLVM: %w", err)
		return c
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "BenchmarkCompileLibLLVM") && strings.Contains(line, "ns/op") {
			c.line = strings.Join(strings.Fields(line), " ")
		}
	}
	f := strings.Fields(c.line)
	if len(f) < 4 {
		c.err = fmt.Errorf("BenchmarkCompileLibLLVM printed no result (skipped?): %s", benchutil.LastLines(out, 4))
		return c
	}
	c.iters, _ = strconv.Atoi(f[1])
	for i := 2; i+1 < len(f); i++ {
		switch f[i+1] {
		case "ns/op":
			c.wallOp, _ = strconv.ParseFloat(f[i], 64)
		case "rows":
			c.rows = f[i]
		}
	}
	if c.iters <= 0 || c.wallOp <= 0 {
		c.err = fmt.Errorf("cannot read the iterations and ns/op of %q", c.line)
		return c
	}
	cpu := func(ru *syscall.Rusage) time.Duration { return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()) }
	c.cpuBase, c.cpuBench = cpu(base), cpu(bench)
	c.cpuOp = max(c.cpuBench-c.cpuBase, 0) / time.Duration(c.iters)
	logf("libLLVM: %.0f ms/op wall, %.0f ms/op CPU", c.wallOp/1e6, float64(c.cpuOp)/1e6)
	return c
}
