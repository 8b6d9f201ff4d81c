package main

import (
	"fmt"
	"log/slog"
	"regexp"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/cilium/ebpf/btf"

	"github.com/cgscope/cgscope/exporter"
	"github.com/cgscope/cgscope/profiler"
)

// counterFlags configure the per-cgroup metrics.
type counterFlags struct {
	collectors    map[string]*bool
	cgroupFiles   bool
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

var collectorHelp = map[string]string{
	"sched":   "CPU time, context switches and run-queue latency per cgroup (sched tracepoints).",
	"faults":  "User page faults per cgroup (exceptions:page_fault_user).",
	"oom":     "OOM kills per cgroup (tp_btf/mark_victim).",
	"network": "Bytes and packets per cgroup (cgroup_skb at the cgroup2 root).",
	"tcp":     "TCP connections opened, failed, closed, active, and retransmits per cgroup (sock and tcp tracepoints).",
}

func addCounterFlags(cmd *kingpin.CmdClause) *counterFlags {
	f := &counterFlags{collectors: map[string]*bool{}}
	for _, name := range profiler.CounterCollectors {
		f.collectors[name] = cmd.Flag("collector."+name, collectorHelp[name]+" Disable with --no-collector."+name+".").
			Default("true").Bool()
	}
	cmd.Flag("collector.cgroupfs", "Memory, CPU throttling, page faults and PSI per cgroup from cgroup files.").
		Default("true").BoolVar(&f.cgroupFiles)
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
	cmd.Flag("cgroup.max-tasks", "Threads the scheduler collector tracks at once.").Default("65536").IntVar(&f.maxTasks)
	cmd.Flag("cgroup.max-sockets", "Established TCP sockets tracked for active connections.").Default("65536").IntVar(&f.maxSockets)
	return f
}

// options validates the flags and turns them into collector options; it
// runs before anything is attached.
func (f *counterFlags) options() (exporter.CgroupOptions, error) {
	opts := exporter.CgroupOptions{MaxCgroups: f.maxExported, MaxDepth: f.maxDepth, GracePeriod: f.grace}
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

// anyBPFCollector reports whether any counter program is wanted.
func (f *counterFlags) anyBPFCollector() bool {
	for _, on := range f.collectors {
		if *on {
			return true
		}
	}
	return false
}

// startCounters attaches the enabled counter collectors. It returns nil
// counters (and no error) when every BPF collector is switched off.
func (f *counterFlags) startCounters(cgroupRoot string, kernelBTF *btf.Cache) (*profiler.CgroupCounters, error) {
	if !f.anyBPFCollector() {
		return nil, nil
	}
	enabled := map[string]bool{}
	for name, on := range f.collectors {
		enabled[name] = *on
	}
	c, err := profiler.NewCgroupCounters(profiler.CountersConfig{
		MaxCgroups: f.maxTracked, MaxTasks: f.maxTasks, MaxSockets: f.maxSockets,
		Collectors: enabled, CgroupRoot: cgroupRoot, BTF: kernelBTF,
	})
	if err != nil {
		return nil, err
	}
	for _, st := range c.Collectors() {
		if st.Enabled {
			slog.Info("collector running", "collector", st.Name)
		}
	}
	return c, nil
}
