package collector

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"

	"github.com/cgscope/cgscope/bpf"
	"github.com/cgscope/cgscope/internal/bpfstats"
)

// RunqBuckets is the number of run-queue latency histogram buckets. Bucket
// i counts waits shorter than 2^i µs (and at least 2^(i-1) µs); the last
// bucket counts everything longer.
const RunqBuckets = len(bpf.CgroupStatsCgroupCounters{}.RunqHist)

// Usage is what the BPF collectors counted for one cgroup since they
// were attached, summed over CPUs.
type Usage struct {
	CPUSeconds          float64
	RunqWaitSeconds     float64
	RunqHistogram       [RunqBuckets]uint64
	SwitchesVoluntary   uint64
	SwitchesInvoluntary uint64
	PageFaults          uint64
	OOMKills            uint64
	RxBytes, TxBytes    uint64
	RxPackets           uint64
	TxPackets           uint64
	TCPOpenedOutbound   uint64
	TCPOpenedInbound    uint64
	TCPConnectFailures  uint64
	TCPClosed           uint64
	TCPRetransmits      uint64
	TCPActive           int64
}

// DropReasons lists what the counter programs may lose, in index order.
var DropReasons = []string{"cgroups_map_full", "tasks_map_full", "sockets_map_full"}

// CountersConfig sizes the counter maps and picks the BPF collectors.
type CountersConfig struct {
	MaxCgroups int // cgroups with counters; more are counted as dropped
	MaxTasks   int // threads tracked by the scheduler collector
	MaxSockets int // established TCP sockets tracked for active connections
	// Collectors says which collectors to run, by name; absent ones do not.
	Collectors map[string]bool
	// CgroupRoot is the cgroup2 mount, where cgroup_skb programs attach.
	CgroupRoot string
	// BTF, when set, is the parsed kernel BTF shared with other loads.
	BTF *btf.Cache
}

// Status says whether a collector runs, and why not.
type Status struct {
	Name    string
	Enabled bool   // asked for and running
	Reason  string // why it is not running: "disabled by flag", or the error
}

// disabledByFlag is the Reason of a collector switched off.
const disabledByFlag = "disabled by flag"

// Counters owns the per-cgroup counter programs and their maps.
type Counters struct {
	maps     bpf.CgroupStatsMaps
	mu       sync.Mutex // guards programs, links, status
	programs map[string]*ebpf.Program
	links    []link.Link
	status   []Status
}

// NewCounters loads the shared maps, then loads and attaches each enabled
// BPF collector of Table on its own: a kernel without one attach point
// loses that collector only, with one log line, and the others keep running.
func NewCounters(cfg CountersConfig) (*Counters, error) {
	spec, err := bpf.LoadCgroupStats()
	if err != nil {
		return nil, fmt.Errorf("reading embedded BPF object: %w", err)
	}
	return newCounters(cfg, spec)
}

func newCounters(cfg CountersConfig, spec *ebpf.CollectionSpec) (*Counters, error) {
	spec.Maps[bpf.CgroupStatsMapCountersByCgroup].MaxEntries = uint32(cfg.MaxCgroups)
	spec.Maps[bpf.CgroupStatsMapTasks].MaxEntries = uint32(cfg.MaxTasks)
	spec.Maps[bpf.CgroupStatsMapActiveSockets].MaxEntries = uint32(cfg.MaxSockets)

	c := &Counters{programs: map[string]*ebpf.Program{}}
	if cfg.BTF == nil {
		cfg.BTF = btf.NewCache() // one parse of the kernel BTF for every collector
	}
	if err := spec.LoadAndAssign(&c.maps, &ebpf.CollectionOptions{Cache: cfg.BTF}); err != nil {
		return nil, fmt.Errorf("creating per-cgroup counter maps: %w", err)
	}
	shared := map[string]*ebpf.Map{
		bpf.CgroupStatsMapCountersByCgroup: c.maps.CountersByCgroup,
		bpf.CgroupStatsMapTasks:            c.maps.Tasks,
		bpf.CgroupStatsMapActiveSockets:    c.maps.ActiveSockets,
		bpf.CgroupStatsMapCgroupStats:      c.maps.CgroupStats,
	}
	for _, info := range Table {
		if info.Source != BPF {
			continue
		}
		st := Status{Name: info.Name, Reason: disabledByFlag}
		if cfg.Collectors[info.Name] {
			err := c.start(spec, shared, info, cfg)
			st.Enabled, st.Reason = err == nil, errorReason(err)
			if err != nil {
				logDisabled(info.Name, err)
			}
		}
		c.status = append(c.status, st)
	}
	return c, nil
}

