package profiler

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/cgscope/cgscope/bpf"
)

// The off-CPU sampler (bpf/offcpu.bpf.c): where threads wait, and why. It
// runs at sched_switch, sharing the CPU sampler's stacks, unwind tables and
// process announcements, and the sampler's Drain returns its samples.
// Attached through internal/dutycycle, it runs part of the time on hosts
// that switch too often for it to run all the time within its budget.

// OffCPUReason is why a thread left the CPU (enum offcpu_reason).
type OffCPUReason uint8

// OffCPUReasons names the reasons, by value, as the off_cpu_reason label.
var OffCPUReasons = map[OffCPUReason]string{
	OffCPUReason(bpf.OffCPUOffcpuReasonOFFCPU_RUNNABLE):        "runnable",
	OffCPUReason(bpf.OffCPUOffcpuReasonOFFCPU_SLEEPING):        "sleeping",
	OffCPUReason(bpf.OffCPUOffcpuReasonOFFCPU_IO):              "io_wait",
	OffCPUReason(bpf.OffCPUOffcpuReasonOFFCPU_UNINTERRUPTIBLE): "uninterruptible",
	OffCPUReason(bpf.OffCPUOffcpuReasonOFFCPU_OTHER):           "other",
}

// String names the reason as OffCPUReasons does.
func (r OffCPUReason) String() string {
	if s, ok := OffCPUReasons[r]; ok {
		return s
	}
	return fmt.Sprintf("reason%d", r)
}

// OffCPUConfig sizes the off-CPU sampler.
type OffCPUConfig struct {
	// PerThread is how many switch-outs a second of one thread are
	// sampled at most: a thread that switches less is sampled every time.
	PerThread int
	// MaxSamples bounds the samples a second host-wide: above it, every
	// thread's rate is scaled down.
	MaxSamples int
	// MaxThreads bounds the threads whose state is kept (least recently
	// switched go first).
	MaxThreads int
	// BTF is the parsed kernel BTF shared with other loads (the program
	// reads a task's flags and I/O-wait bit with CO-RE).
	BTF *btf.Cache
}

// DefaultOffCPUConfig returns the sizes cgscope uses unless told otherwise.
func DefaultOffCPUConfig() OffCPUConfig {
	return OffCPUConfig{PerThread: 50, MaxSamples: 2000, MaxThreads: 65536}
}

// OffCPU is the loaded off-CPU sampler; a dutycycle.Program.
type OffCPU struct {
	cfg  OffCPUConfig
	objs offcpuObjects

	mu      sync.Mutex // guards link, scale and the counts below
	link    link.Link
	scale   float64 // host-wide sampling factor, 0..1
	sampled uint64  // OFFCPU_STAT_SAMPLED at the last Start
	since   time.Time
}

type offcpuObjects struct {
	Switch *ebpf.Program `ebpf:"offcpu_switch"`
	Tasks  *ebpf.Map     `ebpf:"offcpu_tasks"`
	Config *ebpf.Map     `ebpf:"offcpu_config"`
	Stats  *ebpf.Map     `ebpf:"offcpu_stats"`
}

func (o *offcpuObjects) Close() error {
	return errors.Join(o.Switch.Close(), o.Tasks.Close(), o.Config.Close(), o.Stats.Close())
}

// LoadOffCPU loads the off-CPU sampler against the CPU sampler's maps; it
// samples once Start attaches it. Close the Sampler after it.
func (s *Sampler) LoadOffCPU(cfg OffCPUConfig) (*OffCPU, error) {
	if cfg.PerThread < 1 || cfg.MaxSamples < 1 || cfg.MaxThreads < 64 {
		return nil, fmt.Errorf("off-CPU sampler: per-thread %d, max samples %d, max threads %d: want at least 1, 1 and 64",
			cfg.PerThread, cfg.MaxSamples, cfg.MaxThreads)
	}
	spec, err := bpf.LoadOffCPU()
	if err != nil {
		return nil, fmt.Errorf("reading embedded BPF object: %w", err)
	}
	shared := map[string]*ebpf.Map{
		bpf.OffCPUMapStacks0: s.objs.Stacks0, bpf.OffCPUMapStacks1: s.objs.Stacks1, bpf.OffCPUMapStacks: s.objs.Stacks,
		bpf.OffCPUMapControl: s.objs.Control, bpf.OffCPUMapStats: s.objs.Stats, bpf.OffCPUMapKnownProcs: s.objs.KnownProcs,
		bpf.OffCPUMapProcEvents: s.objs.ProcEvents, bpf.OffCPUMapScratch: s.objs.Scratch,
		bpf.OffCPUMapOffcpuCounts0: s.objs.OffcpuCounts0, bpf.OffCPUMapOffcpuCounts1: s.objs.OffcpuCounts1,
		bpf.OffCPUMapOffcpuCounts: s.objs.OffcpuCounts, bpf.OffCPUMapOffcpuStacks: s.objs.OffcpuStacks,
		bpf.OffCPUMapUnwindProcs: s.objs.UnwindProcs, bpf.OffCPUMapUnwindTables: s.objs.UnwindTables,
		bpf.OffCPUMapUnwindIndex: s.objs.UnwindIndex, bpf.OffCPUMapUnwindLeaves: s.objs.UnwindLeaves,
		bpf.OffCPUMapUnwindRegs: s.objs.UnwindRegs,
	}
	for name, m := range shared {
		ms := spec.Maps[name]
		ms.MaxEntries = m.MaxEntries() // sized by the sampler's Config
		if ms.InnerMap != nil {
			ms.InnerMap.MaxEntries = shared[name+"0"].MaxEntries()
		}
	}
	spec.Maps[bpf.OffCPUMapOffcpuTasks].MaxEntries = uint32(cfg.MaxThreads)
	o := &OffCPU{cfg: cfg, scale: 1}
	if err := spec.LoadAndAssign(&o.objs, &ebpf.CollectionOptions{MapReplacements: shared, Cache: cfg.BTF}); err != nil {
		return nil, fmt.Errorf("loading the off-CPU sampler: %w", err)
	}
	if err := o.configure(math.MaxUint64, 1, false); err != nil {
		o.objs.Close()
		return nil, err
	}
	s.offCPU.Store(o)
	return o, nil
}

