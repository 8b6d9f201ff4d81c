package main

import (
	"fmt"
	"math"
	"runtime"
	"strings"
	"time"

	"github.com/cgscope/cgscope/internal/bench/benchutil"
)

// The targets of the issue, and the yardstick quoted next to the first.
const (
	targetBPFMicros = 10.0 // BPF per sample with unwinding, at the workload's depth
	otelBPFMicros   = 17.0 // the OpenTelemetry profiler on the same C workload, measured here
	// The kernel's frame-pointer walk of the same stacks when the target
	// was set (this file, 2026-12-06): the target is met when the walker
	// costs at most targetBPFMicros/kernelWalkMicros of the kernel's walk
	// in the same window, since this VM's BPF timings drift by up to 2x
	// between runs and the absolute figure with them.
	kernelWalkMicros = 17.5
	targetTableBytes = 16 << 20
	targetRSSBytes   = 48 << 20
	targetCompileMs  = 200.0

	// Below this share of their CPUs the workloads were crowded out by
	// other work: the run is flagged as noisy.
	noisyShare = 0.95
)

// sectionTitle heads the section this command writes into the report.
const sectionTitle = "## Native unwinding"

// result is everything the section is written from.
type result struct {
	opt                   options
	started, finished     time.Time
	loadBefore, loadAfter string
	version               string
	cost, fp, memory      *runResult
	compile               compileResult
}

func (r *result) markdown() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }

	w("\n%s\n\n", sectionTitle)
	w("`go run ./internal/bench/native -window %s` (`make bench` runs it through `scripts/bench.sh`), from %s to %s UTC on %d CPUs; "+
		"cgscope %s; load average %s before, %s after. "+
		"Each cgscope run samples at %d Hz; its window of %s starts once the workloads have run %s and the unwind "+
		"table gauges have stopped changing. Figures are differences of cgscope's `/metrics` between the window's ends "+
		"(BPF run times from the kernel's bpf_stats, which cgscope turns on for its life).\n\n",
		r.opt.window, r.started.Format("2006-01-02 15:04"), r.finished.Format("15:04"), runtime.NumCPU(),
		benchutil.MDEscape(r.version), r.loadBefore, r.loadAfter, hz, r.opt.window, r.opt.settle)

	w("### BPF cost per sample\n\n")
	w("Two `chain` (`%s/chain.c`, `gcc -O2 -fomit-frame-pointer`) keep both CPUs busy; two cgscope, each profiling only (`%s`), "+
		"one with its unwind tables, one with `--no-unwind.tables`, sample them in the same window, so that the ratio of their "+
		"costs holds however fast the host is that hour. "+
		"Per sample: `sample_cpu`'s run time over its runs. Frames: `cgscope_user_frames_total` (all methods) over the "+
		"user stacks the BPF walker walked (`cgscope_user_stacks_total` less `end=\"frame_pointers\"`, the stacks of "+
		"processes without tables, which the kernel walks and nobody counts frames of). Every process on the host is "+
		"sampled, so the figures also hold the few samples of other processes.\n\n",
		nativeSrc, strings.Join(profilingOnly, " "))
	w("| cgscope | `sample_cpu` runs | BPF per sample | of the kernel's walk | user frames per walked stack | walked stacks complete | stacks walked by the kernel | workloads' share of their CPUs | peak RSS |\n")
	w("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, row := range []struct {
		name string
		r    *runResult
	}{
		{"unwind tables (default)", r.cost},
		{"`--no-unwind.tables` (the kernel's frame-pointer walk)", r.fp},
	} {
		x := row.r
		if x.err != nil && len(x.m1.Series) == 0 {
			w("| %s | error: %s | | | | | | | |\n", row.name, benchutil.MDEscape(x.err.Error()))
			continue
		}
		stacks := x.deltaSum(userStacks)
		w("| %s | %.0f | **%s** | %s | %s | %s | %s | %s | %s |\n", row.name, x.delta(sampleRuns), micros(x.bpfPerSample()),
			ratio(x.bpfPerSample(), r.fp.bpfPerSample()), frames(x), pct(x.delta(complete), x.walked()), pct(x.delta(kernelWalked), stacks),
			x.loadShare(), mibOf(x.hwm))
	}
	w("\n")
	for _, x := range []*runResult{r.cost, r.fp} {
		r.notes(&b, x)
	}

	w("### Unwind table memory\n\n")
	m := r.memory
	w("Workloads at once: `chain` (C), `sortchain` (C++, `g++ -O2 -fomit-frame-pointer`), `rustchain` (`chain.rs`, " +
		"`/usr/bin/rustc -O`) and `/usr/bin/python3.11` running a CPU loop; cgscope with its defaults. Gauges, maps and " +
		"peak RSS at the window's end; map memory is the `memlock` `bpftool map show` gives for each BPF map cgscope " +
		"holds (a descriptor of its own, or used by one of its programs).\n\n")
	if m.err != nil && len(m.m1.Series) == 0 {
		w("Not measured: %s\n\n", benchutil.MDEscape(m.err.Error()))
	} else {
		walkerBytes, walkerMaps := m.mapBytes("unwind_")
		allBytes, allMaps := m.mapBytes("")
		w("| | |\n|---|---:|\n")
		w("| tables loaded (`cgscope_unwind_tables`) | %.0f |\n", m.m1.Get("cgscope_unwind_tables"))
		w("| their rows (`cgscope_unwind_table_rows`) | %.0f |\n", m.m1.Get("cgscope_unwind_table_rows"))
		w("| their kernel memory (`cgscope_unwind_table_kernel_bytes`) | %s |\n", mibOf(int64(m.m1.Get("cgscope_unwind_table_kernel_bytes"))))
		w("| processes the walker holds mappings of (`cgscope_unwind_processes`) | %.0f |\n", m.m1.Get("cgscope_unwind_processes"))
		w("| objects compiled, and their compile time, since start | %.0f, %.0f ms |\n",
			m.m1.Get("cgscope_unwind_objects_compiled_total"), 1000*m.m1.Get("cgscope_unwind_compile_seconds_total"))
		w("| tables evicted since start: for space, unused | %.0f, %.0f |\n",
			m.m1.Get(`cgscope_unwind_tables_evicted_total{reason="space"}`), m.m1.Get(`cgscope_unwind_tables_evicted_total{reason="unused"}`))
		w("| memlock of the walker's maps (`unwind_*`, %d maps) | **%s** |\n", walkerMaps, mibOf(walkerBytes))
		w("| memlock of all cgscope's BPF maps (%d maps) | %s |\n", allMaps, mibOf(allBytes))
		w("| agent peak RSS (`VmHWM`) | **%s** |\n", mibOf(m.hwm))
		w("| for reference: BPF per sample, user frames per walked stack, workloads' share of the CPUs | %s, %s, %s |\n",
			micros(m.bpfPerSample()), frames(m), m.loadShare())
		w("\n")
		w("Walker's maps: %s.\n\n", mapList(m, "unwind_"))
	}
	r.notes(&b, m)

	w("### Compiling libLLVM's table\n\n")
	c := r.compile
	w("`go test ./unwind -run '^$' -bench CompileLibLLVM -benchtime 5x` on `%s`, run as a test binary built by "+
		"`go test -c`; CPU is its user+sys (rusage) less that of a run of the same binary that benchmarks nothing, "+
		"over the iterations (Go's GC included, on all CPUs).\n\n", libLLVM)
	if c.err != nil {
		w("Not measured: %s\n\n", benchutil.MDEscape(c.err.Error()))
	} else {
		w("- `%s`\n", c.line)
		w("- **%.0f ms of CPU** per compile (wall %.0f ms; %d iterations: %s of user+sys, less %s for the binary alone), %s rows\n\n",
			ms(c.cpuOp), c.wallOp/1e6, c.iters, c.cpuBench.Round(time.Millisecond), c.cpuBase.Round(time.Millisecond), c.rows)
	}

	w("### Targets\n\n")
	for _, t := range r.targets() {
		w("- %s: %s: %s\n", t.what, t.measured, t.verdict())
	}
	w("\n")
	return b.String()
}

