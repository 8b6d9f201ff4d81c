package main

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/cgscope/cgscope/internal/bench/benchutil"
)

// sectionTitle heads the section this command writes into the report.
const sectionTitle = "## Busy hosts: context switches and page faults"

// result is everything the section is written from.
type result struct {
	opt                   options
	started, finished     time.Time
	loadBefore, loadAfter string
	busyBefore            float64
	quiet                 bool
	cpus                  int
	version               string
	cfgs                  []*config
	warnings              []string
	sessions              []*session
	ms                    []*measurement
}

// runnable are the configurations that can run, in their interleaving
// order.
func (r *result) runnable() []*config {
	var out []*config
	for _, c := range r.cfgs {
		if c.unavailable == "" {
			out = append(out, c)
		}
	}
	return out
}

func (r *result) cfg(name string) *config {
	for _, c := range r.cfgs {
		if c.name == name {
			return c
		}
	}
	return nil
}

// estimate is how long the measurements take, roughly.
func (r *result) estimate() time.Duration {
	perLoad := r.opt.warmup + r.opt.window + time.Second
	var d time.Duration
	for _, c := range r.runnable() {
		if c.cgscope {
			d += r.opt.settle + 2*time.Second
		}
		d += time.Duration(len(r.opt.loads)) * perLoad
	}
	return time.Duration(r.opt.reps) * d
}

// of returns the measurements of a configuration on a load that succeeded.
func (r *result) of(c *config, l *load) []*measurement {
	var out []*measurement
	for _, m := range r.ms {
		if m.cfg == c && m.load == l && m.ok() {
			out = append(out, m)
		}
	}
	return out
}

// spread is the median and range of one figure over the repetitions.
type spread struct {
	med, lo, hi float64
	n           int
}