// configure sets what the program reads at every switch.
func (o *OffCPU) configure(until uint64, duty float64, sampling bool) error {
	set := func(i bpf.OffCPUOffcpuConfigIndex, v uint64) error {
		return o.objs.Config.Update(uint32(i), v, ebpf.UpdateAny)
	}
	return errors.Join(
		set(bpf.OffCPUOffcpuConfigIndexOFFCPU_CFG_SCALE, uint64(o.scale*65536)),
		set(bpf.OffCPUOffcpuConfigIndexOFFCPU_CFG_PER_TASK, uint64(o.cfg.PerThread)),
		set(bpf.OffCPUOffcpuConfigIndexOFFCPU_CFG_SAMPLING, boolU64(sampling)),
		set(bpf.OffCPUOffcpuConfigIndexOFFCPU_CFG_SINCE, monotonicNow()),
		set(bpf.OffCPUOffcpuConfigIndexOFFCPU_CFG_DUTY, uint64(65536/max(duty, 1.0/65536))),
		set(bpf.OffCPUOffcpuConfigIndexOFFCPU_CFG_UNTIL, until),
	)
}

// sampleShare is the part of a window in which switch-outs are sampled;
// in the rest the program only finishes the samples it took, so that
// blocked times up to a fifth of the window are seen whole.
const sampleShare = 0.8

// Start attaches the program for a window, the fraction duty of the time:
// samples taken before (whose switch-in it did not see) are dropped, new
// ones are weighted by 1/duty.
func (o *OffCPU) Start(window time.Duration, duty float64) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.adjustScale()
	until := uint64(math.MaxUint64)
	if duty < 1 {
		until = monotonicNow() + uint64(sampleShare*float64(window))
		duty *= sampleShare
	}
	if err := o.configure(until, duty, true); err != nil {
		return err
	}
	if o.link != nil {
		return nil
	}
	l, err := link.Tracepoint("sched", "sched_switch", o.objs.Switch, nil)
	if err != nil {
		return fmt.Errorf("attaching the off-CPU sampler to sched:sched_switch: %w", err)
	}
	o.link = l
	return nil
}

// adjustScale keeps the host-wide samples a second near MaxSamples: the
// factor follows the rate since the last window. o.mu is held.
func (o *OffCPU) adjustScale() {
	sampled := o.stat(bpf.OffCPUOffcpuStatIndexOFFCPU_STAT_SAMPLED)
	now := time.Now()
	if !o.since.IsZero() {
		rate := float64(sampled-o.sampled) / now.Sub(o.since).Seconds()
		if rate > float64(o.cfg.MaxSamples) {
			o.scale = max(o.scale*float64(o.cfg.MaxSamples)/rate, 1.0/65536)
		} else if rate < float64(o.cfg.MaxSamples)/2 {
			o.scale = min(1, o.scale*2)
		}
	}
	o.sampled, o.since = sampled, now
}

// Stop detaches the program.
func (o *OffCPU) Stop() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.link == nil {
		return nil
	}
	err := o.link.Close()
	o.link = nil
	return err
}

// Runtime is the BPF time the program used so far.
func (o *OffCPU) Runtime() time.Duration {
	st, err := o.objs.Switch.Stats()
	if err != nil {
		return 0
	}
	return st.Runtime
}

// Close detaches and frees the program and its own maps.
func (o *OffCPU) Close() error {
	return errors.Join(o.Stop(), o.objs.Close())
}

// OffCPUStats are the off-CPU sampler's counters since load.
type OffCPUStats struct {
	Switches, Sampled, Finished, Censored, CountsFull uint64
	Scale                                            float64
}

// Stats reads the program's counters.
func (o *OffCPU) Stats() OffCPUStats {
	o.mu.Lock()
	scale := o.scale
	o.mu.Unlock()
	return OffCPUStats{
		Switches:   o.stat(bpf.OffCPUOffcpuStatIndexOFFCPU_STAT_SWITCHES),
		Sampled:    o.stat(bpf.OffCPUOffcpuStatIndexOFFCPU_STAT_SAMPLED),
		Finished:   o.stat(bpf.OffCPUOffcpuStatIndexOFFCPU_STAT_FINISHED),
		Censored:   o.stat(bpf.OffCPUOffcpuStatIndexOFFCPU_STAT_CENSORED),
		CountsFull: o.stat(bpf.OffCPUOffcpuStatIndexOFFCPU_STAT_COUNTS_FULL),
		Scale:      scale,
	}
}

func (o *OffCPU) stat(i bpf.OffCPUOffcpuStatIndex) uint64 {
	var perCPU []uint64
	if err := o.objs.Stats.Lookup(uint32(i), &perCPU); err != nil {
		return 0
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n
}

// monotonicNow is bpf_ktime_get_ns()'s clock.
func monotonicNow() uint64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

func boolU64(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}