// notes writes what went wrong or was unusual in a run, under its table.
func (r *result) notes(b *strings.Builder, x *runResult) {
	if x.err != nil {
		fmt.Fprintf(b, "- cgscope %s: **%s**\n", x.spec.name, benchutil.MDEscape(x.err.Error()))
	}
	if x.attempts > 1 {
		fmt.Fprintf(b, "- cgscope %s: the quietest of %d runs (other work on the host disturbed the others)\n", x.spec.name, x.attempts)
	}
	if !x.quiet {
		fmt.Fprintf(b, "- cgscope %s: the host was **busy**: %s\n", x.spec.name, x.host)
	}
	if share := x.share(); share > 0 && share < noisyShare {
		fmt.Fprintf(b, "- cgscope %s: **noisy**: other work took %.1f%% of the workloads' CPUs during the window "+
			"(and its samples are in the figures)\n", x.spec.name, 100*(1-share))
	}
	if x.unstable {
		fmt.Fprintf(b, "- cgscope %s: the table gauges still changed %s after the workloads started: tables were loading during the window\n",
			x.spec.name, x.settled.Round(time.Second))
	}
	if x.err != nil || x.unstable || !x.quiet || x.attempts > 1 || (x.share() > 0 && x.share() < noisyShare) {
		b.WriteString("\n")
	}
}

type target struct {
	what, measured string
	met            bool
	measuredOK     bool
}

func (t target) verdict() string {
	switch {
	case !t.measuredOK:
		return "**not met** (not measured)"
	case t.met:
		return "met"
	default:
		return "**not met**"
	}
}

