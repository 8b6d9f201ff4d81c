package profiler

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"

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
	// PerThread is how many samples a second of a thread's time off the
	// CPU are taken: a switch-out is sampled with the probability
	// PerThread × the thread's average blocked time (at most 1).
	PerThread int
	// MaxSamples bounds the samples a second host-wide: above it, every
	// thread's rate is scaled down.
	MaxSamples int
	// SampleBudget bounds the time a second spent taking stacks (measured
	// in the program): samples are scaled down to fit it too. Zero: no
	// bound but MaxSamples.
	SampleBudget time.Duration
	// BTF is the parsed kernel BTF shared with other loads (the program
	// reads a task's flags and I/O-wait bit with CO-RE).
	BTF *btf.Cache
}

// DefaultOffCPUConfig returns the sizes cgscope uses unless told otherwise.
func DefaultOffCPUConfig() OffCPUConfig {
	return OffCPUConfig{PerThread: 50, MaxSamples: 1000}
}

// OffCPU is the loaded off-CPU sampler; a dutycycle.Program.
type OffCPU struct {
	cfg  OffCPUConfig
	objs offcpuObjects

	mu     sync.Mutex // guards what follows
	link   link.Link
	halted bool    // the sampler stopped: Start attaches no more
	scale  float64 // host-wide sampling factor, 0..1
	// settings are what the program was last configured with.
	settings bpf.OffCPUOffcpuConfig
	sampled  uint64        // OFFCPU_STAT_SAMPLED at the last Start
	spent    time.Duration // OFFCPU_STAT_SAMPLE_NS at the last Start
	since    time.Time
	// sampleCost is what taking one sample's stacks cost, on average
	// since the last Start.
	sampleCost time.Duration

	closeOnce sync.Once
}

type offcpuObjects struct {
	Switch *ebpf.Program  `ebpf:"offcpu_switch"`
	Tasks  *ebpf.Map      `ebpf:"offcpu_tasks"`
	Stats  *ebpf.Map      `ebpf:"offcpu_stats"`
	Config *ebpf.Variable `ebpf:"offcpu_cfg"`
	// SampleUntil is when sampling ends in the current window, set by the
	// program at the window's first switch.
	SampleUntil *ebpf.Variable `ebpf:"offcpu_sample_until"`
}

func (o *offcpuObjects) Close() error {
	return errors.Join(o.Switch.Close(), o.Tasks.Close(), o.Stats.Close())
}

// LoadOffCPU loads the off-CPU sampler against the CPU sampler's maps; it
// samples once Start attaches it. Close the Sampler after it.
func (s *Sampler) LoadOffCPU(cfg OffCPUConfig) (*OffCPU, error) {
	if cfg.PerThread < 1 || cfg.MaxSamples < 1 {
		return nil, fmt.Errorf("off-CPU sampler: per-thread %d, max samples %d: want at least 1 each",
			cfg.PerThread, cfg.MaxSamples)
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
		bpf.OffCPUMapUnwindRegs:  s.objs.UnwindRegs,
		bpf.OffCPUMapInterpProcs: s.objs.InterpProcs, bpf.OffCPUMapInterpFrame: s.objs.InterpFrame,
	}
	for name, m := range shared {
		ms := spec.Maps[name]
		ms.MaxEntries = m.MaxEntries() // sized by the sampler's Config
		if ms.InnerMap != nil {
			ms.InnerMap.MaxEntries = shared[name+"0"].MaxEntries()
		}
	}
	o := &OffCPU{cfg: cfg, scale: 1}
	if err := spec.LoadAndAssign(&o.objs, &ebpf.CollectionOptions{MapReplacements: shared, Cache: cfg.BTF}); err != nil {
		return nil, fmt.Errorf("loading the off-CPU sampler: %w", err)
	}
	o.cfg.BTF = nil // needed only to load: let it be freed
	o.settings = bpf.OffCPUOffcpuConfig{Scale: 65536, PerTask: uint64(cfg.PerThread), Duty: 65536}
	if err := o.configure(o.settings); err != nil {
		o.objs.Close()
		return nil, err
	}
	s.offCPU.Store(o)
	return o, nil
}

// configure sets what the program reads at every switch. o.mu is held.
func (o *OffCPU) configure(cfg bpf.OffCPUOffcpuConfig) error {
	if err := o.objs.Config.Set(cfg); err != nil {
		return fmt.Errorf("configuring the off-CPU sampler: %w", err)
	}
	o.settings = cfg
	return nil
}

// sampleShare is the part of a window in which switch-outs are sampled
// (SAMPLE_SHARE_PCT in offcpu.bpf.c); in the rest the program only
// finishes the samples it took, so that blocked times up to a fifth of the
// window are always seen whole, and longer ones (up to the window) often
// enough to be weighted up.
const sampleShare = 0.8