func spreadOf(ms []*measurement, f func(*measurement) float64) spread {
	if len(ms) == 0 {
		return spread{med: math.NaN(), lo: math.NaN(), hi: math.NaN()}
	}
	xs := make([]float64, len(ms))
	for i, m := range ms {
		xs[i] = f(m)
	}
	slices.Sort(xs)
	med := xs[len(xs)/2]
	if len(xs)%2 == 0 {
		med = (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
	}
	return spread{med: med, lo: xs[0], hi: xs[len(xs)-1], n: len(xs)}
}

func (s spread) ok() bool { return s.n > 0 }

// cell formats the median, bold when asked, and the range.
func (s spread) cell(format string, bold bool) string {
	if !s.ok() {
		return "—"
	}
	med := fmt.Sprintf(format, s.med)
	if bold {
		med = "**" + med + "**"
	}
	if s.n == 1 {
		return med
	}
	return fmt.Sprintf("%s ("+format+"–"+format+")", med, s.lo, s.hi)
}

// thousands formats a non-negative rate like 152,300.
func thousands(v float64) string {
	if math.IsNaN(v) {
		return "—"
	}
	s := fmt.Sprintf("%.0f", v)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func rateCell(s spread) string {
	if !s.ok() {
		return "—"
	}
	if s.n == 1 {
		return thousands(s.med)
	}
	return fmt.Sprintf("%s (%s–%s)", thousands(s.med), thousands(s.lo), thousands(s.hi))
}

// workCell is a load's throughput and its change from the baseline's
// median.
func workCell(l *load, s, base spread) string {
	if !s.ok() {
		return "—"
	}
	var v string
	if l.cpuShare {
		v = fmt.Sprintf("%.1f%% (%.1f–%.1f%%)", 100*s.med, 100*s.lo, 100*s.hi)
		if s.n == 1 {
			v = fmt.Sprintf("%.1f%%", 100*s.med)
		}
	} else {
		v = rateCell(s)
	}
	if base.ok() && base.med > 0 {
		v += fmt.Sprintf(", %+.1f%%", 100*(s.med/base.med-1))
	}
	return v
}

// unit of a load's throughput in the table header.
func workHeader(l *load) string {
	if l.cpuShare {
		return "load's share of its CPUs, vs baseline"
	}
	return "load's " + l.work + "/s, vs baseline"
}

func (r *result) markdown() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	o := r.opt

	w("\n%s\n\n", sectionTitle)
	w("`go run ./internal/bench/sched` (`make bench` runs it through `scripts/bench.sh`), from %s to %s UTC on %d CPUs; "+
		"cgscope %s; load average %s before, %s after; %s.\n\n",
		r.started.Format("2006-01-02 15:04"), r.finished.Format("15:04"), r.cpus, benchutil.MDEscape(r.version),
		r.loadBefore, r.loadAfter, r.hostState())

	w("What cgscope costs a host that switches and faults a lot, and what it takes from the loads that do. " +
		"Three loads, each measured with no cgscope (the baseline) and with cgscope in three configurations:\n\n")
	w("- **pipe ping-pong** (`%s`, `gcc -O2`): two processes bounce one byte over two pipes, each blocking in "+
		"`read(2)` until the other writes. Events: the host's context switches (`ctxt` of `/proc/stat`); the load's own "+
		"count: round trips.\n", loadsSrc)
	w("- **page-fault storm** (same source): one process per CPU maps %d KiB of fresh anonymous memory (no huge pages), "+
		"writes a byte to each page and unmaps it, over and over. Events: the host's page faults (`pgfault` of "+
		"`/proc/vmstat`); the load's own count: pages touched.\n", o.faultKiB)
	w("- **spin**: one `internal/e2e/testdata/gosplit` per CPU burning CPU, as in the overhead runs above: few " +
		"events, the cost of profiling alone. Its own count: the share of their CPUs the spinners got (schedstat).\n\n")
	w("Configurations:\n\n")
	for _, c := range r.cfgs {
		desc := map[string]string{
			cfgBaseline:      "the loads alone",
			cfgDefaults:      "cgscope as a new user starts it",
			cfgOffCPU:        "the defaults, off-CPU profiling named explicitly",
			cfgProfilingOnly: "every per-cgroup collector off and no off-CPU profiling: the CPU profiler alone",
		}[c.name]
		if c.cgscope {
			w("- **%s** (%s): %s", c.name, c.flagsText(), desc)
		} else {
			w("- **%s**: %s", c.name, desc)
		}
		if c.unavailable != "" {
			w(". **NOT RUN: %s.**", benchutil.MDEscape(c.unavailable))
		}
		for _, n := range c.notes {
			w(". %s", benchutil.MDEscape(n))
		}
		w("\n")
	}
	w("\nMethod: %d repetitions; in each, the configurations in the order above (interleaved, so that drift on the host "+
		"reaches all alike), each running the loads in turn. cgscope starts, answers `/healthz`, runs %v, then each load "+
		"runs %v before a window of %v. In the window: cgscope's BPF time is the growth of the kernel's bpf_stats "+
		"(`run_time_ns`; kept on by this command for the whole run, the baseline included) of every program cgscope holds "+
		"a descriptor to (`prog_id` in `/proc/PID/fdinfo`, the programs read by id), listed at the window's ends and every "+
		"%v in between, so that a program attached only part of the time counts whole and one loaded during the window "+
		"counts from zero; the agent's user+sys is from `/proc/PID/stat` (10 ms ticks); its RSS is `VmRSS` at the "+
		"window's end; one `/metrics` scrape, as a Prometheus at its default 15 s interval would make, falls inside the "+
		"window. Percentages are of one CPU core; ns per event is cgscope's BPF time over the host's events of the "+
		"load's kind. Cells hold the median over the repetitions and, in parentheses, the smallest and largest; the "+
		"load's throughput is followed by its change from the baseline's median (the profiler's toll on the load). The last "+
		"column is the BPF time of every other program on the host in the window (other processes' tracers, another "+
		"cgscope): work the loads paid for that is not cgscope's.\n\n",
		o.reps, o.settle, o.warmup, o.window, o.poll)

	for _, name := range o.loads {
		l := loadByName(name)
		w("### %s\n\n", strings.ToUpper(l.title[:1])+l.title[1:])
		w("| configuration | cgscope BPF, %% of one core | BPF ns per event | agent user+sys, %% of one core | agent RSS, MiB | %s/s | %s | other processes' BPF, %% of one core |\n",
			l.events, workHeader(l))
		w("|---|---:|---:|---:|---:|---:|---:|---:|\n")
		base := spreadOf(r.of(r.cfg(cfgBaseline), l), (*measurement).workRate)
		for _, c := range r.cfgs {
			if c.unavailable != "" {
				w("| %s | **NOT RUN**: %s | | | | | | |\n", c.name, benchutil.MDEscape(c.unavailable))
				continue
			}
			ms := r.of(c, l)
			if len(ms) == 0 {
				w("| %s | no measurement succeeded (see below) | | | | | | |\n", c.name)
				continue
			}
			rate := rateCell(spreadOf(ms, (*measurement).rate))
			work := workCell(l, spreadOf(ms, (*measurement).workRate), base)
			other := spreadOf(ms, (*measurement).otherPct).cell("%.2f", false)
			if !c.cgscope {
				w("| %s | — | — | — | — | %s | %s | %s |\n", c.name, rate, work, other)
				continue
			}
			w("| %s | %s | %s | %s | %s | %s | %s | %s |\n", c.name,
				spreadOf(ms, (*measurement).bpfPct).cell("%.3f", true),
				spreadOf(ms, (*measurement).nsPerEvent).cell("%.0f", false),
				spreadOf(ms, (*measurement).agentPct).cell("%.3f", false),
				spreadOf(ms, func(m *measurement) float64 { return mib(m.rss) }).cell("%.1f", false),
				rate, work, other)
		}
		w("\n")
		for _, c := range r.runnable() {
			if !c.cgscope {
				continue
			}
			if line := r.byProgram(c, l); line != "" {
				w("- %s, BPF by program (median %% of one core): %s\n", c.name, line)
			}
		}
		w("\n")
	}

	w("### Checks\n\n")
	for _, line := range r.checks() {
		w("- %s\n", line)
	}
	w("\n### Targets\n\n")
	w("With the defaults (off-CPU on): all of cgscope's BPF programs together at most 0.5%% of one core at 150,000 "+
		"context switches a second or more, at most 0.3%% at 140,000 page faults a second or more; the agent's user+sys "+
		"unchanged within noise from profiling only (the medians differ by no more than the larger range of the two, "+
		"and at least one %v tick of `/proc/PID/stat` per window; inconclusive when that noise exceeds %.1f%% of one core). "+
		"A BPF figure under its bound at a lower event rate than the target's is inconclusive, not met.\n\n", benchutil.StatTick, maxAgentNoise)
	w("| target | configuration | measured (median) | verdict |\n|---|---|---|---|\n")
	for _, t := range r.targets() {
		w("| %s | %s | %s | %s |\n", t.what, t.cfg, benchutil.MDEscape(t.measured), t.mdVerdict())
	}
	w("\n")
	return b.String()
}

// hostState says how busy the host was before the run.
func (r *result) hostState() string {
	s := fmt.Sprintf("%.0f%% of the CPUs in use before the run", 100*r.busyBefore)
	if !r.quiet {
		s += fmt.Sprintf(" (**busy**: waited %v for less than %.0f%%)", r.opt.quiet, 100*benchutil.QuietBusy)
	}
	return s
}

// byProgram lists the configuration's programs on the load by their median
// share of one core, largest first.
func (r *result) byProgram(c *config, l *load) string {
	ms := r.of(c, l)
	names := map[string]bool{}
	for _, m := range ms {
		for n := range m.bpf.byName {
			names[n] = true
		}
	}
	type prog struct {
		name string
		pct  float64
	}
	var ps []prog
	for n := range names {
		s := spreadOf(ms, func(m *measurement) float64 { return 100 * m.bpf.byName[n].Seconds() / m.wall.Seconds() })
		ps = append(ps, prog{n, s.med})
	}
	sort.Slice(ps, func(i, j int) bool {
		if ps[i].pct != ps[j].pct {
			return ps[i].pct > ps[j].pct
		}
		return ps[i].name < ps[j].name
	})
	var parts []string
	for _, p := range ps {
		parts = append(parts, fmt.Sprintf("%s %.3f", p.name, p.pct))
	}
	return strings.Join(parts, ", ")
}

// checks are what the run verified about itself, and what went wrong.
func (r *result) checks() []string {
	var out []string
	for _, c := range r.cfgs {
		if c.unavailable != "" {
			out = append(out, fmt.Sprintf("**%s: NOT RUN** — %s.", c.name, benchutil.MDEscape(c.unavailable)))
		}
	}
	out = append(out, r.warnings...)
	for _, c := range r.runnable() {
		if !c.cgscope {
			continue
		}
		with, without := 0, 0
		programs := map[string]bool{}
		var metricsPct, oursPct []float64
		gone, loaded := 0, 0
		for _, m := range r.ms {
			if m.cfg != c || !m.ok() {
				continue
			}
			if m.offCPU {
				with++
			} else {
				without++
			}
			for n := range m.bpf.byName {
				programs[n] = true
			}
			gone += m.bpf.gone
			loaded += m.bpf.loaded
			if m.metricsOn > 0 {
				metricsPct = append(metricsPct, 100*m.metricsBPF.Seconds()/m.metricsOn.Seconds())
				oursPct = append(oursPct, m.bpfPct())
			}
		}
		names := make([]string, 0, len(programs))
		for n := range programs {
			names = append(names, n)
		}
		sort.Strings(names)
		line := fmt.Sprintf("%s: programs counted: %s", c.name, strings.Join(names, ", "))
		switch {
		case with > 0 && without > 0:
			line += fmt.Sprintf("; an off-CPU program (`%s*`) in %d of %d windows", offCPUPrefix, with, with+without)
		case with > 0:
			line += fmt.Sprintf("; an off-CPU program (`%s*`) in every window", offCPUPrefix)
		default:
			line += fmt.Sprintf("; no off-CPU program (`%s*`)", offCPUPrefix)
		}
		if c.wantOffCPU != nil && *c.wantOffCPU && without > 0 {
			line += " — **but this configuration asks for off-CPU profiling: it was not on**"
		}
		if c.wantOffCPU != nil && !*c.wantOffCPU && with > 0 {
			line += " — **but this configuration turns off-CPU profiling off**"
		}
		if c.name == cfgProfilingOnly && with > 0 && c.wantOffCPU == nil {
			line += " — **profiling only was meant to run without off-CPU profiling, and this binary has no flag to turn it off**"
		}
		if c.name == cfgDefaults && with == 0 {
			line += " (this build's defaults do not profile off-CPU time: not yet the defaults the targets are stated for)"
		}
		if gone > 0 || loaded > 0 {
			line += fmt.Sprintf("; %d programs loaded and %d closed during windows (counted)", loaded, gone)
		}
		if len(metricsPct) > 0 {
			line += fmt.Sprintf("; cgscope's own `cgscope_bpf_program_run_seconds_total` (scrape to scrape, the programs it reports) "+
				"gave a median of %.3f%% of one core against %.3f%% counted here", median(metricsPct), median(oursPct))
			if median(metricsPct) > 1.1*median(oursPct)+0.01 {
				line += " — **more than counted here: a program was missed**"
			}
		}
		out = append(out, line+".")
	}
	for _, s := range r.sessions {
		if s.startErr != nil {
			out = append(out, fmt.Sprintf("**%s, repetition %d: cgscope did not start**: %s", s.cfg.name, s.rep, benchutil.MDEscape(s.startErr.Error())))
		}
		if s.unclean != "" {
			out = append(out, fmt.Sprintf("%s, repetition %d: cgscope %s", s.cfg.name, s.rep, benchutil.MDEscape(s.unclean)))
		}
	}
	for _, m := range r.ms {
		if m.err != nil {
			out = append(out, fmt.Sprintf("**%s, %s, repetition %d failed**: %s", m.cfg.name, m.load.name, m.rep, benchutil.MDEscape(m.err.Error())))
		}
	}
	return out
}

func median(xs []float64) float64 {
	c := slices.Clone(xs)
	slices.Sort(c)
	if len(c) == 0 {
		return math.NaN()
	}
	if len(c)%2 == 0 {
		return (c[len(c)/2-1] + c[len(c)/2]) / 2
	}
	return c[len(c)/2]
}

// target is one target's verdict.
type target struct {
	what, cfg, measured string
	verdict             string // PASS, FAIL, INCONCLUSIVE, NOT RUN
}

func (t target) mdVerdict() string {
	if t.verdict == "PASS" {
		return "PASS"
	}
	return "**" + t.verdict + "**"
}

func (r *result) targets() []target {
	var out []target
	only := r.cfg(cfgProfilingOnly)
	for _, name := range []string{cfgDefaults, cfgOffCPU} {
		c := r.cfg(name)
		label := name
		if name == cfgDefaults && !r.anyOffCPU(c) {
			label += " (no off-CPU program loaded)"
		}
		for _, ln := range r.opt.loads {
			l := loadByName(ln)
			if l.rateTarget == 0 {
				continue
			}
			t := target{what: fmt.Sprintf("cgscope BPF ≤ %.1f%% of one core at ≥ %s %s/s", l.bpfTarget, thousands(l.rateTarget), l.events), cfg: label}
			ms := r.of(c, l)
			switch {
			case c.unavailable != "":
				t.verdict, t.measured = "NOT RUN", c.unavailable
			case len(ms) == 0:
				t.verdict, t.measured = "NOT RUN", "no measurement succeeded"
			default:
				bpf, rate := spreadOf(ms, (*measurement).bpfPct), spreadOf(ms, (*measurement).rate)
				t.measured = fmt.Sprintf("%.3f%% at %s %s/s (%.0f ns per event)", bpf.med, thousands(rate.med), l.events,
					spreadOf(ms, (*measurement).nsPerEvent).med)
				switch {
				case bpf.med > l.bpfTarget:
					t.verdict = "FAIL"
				case rate.med < l.rateTarget:
					t.verdict = "INCONCLUSIVE"
					t.measured += fmt.Sprintf(": the load did not reach %s %s/s", thousands(l.rateTarget), l.events)
				default:
					t.verdict = "PASS"
				}
			}
			out = append(out, t)
		}
		out = append(out, r.agentTarget(c, only, label))
	}
	return out
}

// anyOffCPU reports whether any window of c had an off-CPU program.
func (r *result) anyOffCPU(c *config) bool {
	for _, m := range r.ms {
		if m.cfg == c && m.ok() && m.offCPU {
			return true
		}
	}
	return false
}

// agentTarget compares the agent's user+sys in c with profiling only, on
// every load: the medians may differ by the larger range of the two, and
// at least a tick per window.
func (r *result) agentTarget(c, only *config, label string) target {
	t := target{what: "agent user+sys unchanged within noise vs profiling only", cfg: label}
	if c.unavailable != "" || only.unavailable != "" {
		t.verdict, t.measured = "NOT RUN", c.unavailable+only.unavailable
		return t
	}
	var parts []string
	pass, measured, worst := true, 0, 0.0
	for _, ln := range r.opt.loads {
		l := loadByName(ln)
		a, b := spreadOf(r.of(c, l), (*measurement).agentPct), spreadOf(r.of(only, l), (*measurement).agentPct)
		if !a.ok() || !b.ok() {
			parts = append(parts, l.name+": not measured")
			pass = false
			continue
		}
		measured++
		tick := 100 * benchutil.StatTick.Seconds() / r.opt.window.Seconds()
		noise := max(a.hi-a.lo, b.hi-b.lo, tick)
		worst = max(worst, noise)
		d := a.med - b.med
		ok := d <= noise
		pass = pass && ok
		parts = append(parts, fmt.Sprintf("%s: %.3f%% vs %.3f%% (%+.3f, noise %.3f)%s", l.name, a.med, b.med, d, noise,
			map[bool]string{true: "", false: " over"}[ok]))
	}
	t.measured = strings.Join(parts, "; ")
	switch {
	case measured == 0:
		t.verdict = "NOT RUN"
	case !pass:
		t.verdict = "FAIL"
	case worst > maxAgentNoise:
		t.verdict = "INCONCLUSIVE"
		t.measured += fmt.Sprintf(": within noise, but the noise (up to %.3f%% of one core) is larger than %.1f%%, "+
			"more than the profiler alone uses: it could hide the agent doubling", worst, maxAgentNoise)
	default:
		t.verdict = "PASS"
	}
	return t
}

// maxAgentNoise is the most noise, in % of one core, under which "unchanged
// within noise" still says something: the agent profiling alone uses about
// that much on these loads.
const maxAgentNoise = 0.5

// summary is the targets in plain text for the terminal, the configurations
// not run first.
func (r *result) summary() string {
	var b strings.Builder
	for _, c := range r.cfgs {
		if c.unavailable != "" {
			fmt.Fprintf(&b, "!!! CONFIGURATION %q NOT RUN: %s\n", c.name, c.unavailable)
		}
	}
	for _, t := range r.targets() {
		fmt.Fprintf(&b, "%-12s %s [%s]: %s\n", t.verdict, t.what, t.cfg, t.measured)
	}
	return b.String()
}