func (r *result) targets() []target {
	var ts []target
	c := r.cost
	t := target{what: fmt.Sprintf("BPF cost per sample with unwinding ≤ %.0f µs at the workload's depth "+
		"(the OpenTelemetry profiler measured %.0f µs for the same C workload), when the kernel's frame-pointer walk "+
		"of the same stacks took %.1f µs: ≤ %.2f × the kernel's walk in the same window", targetBPFMicros, otelBPFMicros,
		kernelWalkMicros, targetBPFMicros/kernelWalkMicros)}
	if us, fp := c.bpfPerSample(), r.fp.bpfPerSample(); !math.IsNaN(us) && !math.IsNaN(fp) && fp > 0 {
		t.measured = fmt.Sprintf("%s at %s user frames per stack, %s of the kernel's walk (`--no-unwind.tables`: %s; "+
			"%s at the walk's cost of the day the target was set)", micros(us), frames(c), ratio(us, fp), micros(fp),
			micros(us/fp*kernelWalkMicros))
		t.met, t.measuredOK = us/fp <= targetBPFMicros/kernelWalkMicros, true
	} else {
		t.measured = "no figure"
	}
	ts = append(ts, t)

	m := r.memory
	ok := len(m.maps) > 0 // read last: the run got through its window
	walker, _ := m.mapBytes("unwind_")
	t = target{what: fmt.Sprintf("all unwind tables of this host ≤ %s of BPF map memory", mibOf(targetTableBytes)), measuredOK: ok,
		met: walker <= targetTableBytes}
	t.measured = fmt.Sprintf("%s (memlock of the walker's `unwind_*` maps; `cgscope_unwind_table_kernel_bytes` %s)",
		mibOf(walker), mibOf(int64(m.m1.Get("cgscope_unwind_table_kernel_bytes"))))
	if ev := m.m1.Get(`cgscope_unwind_tables_evicted_total{reason="space"}`); ev > 0 {
		t.measured += fmt.Sprintf(", but only by evicting %.0f tables for space (`--unwind.max-table-bytes`)", ev)
		t.met = false
	}
	ts = append(ts, t)

	ts = append(ts, target{what: fmt.Sprintf("agent peak RSS ≤ %s with all native workloads", mibOf(targetRSSBytes)),
		measured: mibOf(m.hwm) + " (VmHWM)", met: m.hwm <= targetRSSBytes, measuredOK: m.hwm > 0})

	cp := r.compile
	ts = append(ts, target{what: fmt.Sprintf("compiling libLLVM-19's table ≤ %.0f ms of CPU", targetCompileMs),
		measured: fmt.Sprintf("%.0f ms (wall %.0f ms)", ms(cp.cpuOp), cp.wallOp/1e6), met: ms(cp.cpuOp) <= targetCompileMs,
		measuredOK: cp.err == nil})
	return ts
}

// targetLines is the targets in plain text, for the terminal.
func (r *result) targetLines() string {
	var b strings.Builder
	for _, t := range r.targets() {
		fmt.Fprintf(&b, "target: %s: %s: %s\n", t.what, t.measured, strings.ReplaceAll(t.verdict(), "*", ""))
	}
	return b.String()
}

// share is the share of their CPUs the workloads got in the window (0 if
// unknown): the rest went to cgscope, its sampling included, and to other
// work.
func (x *runResult) share() float64 {
	cpus := min(len(x.spec.loads), runtime.NumCPU())
	if x.window() <= 0 || cpus == 0 {
		return 0
	}
	return x.loadCPU.Seconds() / x.window().Seconds() / float64(cpus)
}

func (x *runResult) loadShare() string {
	if s := x.share(); s > 0 {
		return fmt.Sprintf("%.1f%%", 100*s)
	}
	return "—"
}

// frames formats the frames per walked stack and how they were found.
func frames(x *runResult) string {
	f := x.framesPerStack()
	if math.IsNaN(f) {
		return "— (none walked by BPF)"
	}
	w := x.walked()
	return fmt.Sprintf("%.2f (%.2f by table, %.2f by frame pointer)", f,
		x.delta(userFrames+`{method="table"}`)/w, x.delta(userFrames+`{method="frame_pointer"}`)/w)
}

// mapList names the maps whose name starts with prefix, with their memlock.
func mapList(x *runResult, prefix string) string {
	var s []string
	for _, m := range x.maps {
		if strings.HasPrefix(m.Name, prefix) {
			s = append(s, fmt.Sprintf("`%s` (%s) %s", m.Name, m.Type, kibOf(m.Memlock)))
		}
	}
	return strings.Join(s, ", ")
}

// ratio formats a as a multiple of b.
func ratio(a, b float64) string {
	if math.IsNaN(a) || math.IsNaN(b) || b <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func micros(us float64) string {
	if math.IsNaN(us) {
		return "—"
	}
	return fmt.Sprintf("%.2f µs", us)
}

func pct(part, whole float64) string {
	if whole <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.1f%%", 100*part/whole)
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func mibOf(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func kibOf(b int64) string { return fmt.Sprintf("%.0f KiB", float64(b)/(1<<10)) }
