package main

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/cilium/ebpf/btf"

	"github.com/cgscope/cgscope/collector"
	"github.com/cgscope/cgscope/exporter/cgroupmetrics"
)

// counterFlags configure the per-cgroup collectors and metrics.
type counterFlags struct {
	enabled       map[string]*bool // by collector name
	filesInterval time.Duration
	include       string
	exclude       string
	maxExported   int
	maxDepth      int
	grace         time.Duration
	maxTracked    int
	maxTasks      int
	maxSockets    int
}

func addCounterFlags(cmd *kingpin.CmdClause) *counterFlags {
	f := &counterFlags{enabled: map[string]*bool{}}
	for _, c := range collector.Table {
		f.enabled[c.Name] = cmd.Flag("collector."+c.Name, c.Help+" Disable with --no-collector."+c.Name+".").
			Default(strconv.FormatBool(c.Default)).Bool()
	}
	cmd.Flag("collector.cgroupfs.interval", "How often cgroup files are re-read in the background (scrapes read a cache).").
		Default("10s").DurationVar(&f.filesInterval)
	cmd.Flag("cgroup.include", "Export only cgroups whose path matches this regular expression.").StringVar(&f.include)
	cmd.Flag("cgroup.exclude", "Do not export cgroups whose path matches this regular expression.").StringVar(&f.exclude)
	cmd.Flag("cgroup.max-exported", "Most cgroups exported with their own labels; the rest are summed into cgroup=\"other\".").
		Default("1000").IntVar(&f.maxExported)
	cmd.Flag("cgroup.max-depth", "Fold cgroups deeper than this many path components into their ancestor (0: no limit).").
		Default("0").IntVar(&f.maxDepth)
	cmd.Flag("cgroup.grace-period", "How long a deleted cgroup's series stay before they go away.").
		Default("2m").DurationVar(&f.grace)
	cmd.Flag("cgroup.max-tracked", "cgroups the kernel keeps counters for; more are counted in cgscope_cgroup_counter_events_dropped_total.").
		Default("16384").IntVar(&f.maxTracked)
	cmd.Flag("cgroup.max-tasks", "Threads whose figures the sched and faults collectors keep between scrapes; a thread beyond it is counted only when it ends (cgscope_cgroup_counter_events_dropped_total{reason=\"tasks_map_full\"}).").
		Default("65536").IntVar(&f.maxTasks)
	cmd.Flag("cgroup.max-sockets", "Established TCP sockets tracked for active connections.").Default("65536").IntVar(&f.maxSockets)
	return f
}

// options validates the flags and turns them into the per-cgroup metrics'
// options; it runs before anything is attached.
func (f *counterFlags) options() (cgroupmetrics.Options, error) {
	opts := cgroupmetrics.Options{MaxCgroups: f.maxExported, MaxDepth: f.maxDepth, GracePeriod: f.grace}
	var err error
	if f.include != "" {
		if opts.Include, err = regexp.Compile(f.include); err != nil {
			return opts, fmt.Errorf("--cgroup.include: %w", err)
		}
	}
	if f.exclude != "" {
		if opts.Exclude, err = regexp.Compile(f.exclude); err != nil {
			return opts, fmt.Errorf("--cgroup.exclude: %w", err)
		}
	}
	for _, c := range []struct {
		flag  string
		value int
		min   int
	}{
		{"cgroup.max-exported", f.maxExported, 1},
		{"cgroup.max-depth", f.maxDepth, 0},
		{"cgroup.max-tracked", f.maxTracked, 1},
		{"cgroup.max-tasks", f.maxTasks, 1},
		{"cgroup.max-sockets", f.maxSockets, 1},
	} {
		if c.value < c.min {
			return opts, fmt.Errorf("--%s=%d: want at least %d", c.flag, c.value, c.min)
		}
	}
	if f.filesInterval < 100*time.Millisecond {
		return opts, fmt.Errorf("--collector.cgroupfs.interval=%s: want at least 100ms", f.filesInterval)
	}
	if f.grace < 0 {
		return opts, fmt.Errorf("--cgroup.grace-period=%s: want 0 or more", f.grace)
	}
	return opts, nil
}

// startCollectors starts the collectors the flags enable; the cgroup-file
// cache refreshes until ctx ends.
func (f *counterFlags) startCollectors(ctx context.Context, cgroupRoot string, kernelBTF *btf.Cache) (*collector.Set, error) {
	enabled := map[string]bool{}
	for name, on := range f.enabled {
		enabled[name] = *on
	}
	return collector.Start(ctx, collector.Config{
		Enabled:    enabled,
		MaxCgroups: f.maxTracked, MaxTasks: f.maxTasks, MaxSockets: f.maxSockets,
		CgroupRoot: cgroupRoot, BTF: kernelBTF,
		FilesInterval: f.filesInterval, FilesBudget: 20 * time.Millisecond,
	})
}
