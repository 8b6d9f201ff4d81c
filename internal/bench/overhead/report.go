package main

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Targets the report checks.
const (
	targetPct19Hz  = 0.3 // % of one core, user+sys+BPF, at 19 Hz
	targetRSSMiB   = 48
	targetReady    = time.Second
	targetFreqHz   = 19
	noisyShare     = 0.97 // below this share of their CPUs the workloads were crowded out by other work
	reportFileNote = "This file is overwritten by every run of the benchmark; it holds only the newest results. Figures measured once, behind design choices, are in [measurements.md](measurements.md)."
)

func (r *report) markdown() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }

	w("# cgscope overhead benchmark\n\n")
	w("%s\n\n", reportFileNote)
	w("- Date: %s (UTC), %s of measuring\n", r.started.Format("2006-01-02 15:04"), r.finished.Sub(r.started).Round(time.Second))
	w("- Command: `%s` (as root; `make bench` runs it through `scripts/bench.sh`)\n", r.command)
	w("- Machine: kernel %s, %d CPUs (`nproc`), %s, %s RAM\n", r.machine.kernel, r.machine.cpus, r.machine.cpuModel, r.machine.memory)
	if len(r.machine.tools) > 0 {
		w("- Tools: %s\n", strings.Join(r.machine.tools, "; "))
	}
	w("- Load: %s\n", r.workload)
	w("- Host before the run: %s\n\n", r.quiet)

	w("## Method\n\n")
	w("At each frequency cgscope (`--profiling.frequency=HZ`), `perf record -e cpu-clock -F HZ -a -g` and " +
		"`bpftrace -e 'profile:hz:HZ { @[ustack, kstack] = count(); }'` sample the same two busy CPUs at the same time. " +
		"cgscope starts first; the window of the stated length begins once bpftrace's program is loaded. " +
		"Each tool is then stopped (SIGTERM for cgscope, SIGINT for perf and bpftrace, which then write perf.data " +
		"or print and symbolize their map) and its user+sys CPU time and peak RSS are read from its rusage, so they " +
		"cover its whole life: start-up, the window and shutdown. " +
		"A sampler's in-kernel work runs in the sampling interrupt and the kernel charges it to the interrupted task, " +
		"not to the sampler, so user+sys alone misses it. For the two BPF tools the time spent in their BPF programs " +
		"is added, from the kernel's bpf_stats (`kernel.bpf_stats_enabled=1` for the run, then set back): cgscope's " +
		"from its own `cgscope_bpf_program_run_seconds_total`, summed over all its programs (the `sample_cpu` " +
		"sampler and any counter programs; difference between a scrape " +
		"just after it became healthy and one just before it was stopped), bpftrace's from `bpftool prog show` " +
		"(its perf_event programs, which are new since the snapshot before it started). " +
		"**perf's kernel-side cost (taking the sample and walking the stacks in the interrupt) is invisible to this " +
		"measure**: its figure below is only its user+sys (writing perf.data, resolving build ids at exit), so it is " +
		"not a fair yardstick and its real cost is higher. The perf-event interrupt overhead itself, common to all " +
		"three, is not counted for any tool. The \"window\" columns show the cost without start-up and shutdown: " +
		"the CPU time of the process's threads during the window only (sum of /proc/PID/task/*/schedstat, nanoseconds), " +
		"and that plus the BPF rate (the BPF rate is over the whole window in every column). \"Late window\" is the same for the window's last two thirds, once what started with " +
		"the tools (perf and bpftrace loading, their new processes and libraries) has been sampled and, by cgscope, drained " +
		"and symbolized (it drains every 10 s): the cost of keeping on, which a daemon that runs for hours pays most of " +
		"its life. It is reported beside the whole-life figures, never instead of them. " +
		"Percentages are of one CPU core.\n\n")

	for _, f := range r.freqs {
		w("## %d Hz%s (window %s)\n\n", f.hz, variantRun{variant: f.variant}.suffix(), f.window.Round(100*time.Millisecond))
		if f.variant == "profiling only" {
			w("cgscope with every per-cgroup collector off (`%s`): what it costs to do what perf and bpftrace do. "+
				"The defaults above also count every context switch, fault and packet of the host per cgroup.\n\n", strings.Join(profilingOnlyArgs, " "))
		}
		if f.attempts > 1 {
			w("Quietest of %d runs: the others were disturbed by other work on the host.\n\n", f.attempts)
		}
		w("| Tool | User+sys (s) | Life (s) | User+sys (%% core) | BPF (ms/s) | BPF (%% core) | **Total (%% core)** | Window CPU (%% core) | Window CPU+BPF (%% core) | Late window CPU+BPF (%% core) | Peak RSS (MiB) |\n")
		w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, t := range f.tools() {
			w("| %s |", t.name)
			if !t.haveUsage || t.failed {
				w(" error: %s | | | | | | | | | |\n", mdEscape(strings.Join(t.errs, "; ")))
				continue
			}
			w(" %.3f | %.1f | %.3f |", (t.usage.User + t.usage.Sys).Seconds(), t.usage.Wall.Seconds(), t.cpuPct())
			switch {
			case t.haveBPF:
				w(" %.3f | %.3f | **%.3f** |", 1000*t.bpf.Seconds()/t.bpfWall.Seconds(), t.bpfPct(), t.totalPct())
			case t.name == "perf":
				w(" not visible | not visible | **%.3f** (+ invisible kernel cost) |", t.totalPct())
			default:
				w(" n/a | n/a | %.3f (user+sys only) |", t.totalPct())
			}
			if t.haveSteady {
				w(" %.3f | %.3f |", t.steadyPct(), t.steadyPct()+t.bpfPct())
			} else {
				w(" n/a | n/a |")
			}
			if t.haveLate {
				w(" %.3f |", t.latePct()+t.bpfPct())
			} else {
				w(" n/a |")
			}
			w(" %.1f |\n", mib(t.usage.MaxRSS))
		}
		w("\n")
		if f.loadShare > 0 {
			w("- Host: the workloads got %.2f%% of their 2 CPUs during the window (the rest went to the three tools, "+
				"including their in-kernel sampling, and to anything else running); load average %s at its end",
				100*f.loadShare, f.loadavg)
			if f.loadShare < noisyShare {
				w(". **Other work was running on the host: these figures are noisy**")
			}
			w("\n")
		}
		cg := f.cgscope
		if cg.haveUsage && !cg.failed && cg.startCPU > 0 {
			total := cg.usage.User + cg.usage.Sys
			w("- cgscope's user+sys of %s by phase: start-up (exec to healthy) %s, running (healthy to SIGTERM: the tools "+
				"starting, the window, two /metrics scrapes) %s, shutdown (SIGTERM to exit: last drain, symbolization and "+
				"history write) %s\n", fmtDur(total), fmtDur(cg.startCPU),
				fmtDur(max(total-cg.startCPU-cg.stopCPU, 0)), fmtDur(cg.stopCPU))
		}
		if cg.haveBPF && cg.bpfRuns > 0 {
			w("- cgscope BPF cost per sample: **%.0f ns** (`%s`: %.0f runs, %.0f samples counted, %.3f ms/s)\n",
				1e9*cg.sampleBPF.Seconds()/cg.bpfRuns, sampleProg, cg.bpfRuns, cg.samples, 1000*cg.sampleBPF.Seconds()/cg.bpfWall.Seconds())
		}
		if cg.haveBPF && len(cg.bpfByProg) > 1 {
			w("- cgscope BPF time by program (all are in the table's BPF columns), ms/s: %s\n", byProg(cg))
		}
		for _, t := range []*toolResult{f.perf, f.bpftrace} {
			if t.haveUsage && !t.failed && t.stopCPU > 0 {
				what := "writing perf.data and the build ids of the sampled objects"
				if t == f.bpftrace {
					what = "printing its map, symbolizing every stack"
				}
				w("- %s's user+sys of %s includes %s after SIGINT (%s)\n",
					t.name, fmtDur(t.usage.User+t.usage.Sys), fmtDur(t.stopCPU), what)
			}
		}
		bt := f.bpftrace
		if bt.haveBPF && bt.bpfRuns > 0 {
			w("- bpftrace BPF cost per sample: %.0f ns (%.0f program runs)\n", 1e9*bt.bpf.Seconds()/bt.bpfRuns, bt.bpfRuns)
		}
		for _, t := range f.tools() {
			if t.haveUsage && !t.failed && len(t.errs) > 0 {
				w("- %s: %s\n", t.name, mdEscape(strings.Join(t.errs, "; ")))
			}
			for _, n := range t.note {
				w("- %s: %s\n", t.name, mdEscape(n))
			}
		}
		w("\n")
	}

	w("## cgscope ready-to-serve time\n\n")
	w("From exec of `cgscope` (default flags, workloads still running) to the first 200 on `/healthz`, %d runs; load average before them %s.\n\n", len(r.ready), r.readyLoad)
	readies, cpus, rssMax := r.readyStats()
	if len(readies) > 0 {
		w("- Median **%s**, max **%s** (all: %s)\n", fmtDur(median(readies)), fmtDur(maxDur(readies)), fmtDurs(readies))
		w("- CPU (user+sys) of each short run, start-up plus shutdown: median %s\n", fmtDur(median(cpus)))
		w("- Peak RSS of the short runs: %.1f MiB\n", mib(rssMax))
	}
	for i, rr := range r.ready {
		if rr.err != "" {
			w("- Run %d failed: %s\n", i+1, mdEscape(rr.err))
		}
	}
	w("\n")

	w("## Symbolization throughput\n\n")
	w("`go test ./symbolizer -run '^$' -bench BenchmarkSymbolize -benchtime 3x`, run after the workloads were stopped.\n\n")
	if r.benchOut != "" {
		w("```\n%s\n```\n\n", r.benchOut)
	} else {
		w("Not available: %s\n\n", mdEscape(r.benchErr))
	}

	w("## Targets\n\n")
	w("| Target | Measured | Met |\n|---|---|---|\n")
	for _, t := range r.targets() {
		w("| %s | %s | %s |\n", t.what, t.measured, t.verdict)
	}
	w("\n")
	for _, n := range []string{
		"\"Below perf\" compares cgscope's user+sys+BPF with perf's user+sys only, because perf's in-kernel sampling " +
			"cost is not visible to this measure; being below perf on this table does not show that cgscope costs the host less than perf.",
	} {
		w("%s\n\n", n)
	}
	if _, cpus, _ := r.readyStats(); len(cpus) > 0 {
		for _, f := range r.freqs {
			if cg := f.cgscope; f.hz == targetFreqHz && f.variant == "" && cg.haveUsage && !cg.failed && cg.usage.Wall > 0 {
				w("The whole-life figures include cgscope's start-up and shutdown: a start with no profiling window "+
					"(above) costs %s of CPU, which alone is %.2f%% of one core over the %.0f s life of the %d Hz run; "+
					"a daemon that runs for hours pays it once.\n\n",
					fmtDur(median(cpus)), 100*median(cpus).Seconds()/cg.usage.Wall.Seconds(), cg.usage.Wall.Seconds(), f.hz)
			}
		}
	}
	if len(r.warnings) > 0 {
		w("## Warnings\n\n")
		for _, s := range r.warnings {
			w("- %s\n", mdEscape(s))
		}
		w("\n")
	}
	return b.String()
}

