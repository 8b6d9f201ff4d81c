package collector

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"

	"github.com/cgscope/cgscope/bpf"
	"github.com/cgscope/cgscope/internal/bpfstats"
	"github.com/cgscope/cgscope/internal/dutycycle"
)

// RunqBuckets is the number of run-queue latency histogram buckets. Bucket
// i counts waits shorter than 2^i µs (and at least 2^(i-1) µs); the last
// bucket counts everything longer.
const RunqBuckets = len(bpf.CgroupStatsCgroupCounters{}.RunqHist)

// runqWeightShift is RUNQ_WEIGHT_SHIFT: the kernel's histogram counts are
// in units of 2^-runqWeightShift.
const runqWeightShift = 16

// Usage is what the BPF collectors counted for one cgroup, summed over
// CPUs, since the counters began (NewCounters): every figure was 0 then.
// The scheduler and fault figures are the cgroup's own threads', as of the
// last Read: all of a thread's since it began if it began after the
// counters, else what it did after the first collection that saw it. The
// others count events since the programs were attached.
type Usage struct {
	CPUSeconds      float64
	RunqWaitSeconds float64
	// RunqHistogram estimates how many run-queue waits fell in each bucket:
	// the waits seen while the histogram's program was attached, each
	// weighted by the inverse of the fraction of time it was.
	RunqHistogram [RunqBuckets]uint64
	// RunqHistogramSumSeconds is the histogram's sum: the lengths of the
	// same waits, weighted as their counts, so an estimate of their total
	// as the counts are of their number (RunqWaitSeconds is the exact
	// total of all waits).
	RunqHistogramSumSeconds float64
	// RunqSampled says the histogram's program is loaded (it counts only
	// while the duty-cycle controller attaches it).
	RunqSampled         bool
	SwitchesVoluntary   uint64
	SwitchesInvoluntary uint64
	PageFaultsMinor     uint64
	PageFaultsMajor     uint64
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
	MaxTasks   int // threads whose charged figures are kept between collections
	MaxSockets int // established TCP sockets tracked for active connections
	// Collectors says which collectors to run, by name; absent ones do not.
	Collectors map[string]bool
	// CgroupRoot is the cgroup2 mount, where cgroup_skb programs attach.
	CgroupRoot string
	// OnCollect, when set, is given after each collection the cgroups the
	// threads were in, v1 memory and cpu ones included (for hybrid hosts,
	// where they tell which v1 cgroups mirror cgroup2 ones).
	OnCollect func([]TaskCgroups)
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
	maps bpf.CgroupStatsMaps

	mu       sync.Mutex // guards programs, links, status, tasks, runq
	programs map[string]*ebpf.Program
	links    []link.Link
	status   []Status
	tasks    *link.Iter   // count_tasks, nil when no collector reads thread figures
	runq     *runqSampler // nil when the histogram's program is not loaded

	collectMu sync.Mutex // one collection at a time
	onCollect func([]TaskCgroups)
}