func errorReason(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// start loads the collector's programs against the shared maps and attaches
// them; on any error, nothing of it stays loaded.
func (c *Counters) start(spec *ebpf.CollectionSpec, shared map[string]*ebpf.Map, info *Info, cfg CountersConfig) error {
	only := spec.Copy()
	for prog := range only.Programs {
		if !slices.Contains(info.Programs, prog) {
			delete(only.Programs, prog)
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(only, ebpf.CollectionOptions{MapReplacements: shared, Cache: cfg.BTF})
	if err != nil {
		return fmt.Errorf("loading: %w", err)
	}
	var links []link.Link
	for _, prog := range info.Programs {
		l, err := attachCounterProgram(spec.Programs[prog], coll.Programs[prog], cfg.CgroupRoot)
		if err != nil {
			for _, l := range links {
				l.Close()
			}
			coll.Close()
			return fmt.Errorf("attaching %s: %w", prog, err)
		}
		links = append(links, l)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.links = append(c.links, links...)
	for _, prog := range info.Programs {
		c.programs[prog] = coll.DetachProgram(prog)
	}
	coll.Close() // the programs and shared maps live on; this closes .rodata's fd copy only
	return nil
}

// attachCounterProgram attaches by the program's section name.
func attachCounterProgram(spec *ebpf.ProgramSpec, prog *ebpf.Program, cgroupRoot string) (link.Link, error) {
	switch spec.Type {
	case ebpf.TracePoint:
		// SectionName is "tracepoint/<group>/<name>".
		group, tp, ok := strings.Cut(strings.TrimPrefix(spec.SectionName, "tracepoint/"), "/")
		if !ok {
			return nil, fmt.Errorf("bad tracepoint section %q", spec.SectionName)
		}
		l, err := link.Tracepoint(group, tp, prog, nil)
		if err != nil && !tracefsMounted() {
			return nil, fmt.Errorf("%w (%w)", err, errNoTracefs)
		}
		return l, err
	case ebpf.Tracing:
		return link.AttachTracing(link.TracingOptions{Program: prog})
	case ebpf.CGroupSKB:
		if cgroupRoot == "" {
			return nil, errors.New("no cgroup2 hierarchy mounted")
		}
		return link.AttachCgroup(link.CgroupOptions{Path: cgroupRoot, Attach: spec.AttachType, Program: prog})
	}
	return nil, fmt.Errorf("no attach method for program type %s", spec.Type)
}

// tracefsMounted reports whether tracepoints can be looked up by name.
func tracefsMounted() bool {
	for _, dir := range []string{"/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"} {
		if _, err := os.Stat(dir); err == nil {
			return true
		}
	}
	return false
}

// Collectors reports every BPF collector and whether it runs.
func (c *Counters) Collectors() []Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.status)
}

// Read returns the counters of every cgroup seen, keyed by cgroup2 id. It
// reads the map in batches: one syscall per few hundred cgroups rather than
// two per cgroup.
func (c *Counters) Read() (map[uint64]*Usage, error) {
	const batch = 256
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, err
	}
	out := map[uint64]*Usage{}
	keys := make([]uint64, batch)
	values := make([]bpf.CgroupStatsCgroupCounters, batch*ncpu)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := c.maps.CountersByCgroup.BatchLookup(&cursor, keys, values, nil)
		for i := 0; i < n; i++ {
			u := &Usage{}
			for cpu := 0; cpu < ncpu; cpu++ {
				u.add(&values[i*ncpu+cpu])
			}
			out[keys[i]] = u
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading per-cgroup counters: %w", err)
		}
	}
}

