package collector

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/cilium/ebpf/btf"

	"github.com/cgscope/cgscope/cgroup"
	"github.com/cgscope/cgscope/internal/bpfstats"
	"github.com/cgscope/cgscope/internal/dutycycle"
)

// Config configures the per-cgroup collectors.
type Config struct {
	// Enabled says which collectors of Table to run, by name (the
	// --collector.<name> flags); absent ones do not.
	Enabled map[string]bool
	// Sizes of the BPF counter maps: cgroups, threads of the scheduler
	// collector, established TCP sockets.
	MaxCgroups, MaxTasks, MaxSockets int
	// CgroupRoot is the cgroup2 mount, where cgroup_skb programs attach.
	CgroupRoot string
	// BTF, when set, is the parsed kernel BTF shared with other loads.
	BTF *btf.Cache
	// FilesInterval is how often cgroup files are re-read in the
	// background; FilesBudget caps the reads one scrape may do itself.
	FilesInterval, FilesBudget time.Duration
}

// Set is the per-cgroup collectors as they run: the BPF counter programs,
// the cgroup-file cache, and the status of every collector of Table.
type Set struct {
	counters *Counters  // nil when no BPF collector runs
	files    *FileCache // nil when cgroupfs does not run
	status   []Status   // in Table order
}

// Start starts the enabled collectors; the file cache refreshes until ctx
// ends. A collector that cannot start is disabled with one log line; an
// error means the shared counter maps could not be created.
func Start(ctx context.Context, cfg Config) (*Set, error) {
	s := &Set{}
	files := Status{Name: CgroupFS, Reason: disabledByFlag}
	var reader *cgroup.FileReader
	if cfg.Enabled[CgroupFS] {
		var err error
		if reader, err = cgroup.NewFileReader(); err != nil {
			files.Reason = fmt.Sprintf("cgroup files unreadable: %v", err)
			slog.Warn("collector disabled: cgroup files unreadable", "collector", CgroupFS, "err", err)
		}
	}
	if anyBPF(cfg.Enabled) {
		ccfg := CountersConfig{MaxCgroups: cfg.MaxCgroups, MaxTasks: cfg.MaxTasks, MaxSockets: cfg.MaxSockets,
			Collectors: cfg.Enabled, CgroupRoot: cfg.CgroupRoot, BTF: cfg.BTF}
		// On hybrid hosts the threads' placements, which the task iterator
		// of the sched and faults collectors reports, tell which v1 memory
		// and cpu cgroups the reader may take for their cgroup2 namesakes.
		var mirrors *v1Mirrors
		if reader != nil && reader.Layout() == cgroup.LayoutHybrid && (cfg.Enabled[Sched] || cfg.Enabled[Faults]) {
			if m, err := cgroup.ReadMounts(); err == nil {
				mirrors = newV1Mirrors(m)
				ccfg.OnCollect = mirrors.observe
			}
		}
		c, err := NewCounters(ccfg)
		if err != nil {
			return nil, err
		}
		s.counters = c
		if mirrors != nil && c.collectsTasks() {
			reader.CheckMirrors(mirrors.checks())
		}
	}
	if reader != nil {
		s.files = NewFileCache(reader, cfg.FilesInterval, cfg.FilesBudget)
		go s.files.Run(ctx)
		files = Status{Name: CgroupFS, Enabled: true}
	}
	s.status = s.statusOf(files)
	for _, st := range s.status {
		if st.Enabled {
			slog.Info("collector running", "collector", st.Name)
		}
	}
	return s, nil
}

// Unavailable is a Set in which no collector runs, for why.
func Unavailable(why string) *Set {
	s := &Set{}
	for _, info := range Table {
		s.status = append(s.status, Status{Name: info.Name, Reason: why})
	}
	return s
}

func anyBPF(enabled map[string]bool) bool {
	for _, info := range Table {
		if info.Source == BPF && enabled[info.Name] {
			return true
		}
	}
	return false
}

// statusOf lists every collector of Table: the BPF ones as Counters says
// (disabled by flag when none was asked for), cgroupfs as files.
func (s *Set) statusOf(files Status) []Status {
	byName := map[string]Status{CgroupFS: files}
	if s.counters != nil {
		for _, st := range s.counters.Collectors() {
			byName[st.Name] = st
		}
	}
	out := make([]Status, 0, len(Table))
	for _, info := range Table {
		st, ok := byName[info.Name]
		if !ok {
			st = Status{Name: info.Name, Reason: disabledByFlag}
		}
		out = append(out, st)
	}
	return out
}

// Status reports every collector of Table, in its order.
func (s *Set) Status() []Status { return s.status }

// Running reports whether the named collector runs.
func (s *Set) Running(name string) bool {
	for _, st := range s.status {
		if st.Name == name {
			return st.Enabled
		}
	}
	return false
}

// Counters returns the BPF counters, nil when no BPF collector runs.
func (s *Set) Counters() *Counters { return s.counters }

// SwitchPrograms returns what the duty-cycle controller attaches part of
// the time for the per-cgroup metrics (the run-queue latency histogram's
// program), nil when there is none (the sched collector does not run).
func (s *Set) SwitchPrograms() dutycycle.Program {
	if s.counters == nil {
		return nil
	}
	return s.counters.SwitchPrograms()
}

// Files returns the cgroup-file cache, nil when cgroupfs does not run.
func (s *Set) Files() *FileCache { return s.files }

// ProgramStats returns bpf_stats of the running collectors' programs.
func (s *Set) ProgramStats() ([]bpfstats.Program, error) {
	if s.counters == nil {
		return nil, nil
	}
	return s.counters.ProgramStats()
}

// Close detaches the BPF programs and frees their maps. The file cache
// stops with the context Start was given.
func (s *Set) Close() error {
	if s.counters == nil {
		return nil
	}
	return s.counters.Close()
}