// TaskCgroups are the cgroups one or more threads were in at a collection,
// by id: cgroup2, and the v1 memory and cpu hierarchies (0 when the
// controller is not on a v1 hierarchy).
type TaskCgroups struct {
	Cgroup, Memory, CPU uint64
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
	if err := spec.Variables[bpf.CgroupStatsVarReportV1Cgroups].Set(cfg.OnCollect != nil); err != nil {
		return nil, err
	}
	// The counters begin now, before anything is attached: a thread born
	// from now on is counted from its birth, an older one from the first
	// collection (below), so that counters start near 0 at every start.
	if err := spec.Variables[bpf.CgroupStatsVarCountingSince].Set(monotonicNow()); err != nil {
		return nil, err
	}

	c := &Counters{programs: map[string]*ebpf.Program{}, onCollect: cfg.OnCollect}
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
		bpf.CgroupStatsMapRunqConfig:       c.maps.RunqConfig,
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
			} else {
				c.startSampled(spec, shared, info, cfg)
			}
		}
		c.status = append(c.status, st)
	}
	if c.tasks != nil && nestedPIDNamespace() {
		slog.Warn("cgscope runs in a PID namespace of its own: the task iterator sees only its threads, so sched and faults figures miss the host's; run it in the host's (hostPID)")
	}
	if c.tasks != nil {
		// A first collection now takes the figures of the threads alive
		// as where they begin to count: what they did before cgscope
		// started is left out (it would make a restart look like an
		// increase of their whole lives), what they do from now on is
		// counted.
		if err := c.collect(); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

func errorReason(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// start loads the collector's programs that are not loaded yet (another
// collector may share them) against the shared maps and attaches them; on
// any error, nothing of it stays loaded.
func (c *Counters) start(spec *ebpf.CollectionSpec, shared map[string]*ebpf.Map, info *Info, cfg CountersConfig) error {
	c.mu.Lock()
	var missing []string
	for _, prog := range info.Programs {
		if c.programs[prog] == nil {
			missing = append(missing, prog)
		}
	}
	c.mu.Unlock()
	if len(missing) == 0 {
		return nil
	}
	coll, err := loadOnly(spec, shared, missing, cfg.BTF)
	if err != nil {
		return fmt.Errorf("loading: %w", err)
	}
	var links []link.Link
	var tasks *link.Iter
	for _, prog := range missing {
		l, err := attachCounterProgram(spec.Programs[prog], coll.Programs[prog], cfg.CgroupRoot)
		if err != nil {
			for _, l := range links {
				l.Close()
			}
			coll.Close()
			return fmt.Errorf("attaching %s: %w", prog, err)
		}
		links = append(links, l)
		if it, ok := l.(*link.Iter); ok {
			tasks = it
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.links = append(c.links, links...)
	if tasks != nil {
		c.tasks = tasks
	}
	for _, prog := range missing {
		c.programs[prog] = coll.DetachProgram(prog)
	}
	coll.Close() // the programs and shared maps live on; this closes .rodata's fd copy only
	return nil
}

// startSampled loads the collector's programs that the duty-cycle
// controller attaches (SwitchPrograms). One that cannot load costs its
// figures only, with one log line; the collector keeps running.
func (c *Counters) startSampled(spec *ebpf.CollectionSpec, shared map[string]*ebpf.Map, info *Info, cfg CountersConfig) {
	if info.Sampled == "" {
		return
	}
	coll, err := loadOnly(spec, shared, []string{info.Sampled}, cfg.BTF)
	if err != nil {
		slog.Warn("run-queue latency histogram disabled: its program does not load; the rest of the collector keeps running",
			"collector", info.Name, "err", err)
		return
	}
	prog := coll.DetachProgram(info.Sampled)
	coll.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.programs[info.Sampled] = prog
	c.runq = &runqSampler{prog: prog, config: c.maps.RunqConfig, stats: c.maps.CgroupStats}
}

// loadOnly loads the named programs of spec against the shared maps.
func loadOnly(spec *ebpf.CollectionSpec, shared map[string]*ebpf.Map, programs []string, cache *btf.Cache) (*ebpf.Collection, error) {
	only := spec.Copy()
	for prog := range only.Programs {
		if !slices.Contains(programs, prog) {
			delete(only.Programs, prog)
		}
	}
	return ebpf.NewCollectionWithOptions(only, ebpf.CollectionOptions{MapReplacements: shared, Cache: cache})
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
		if spec.AttachType == ebpf.AttachTraceIter {
			return link.AttachIter(link.IterOptions{Program: prog})
		}
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

// SwitchPrograms returns the run-queue latency histogram's program for the
// duty-cycle controller, which attaches it part of the time; nil when the
// sched collector does not run or its histogram could not load.
func (c *Counters) SwitchPrograms() dutycycle.Program {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.runq == nil {
		return nil // not a nil *runqSampler in an interface
	}
	return c.runq
}

// collectsTasks reports whether collections run count_tasks (the sched or
// faults collector runs).
func (c *Counters) collectsTasks() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tasks != nil
}

// collect runs count_tasks, which charges every thread's figures since the
// last collection to its cgroup, and hands the threads' cgroups it reports
// to onCollect.
func (c *Counters) collect() error {
	c.collectMu.Lock()
	defer c.collectMu.Unlock()
	c.mu.Lock()
	tasks := c.tasks
	c.mu.Unlock()
	if tasks == nil {
		return nil
	}
	r, err := tasks.Open()
	if err != nil {
		return fmt.Errorf("collecting thread figures: %w", err)
	}
	defer r.Close()
	out, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("collecting thread figures: %w", err)
	}
	if c.onCollect != nil {
		c.onCollect(parseTaskCgroups(out))
	}
	return nil
}

// parseTaskCgroups decodes count_tasks' output: struct task_cgroups
// records.
func parseTaskCgroups(out []byte) []TaskCgroups {
	const size = 24
	recs := make([]TaskCgroups, 0, len(out)/size)
	for ; len(out) >= size; out = out[size:] {
		e := binary.NativeEndian
		recs = append(recs, TaskCgroups{Cgroup: e.Uint64(out), Memory: e.Uint64(out[8:]), CPU: e.Uint64(out[16:])})
	}
	return recs
}

// nestedPIDNamespace reports whether this process is in a PID namespace
// below the host's: its NSpid line then has more than one id. A task
// iterator walks the tasks of its opener's namespace only.
func nestedPIDNamespace() bool {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if ids, ok := strings.CutPrefix(line, "NSpid:"); ok {
			return len(strings.Fields(ids)) > 1
		}
	}
	return false
}

// Read collects the threads' figures, then returns the counters of every
// cgroup seen, keyed by cgroup2 id. It reads the map in batches: one
// syscall per few hundred cgroups rather than two per cgroup.
func (c *Counters) Read() (map[uint64]*Usage, error) {
	if err := c.collect(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	sampled := c.runq != nil
	c.mu.Unlock()
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
			var sum bpf.CgroupStatsCgroupCounters
			for cpu := 0; cpu < ncpu; cpu++ {
				addCounters(&sum, &values[i*ncpu+cpu])
			}
			u := toUsage(&sum)
			u.RunqSampled = sampled
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

// addCounters sums one CPU's kernel counters into sum.
func addCounters(sum, v *bpf.CgroupStatsCgroupCounters) {
	sum.CpuNs += v.CpuNs
	sum.RunqWaitNs += v.RunqWaitNs
	sum.SwitchesVoluntary += v.SwitchesVoluntary
	sum.SwitchesInvoluntary += v.SwitchesInvoluntary
	sum.PageFaultsMinor += v.PageFaultsMinor
	sum.PageFaultsMajor += v.PageFaultsMajor
	for i, n := range v.RunqHist {
		sum.RunqHist[i] += n
	}
	sum.RunqHistSumNs += v.RunqHistSumNs
	sum.OomKills += v.OomKills
	sum.RxBytes += v.RxBytes
	sum.TxBytes += v.TxBytes
	sum.RxPackets += v.RxPackets
	sum.TxPackets += v.TxPackets
	sum.TcpOpenedOutbound += v.TcpOpenedOutbound
	sum.TcpOpenedInbound += v.TcpOpenedInbound
	sum.TcpConnectFailures += v.TcpConnectFailures
	sum.TcpClosed += v.TcpClosed
	sum.TcpRetransmits += v.TcpRetransmits
	sum.TcpActive += v.TcpActive
}

// toUsage converts a cgroup's kernel counters, summed over CPUs.
func toUsage(v *bpf.CgroupStatsCgroupCounters) *Usage {
	u := &Usage{
		CPUSeconds:              float64(v.CpuNs) / 1e9,
		RunqWaitSeconds:         float64(v.RunqWaitNs) / 1e9,
		RunqHistogramSumSeconds: float64(v.RunqHistSumNs) / 1e9,
		SwitchesVoluntary:       v.SwitchesVoluntary,
		SwitchesInvoluntary:     v.SwitchesInvoluntary,
		PageFaultsMinor:         v.PageFaultsMinor,
		PageFaultsMajor:         v.PageFaultsMajor,
		OOMKills:                v.OomKills,
		RxBytes:                 v.RxBytes,
		TxBytes:                 v.TxBytes,
		RxPackets:               v.RxPackets,
		TxPackets:               v.TxPackets,
		TCPOpenedOutbound:       v.TcpOpenedOutbound,
		TCPOpenedInbound:        v.TcpOpenedInbound,
		TCPConnectFailures:      v.TcpConnectFailures,
		TCPClosed:               v.TcpClosed,
		TCPRetransmits:          v.TcpRetransmits,
		TCPActive:               v.TcpActive,
	}
	// Rounding a growing weight never makes the count shrink.
	for i, w := range v.RunqHist {
		u.RunqHistogram[i] = (w + 1<<(runqWeightShift-1)) >> runqWeightShift
	}
	return u
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
		n, err := readStat(c.maps.CgroupStats, bpf.CgroupStatsCgroupStatIndex(i))
		if err != nil {
			return nil, fmt.Errorf("reading counter drops: %w", err)
		}
		out[reason] = n
	}
	return out, nil
}

// readStat sums one of the per-CPU cgroup_stats over CPUs.
func readStat(stats *ebpf.Map, i bpf.CgroupStatsCgroupStatIndex) (uint64, error) {
	var perCPU []uint64
	if err := stats.Lookup(uint32(i), &perCPU); err != nil {
		return 0, err
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n, nil
}

// ProgramStats returns bpf_stats of every loaded counter program, the
// duty-cycled one included.
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
	if c.runq != nil {
		errs = append(errs, c.runq.close())
	}
	for _, l := range c.links {
		errs = append(errs, l.Close())
	}
	c.links, c.tasks = nil, nil
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
	u.RunqHistogramSumSeconds += o.RunqHistogramSumSeconds
	u.RunqSampled = u.RunqSampled || o.RunqSampled
	u.SwitchesVoluntary += o.SwitchesVoluntary
	u.SwitchesInvoluntary += o.SwitchesInvoluntary
	u.PageFaultsMinor += o.PageFaultsMinor
	u.PageFaultsMajor += o.PageFaultsMajor
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