// add sums one CPU's kernel counters into u.
func (u *Usage) add(v *bpf.CgroupStatsCgroupCounters) {
	u.Add(&Usage{
		CPUSeconds:          float64(v.CpuNs) / 1e9,
		RunqWaitSeconds:     float64(v.RunqWaitNs) / 1e9,
		RunqHistogram:       v.RunqHist,
		SwitchesVoluntary:   v.SwitchesVoluntary,
		SwitchesInvoluntary: v.SwitchesInvoluntary,
		PageFaults:          v.PageFaults,
		OOMKills:            v.OomKills,
		RxBytes:             v.RxBytes,
		TxBytes:             v.TxBytes,
		RxPackets:           v.RxPackets,
		TxPackets:           v.TxPackets,
		TCPOpenedOutbound:   v.TcpOpenedOutbound,
		TCPOpenedInbound:    v.TcpOpenedInbound,
		TCPConnectFailures:  v.TcpConnectFailures,
		TCPClosed:           v.TcpClosed,
		TCPRetransmits:      v.TcpRetransmits,
		TCPActive:           v.TcpActive,
	})
}

// Forget deletes the counters of cgroups that no longer exist, keeping the
// map bounded by the live cgroups.
func (c *Counters) Forget(ids []uint64) error {
	var errs []error
	for _, id := range ids {
		if err := c.maps.CountersByCgroup.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Dropped returns what the counter programs lost, by reason.
func (c *Counters) Dropped() (map[string]uint64, error) {
	out := make(map[string]uint64, len(DropReasons))
	for i, reason := range DropReasons {
		var perCPU []uint64
		if err := c.maps.CgroupStats.Lookup(uint32(i), &perCPU); err != nil {
			return nil, fmt.Errorf("reading counter drops: %w", err)
		}
		for _, v := range perCPU {
			out[reason] += v
		}
	}
	return out, nil
}

// ProgramStats returns bpf_stats of every attached counter program.
func (c *Counters) ProgramStats() ([]bpfstats.Program, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bpfstats.Of(c.programs)
}

// Close detaches every program and frees the maps.
func (c *Counters) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for _, l := range c.links {
		errs = append(errs, l.Close())
	}
	c.links = nil
	for _, p := range c.programs {
		errs = append(errs, p.Close())
	}
	c.programs = map[string]*ebpf.Program{}
	errs = append(errs, c.maps.Close())
	return errors.Join(errs...)
}

// Add sums o into u, for cgroups exported under one label.
func (u *Usage) Add(o *Usage) {
	u.CPUSeconds += o.CPUSeconds
	u.RunqWaitSeconds += o.RunqWaitSeconds
	for i, n := range o.RunqHistogram {
		u.RunqHistogram[i] += n
	}
	u.SwitchesVoluntary += o.SwitchesVoluntary
	u.SwitchesInvoluntary += o.SwitchesInvoluntary
	u.PageFaults += o.PageFaults
	u.OOMKills += o.OOMKills
	u.RxBytes += o.RxBytes
	u.TxBytes += o.TxBytes
	u.RxPackets += o.RxPackets
	u.TxPackets += o.TxPackets
	u.TCPOpenedOutbound += o.TCPOpenedOutbound
	u.TCPOpenedInbound += o.TCPOpenedInbound
	u.TCPConnectFailures += o.TCPConnectFailures
	u.TCPClosed += o.TCPClosed
	u.TCPRetransmits += o.TCPRetransmits
	u.TCPActive += o.TCPActive
}