type targetRow struct{ what, measured, verdict string }

func (r *report) targets() []targetRow {
	var rows []targetRow
	yes := func(ok bool) string {
		if ok {
			return "yes"
		}
		return "**no**"
	}
	for _, f := range r.freqs {
		cg := f.cgscope
		cgOK := cg.haveUsage && cg.haveBPF && !cg.failed
		if f.hz == targetFreqHz {
			if cgOK {
				rows = append(rows, targetRow{fmt.Sprintf("%s under %.1f%% of one core at %d Hz (user+sys+BPF)", cg.name, targetPct19Hz, targetFreqHz),
					fmt.Sprintf("%.3f%%", cg.totalPct()), yes(cg.totalPct() < targetPct19Hz)})
				if cg.haveSteady {
					w := cg.steadyPct() + cg.bpfPct()
					rows = append(rows, targetRow{"for reference, the same in the window only (no start-up or shutdown)",
						fmt.Sprintf("%.3f%%", w), yes(w < targetPct19Hz)})
				}
				if cg.haveLate {
					w := cg.latePct() + cg.bpfPct()
					rows = append(rows, targetRow{"for reference, the same in the late window (steady state: the tools' start already symbolized)",
						fmt.Sprintf("%.3f%%", w), yes(w < targetPct19Hz)})
				}
			} else {
				rows = append(rows, targetRow{fmt.Sprintf("%s under %.1f%% of one core at %d Hz", cg.name, targetPct19Hz, targetFreqHz), "not measured", "**no**"})
			}
		}
		for _, other := range []*toolResult{f.bpftrace, f.perf} {
			what := fmt.Sprintf("%s below %s at %d Hz (total %% of one core)", cg.name, other.name, f.hz)
			if other.name == "perf" {
				what += "; perf's kernel cost invisible"
			}
			if !cgOK || !other.haveUsage || other.failed {
				rows = append(rows, targetRow{what, "not measured (see errors above)", "—"})
				continue
			}
			rows = append(rows, targetRow{what, fmt.Sprintf("%.3f%% vs %.3f%%", cg.totalPct(), other.totalPct()),
				yes(cg.totalPct() < other.totalPct())})
		}
	}
	var peak int64
	for _, f := range r.freqs {
		if f.cgscope.haveUsage && !f.cgscope.failed && f.cgscope.usage.MaxRSS > peak {
			peak = f.cgscope.usage.MaxRSS
		}
	}
	_, _, readyRSS := r.readyStats()
	if readyRSS > peak {
		peak = readyRSS
	}
	if peak > 0 {
		rows = append(rows, targetRow{fmt.Sprintf("cgscope peak RSS under %d MiB", targetRSSMiB),
			fmt.Sprintf("%.1f MiB (largest of all runs)", mib(peak)), yes(mib(peak) < targetRSSMiB)})
	}
	readies, _, _ := r.readyStats()
	if len(readies) > 0 {
		allOK := len(readies) == len(r.ready)
		m := maxDur(readies)
		rows = append(rows, targetRow{"cgscope ready to serve in under 1 s", fmt.Sprintf("max %s of %d runs, median %s",
			fmtDur(m), len(readies), fmtDur(median(readies))), yes(allOK && m < targetReady)})
	} else {
		rows = append(rows, targetRow{"cgscope ready to serve in under 1 s", "no successful run", "**no**"})
	}
	return rows
}

