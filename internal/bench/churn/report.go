package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/cgscope/cgscope/internal/bench/benchutil"
)

const title = "## Process churn soak"

// sectionTitle names the run's section: the defaults, or the extra flags.
func sectionTitle(opt options) string {
	if f := strings.Join(strings.Fields(opt.extra), " "); f != "" {
		return title + " with `" + f + "`"
	}
	return title
}

// Targets of issue 16.
const (
	cpuTarget       = 0.5 // % of one core
	rssTarget       = 48  // MiB
	rssGrowthTarget = 2.0 // % between minute 2 and the end
	fdRatioTarget   = 1.2 // open object files per object the held processes map
)

// at returns the first reading at or after d (the last one if none).
func at(rs []reading, d time.Duration) reading {
	for _, r := range rs {
		if r.at >= d {
			return r
		}
	}
	return rs[len(rs)-1]
}

func report(opt options, rs []reading, failed uint64, version, load string, busyBefore float64, quiet bool, hostBusy float64, histBytes int64) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("%s\n\n", sectionTitle(opt))
	p("Run with `internal/bench/churn` (as `scripts/bench.sh` runs it), %s, %s; load average %s at the start",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), version, load)
	if !quiet {
		p(" (the host did not become idle: %.0f%% of its CPUs busy before the run, %.0f%% at its end: other sessions' work ran alongside, so CPU figures are high and noisy)",
			100*busyBefore, 100*hostBusy)
	}
	p(".\n\n")
	if opt.extra != "" {
		p("The same soak as the previous section, with `%s` added to cgscope's flags.\n\n", opt.extra)
	}
	p("cgscope with its defaults at %d Hz and `--storage.path` (history on disk), for %v, under a process churn of about 100 execs a second: "+
		"%d × `/bin/true` every %v and a Go program burning CPU for %v every %v (`benchutil.Churn`). A reading every %v: "+
		"the agent's RSS, Go heap in use, open file descriptors and CPU (user+sys over the interval, %% of one core), "+
		"and the symbolizer's processes held, objects they map and object files open, and the pipeline's announced processes.\n\n",
		opt.hz, opt.duration, benchutil.ChurnShortBatch, benchutil.ChurnShortEvery, benchutil.ChurnBusyFor, benchutil.ChurnBusyEvery, opt.every)
	last := rs[len(rs)-1]
	p("Processes started by the churn: %d (%d failed to start); history on disk at the end: %.1f MiB.\n\n", last.execs, failed, float64(histBytes)/(1<<20))

	p("| time | RSS MiB | heap MiB | fds | CPU %% | processes held | running / exited | objects mapped | object files open |\n")
	p("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rs {
		p("| %.0f s | %.1f | %.1f | %d | %.2f | %.0f | %.0f / %.0f | %.0f | %.0f |\n",
			r.at.Seconds(), r.rss, r.heap, r.fds, r.cpu, r.cached, r.running, r.exited, r.mapped, r.open)
	}
	p("\n")

	// CPU after the first minute; RSS growth from minute 2 to the end; the worst fd ratio.
	m1, m2 := at(rs, time.Minute), at(rs, 2*time.Minute)
	cpu := 100 * float64(last.cpuTotal-m1.cpuTotal) / float64(last.at-m1.at)
	growth := 100 * (last.rss - m2.rss) / m2.rss
	var maxRSS, worstRatio float64
	var worst reading
	for _, r := range rs {
		maxRSS = max(maxRSS, r.rss)
		if r.at < time.Minute || r.mapped == 0 {
			continue
		}
		if ratio := r.open / r.mapped; ratio > worstRatio {
			worstRatio, worst = ratio, r
		}
	}
	met := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**not met**"
	}
	p("Against the targets:\n\n")
	p("- agent CPU after the first minute: %.2f%% of one core against ≤ %.1f%% (%s);\n", cpu, cpuTarget, met(cpu <= cpuTarget))
	p("- RSS growth between minute 2 (%.1f MiB) and the end (%.1f MiB): %+.1f%% against < %.0f%% (%s); the largest RSS read: %.1f MiB against ≤ %d MiB (%s);\n",
		m2.rss, last.rss, growth, rssGrowthTarget, met(growth < rssGrowthTarget), maxRSS, rssTarget, met(maxRSS <= rssTarget))
	p("- object files open per object the held processes map, after the first minute: at most %.2f (%.0f of %.0f at %.0f s) against ≤ %.1f (%s); "+
		"the agent's other descriptors (BPF programs, maps and links, perf events, sockets, history segments) come on top: %d in all at the end;\n",
		worstRatio, worst.open, worst.mapped, worst.at.Seconds(), fdRatioTarget, met(worstRatio <= fdRatioTarget), last.fds)
	p("- processes held by the symbolizer at the end: %.0f, for %.0f running and %.0f exited waiting for their last drain; %.0f released after their exit, %.0f evicted by the cap.\n",
		last.cached, last.running, last.exited, last.released, last.evictedProc)
	return b.String()
}
