// Package bpfstats reads the kernel's run-time statistics of cgscope's BPF
// programs (bpf_stats: how often each ran and the CPU time it took) and
// exports them as cgscope_bpf_program_runs_total and
// cgscope_bpf_program_run_seconds_total. The components that load programs
// (the sampler, the per-cgroup collectors) report their own programs; one
// Collector exports them all, since a Prometheus registry takes each metric
// family from one collector.
package bpfstats

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// Program is the kernel's accounting of one BPF program.
type Program struct {
	Name     string
	RunCount uint64
	Runtime  time.Duration
}

// Of reads the statistics of programs, sorted by name. The kernel counts
// only while statistics are enabled (Enable, or the sysctl).
func Of(programs map[string]*ebpf.Program) ([]Program, error) {
	names := make([]string, 0, len(programs))
	for n := range programs {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]Program, 0, len(names))
	for _, n := range names {
		st, err := programs[n].Stats()
		if err != nil {
			return nil, fmt.Errorf("reading BPF stats of %s: %w", n, err)
		}
		out = append(out, Program{Name: n, RunCount: st.RunCount, Runtime: st.Runtime})
	}
	return out, nil
}

// Enabled reports whether kernel.bpf_stats_enabled is set, in which case the
// kernel keeps run-time statistics for every program anyway.
func Enabled() bool {
	data, err := os.ReadFile("/proc/sys/kernel/bpf_stats_enabled")
	return err == nil && strings.TrimSpace(string(data)) == "1"
}

// Enable turns on the kernel's per-program run-time accounting for as long
// as the returned closer stays open, like kernel.bpf_stats_enabled=1 but
// scoped to this process.
func Enable() (io.Closer, error) {
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("enabling BPF run-time statistics: %w", err)
	}
	return c, nil
}

// Source reports the statistics of the programs a component loaded.
type Source interface {
	ProgramStats() ([]Program, error)
}

// Collector exports the statistics of every source's programs.
type Collector struct{ sources []Source }

// NewCollector reads the sources at scrape time.
func NewCollector(sources ...Source) *Collector { return &Collector{sources: sources} }

var (
	descRuns = prometheus.NewDesc("cgscope_bpf_program_runs_total",
		"Times each BPF program ran, from the kernel's bpf_stats.", []string{"program"}, nil)
	descTime = prometheus.NewDesc("cgscope_bpf_program_run_seconds_total",
		"CPU time spent in each BPF program, from the kernel's bpf_stats.", []string{"program"}, nil)
)

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descRuns
	ch <- descTime
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	for _, src := range c.sources {
		progs, err := src.ProgramStats()
		if err != nil {
			ch <- prometheus.NewInvalidMetric(descRuns, err)
			continue
		}
		for _, p := range progs {
			ch <- prometheus.MustNewConstMetric(descRuns, prometheus.CounterValue, float64(p.RunCount), p.Name)
			ch <- prometheus.MustNewConstMetric(descTime, prometheus.CounterValue, p.Runtime.Seconds(), p.Name)
		}
	}
}