func (r *report) readyStats() (readies, cpus []time.Duration, rssMax int64) {
	for _, rr := range r.ready {
		if rr.err == "" {
			readies = append(readies, rr.ready)
			cpus = append(cpus, rr.cpu)
		}
		if rr.maxRSS > rssMax {
			rssMax = rr.maxRSS
		}
	}
	return
}

// summary is printed to stdout at the end.
func (r *report) summary() string {
	var b strings.Builder
	for _, f := range r.freqs {
		for _, t := range f.tools() {
			if !t.haveUsage || t.failed {
				fmt.Fprintf(&b, "%3d Hz %-8s error: %s\n", f.hz, t.name, strings.Join(t.errs, "; "))
				continue
			}
			fmt.Fprintf(&b, "%3d Hz %-8s user+sys %.3f%%  BPF %.3f%%  total %.3f%%  window CPU %.3f%%  late window CPU %.3f%%  RSS %.1f MiB\n",
				f.hz, t.name, t.cpuPct(), t.bpfPct(), t.totalPct(), t.steadyPct(), t.latePct(), mib(t.usage.MaxRSS))
		}
		fmt.Fprintf(&b, "%3d Hz workloads got %.2f%% of their CPUs; load average %s\n", f.hz, 100*f.loadShare, f.loadavg)
		if cg := f.cgscope; cg.haveBPF && cg.bpfRuns > 0 {
			fmt.Fprintf(&b, "%3d Hz cgscope BPF %.0f ns/sample; by program (ms/s): %s\n", f.hz,
				1e9*cg.sampleBPF.Seconds()/cg.bpfRuns, byProg(cg))
		}
	}
	if readies, _, _ := r.readyStats(); len(readies) > 0 {
		fmt.Fprintf(&b, "ready: median %s max %s\n", fmtDur(median(readies)), fmtDur(maxDur(readies)))
	}
	for _, t := range r.targets() {
		fmt.Fprintf(&b, "target: %s: %s: %s\n", t.what, t.measured, strings.Trim(t.verdict, "*"))
	}
	return b.String()
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func maxDur(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}

func fmtDur(d time.Duration) string {
	if d < 10*time.Second {
		return fmt.Sprintf("%d ms", d.Milliseconds())
	}
	return d.Round(100 * time.Millisecond).String()
}

func fmtDurs(ds []time.Duration) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = fmtDur(d)
	}
	return strings.Join(s, ", ")
}

// mdEscape keeps free text from breaking a Markdown table.
func mdEscape(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	return strings.ReplaceAll(s, "|", "\\|")
}

// byProg lists cgscope's BPF programs by run time, largest first.
func byProg(t *toolResult) string {
	type pt struct {
		name string
		d    time.Duration
	}
	var ps []pt
	for n, d := range t.bpfByProg {
		ps = append(ps, pt{n, d})
	}
	sort.Slice(ps, func(i, j int) bool {
		if ps[i].d != ps[j].d {
			return ps[i].d > ps[j].d
		}
		return ps[i].name < ps[j].name
	})
	parts := make([]string, len(ps))
	for i, p := range ps {
		parts[i] = fmt.Sprintf("%s %.3f", p.name, 1000*p.d.Seconds()/t.bpfWall.Seconds())
	}
	return strings.Join(parts, ", ")
}