// Start attaches the program for a window, the fraction duty of the time:
// samples pending from an earlier window (whose switch-in it may have
// missed) are dropped, new ones are weighted by 1/duty. Called again while
// attached throughout (duty 1), it only adjusts the sampling to the rate
// since the last call.
func (o *OffCPU) Start(window time.Duration, duty float64) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.halted {
		return nil
	}
	o.adjustScale()
	cfg := o.settings
	cfg.Scale = uint64(o.scale * 65536)
	cfg.PerTask = uint64(o.cfg.PerThread)
	cfg.Sampling = 1
	cfg.Window = 0
	cfg.SampleFor = 0
	if o.link == nil {
		cfg.Epoch++
		if err := o.objs.SampleUntil.Set(uint64(0)); err != nil {
			return fmt.Errorf("configuring the off-CPU sampler: %w", err)
		}
	}
	if duty < 1 {
		duty *= sampleShare
		cfg.Window = uint64(window)
		cfg.SampleFor = uint64(sampleShare * float64(window))
	}
	cfg.Duty = uint64(65536 / max(duty, 1.0/65536))
	if err := o.configure(cfg); err != nil {
		return err
	}
	if o.link != nil {
		return nil
	}
	l, err := link.AttachTracing(link.TracingOptions{Program: o.objs.Switch})
	if err != nil {
		return fmt.Errorf("attaching the off-CPU sampler to tp_btf/sched_switch: %w", err)
	}
	o.link = l
	return nil
}

// adjustScale keeps the host-wide samples a second within what
// MaxSamples and SampleBudget allow: the factor follows the rate, and the
// cost of a sample, measured since the last window. o.mu is held.
func (o *OffCPU) adjustScale() {
	sampled := o.stat(bpf.OffCPUOffcpuStatIndexOFFCPU_STAT_SAMPLED)
	spent := time.Duration(o.stat(bpf.OffCPUOffcpuStatIndexOFFCPU_STAT_SAMPLE_NS))
	now := time.Now()
	if !o.since.IsZero() && sampled > o.sampled {
		n := float64(sampled - o.sampled)
		rate := n / now.Sub(o.since).Seconds()
		o.sampleCost = time.Duration(float64(spent-o.spent) / n)
		target := o.targetRate()
		if rate > target {
			o.scale = max(o.scale*target/rate, 1.0/65536)
		} else if rate < target/2 {
			o.scale = min(1, o.scale*2)
		}
	} else if !o.since.IsZero() {
		o.scale = min(1, o.scale*2)
	}
	o.sampled, o.spent, o.since = sampled, spent, now
}

// targetRate is the samples a second the sampler aims at most: MaxSamples,
// or fewer when samples cost more than SampleBudget at that rate.
func (o *OffCPU) targetRate() float64 {
	target := float64(o.cfg.MaxSamples)
	if o.cfg.SampleBudget > 0 && o.sampleCost > 0 {
		target = min(target, float64(o.cfg.SampleBudget)/float64(o.sampleCost))
	}
	return max(target, 1)
}

// Stop detaches the program until the next Start.
func (o *OffCPU) Stop() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.detach()
}

// halt detaches the program for good: the sampler stops.
func (o *OffCPU) halt() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.halted = true
	return o.detach()
}

func (o *OffCPU) detach() error {
	if o.link == nil {
		return nil
	}
	err := o.link.Close()
	o.link = nil
	return err
}

// Runtime is the BPF time the program used so far that grows with the time
// it is attached: all of it but the time its samples took, which the
// sampler holds to SampleBudget a second whatever the duty (so that the
// duty cycle, which knows only attached time, does not pay for it twice).
// It comes from the kernel's bpf_stats when they are on; without them,
// from the switches the program counted.
func (o *OffCPU) Runtime() time.Duration {
	st := o.Stats()
	if ps, err := o.objs.Switch.Stats(); err == nil && ps.Runtime > 0 {
		return max(ps.Runtime-st.SampleTime, 0)
	}
	return time.Duration(st.Switches) * estimatedSwitchCost
}

// estimatedSwitchCost is what a switch costs the program when it takes no
// sample, for when bpf_stats cannot say (measured under a pipe ping-pong).
const estimatedSwitchCost = 250 * time.Nanosecond

// Close detaches and frees the program and its own maps; the sampler's
// Close calls it.
func (o *OffCPU) Close() error {
	err := o.halt()
	o.closeOnce.Do(func() { err = errors.Join(err, o.objs.Close()) })
	return err
}

// OffCPUStats are the off-CPU sampler's counters since load.
type OffCPUStats struct {
	Switches, Sampled, Finished, Censored, CountsFull uint64
	// SampleTime is the time spent taking the samples' stacks.
	SampleTime time.Duration
	// Capped are samples whose weight was capped: they count for less
	// than they stand for.
	Capped uint64
	Scale  float64
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
		SampleTime: time.Duration(o.stat(bpf.OffCPUOffcpuStatIndexOFFCPU_STAT_SAMPLE_NS)),
		Capped:     o.stat(bpf.OffCPUOffcpuStatIndexOFFCPU_STAT_WEIGHT_CAPPED),
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
