// Package pipeline drives profiling between the kernel and the exporters: it
// drains the sampler every interval (or on demand), symbolizes each raw batch
// once, labels samples with their cgroup path and workload, and hands the
// resulting Window to every subscriber: the live capture, the profile
// history and the OTLP exporter. It is the only place that knows both the
// profiler and the symbolizer, and takes both (and the cgroup resolver) as
// interfaces, so its logic is tested without a kernel.
package pipeline

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cgscope/cgscope/internal/attribution"
	"github.com/cgscope/cgscope/profiler"
	"github.com/cgscope/cgscope/symbolizer"
)

// Sample is one unique (thread, cgroup, stack) with its sample count.
type Sample struct {
	PID, TID uint32
	Comm     string
	CgroupID uint64
	Cgroup   string // cgroup2 path, "" when the cgroup is gone
	// Workload names the container or pod of the cgroup; nil when the
	// cgroup is not a container's. Shared: do not modify.
	Workload *attribution.Workload
	// Frames are leaf first: kernel frames, then user frames.
	Frames []symbolizer.Frame
	// Count is the CPU samples taken; for an off-CPU sample, the times the
	// thread left the CPU (estimated: sampled and weighted).
	Count uint64
	// OffCPU is, for an off-CPU sample, the time away from the CPU
	// (estimated like Count), and Reason why it left ("runnable",
	// "sleeping", "io_wait", "uninterruptible", "other").
	OffCPU time.Duration
	Reason string
}

// Window is the symbolized profile of one drain interval.
type Window struct {
	Start, End time.Time
	// Period is the sampling period: each sample stands for this much CPU time.
	Period  time.Duration
	Samples []Sample
	// OffCPU are the window's off-CPU samples: where threads waited, from
	// the off-CPU sampler (none when it is off).
	OffCPU []Sample
}

// Sampler is what the pipeline needs from the kernel side
// (profiler.Sampler).
type Sampler interface {
	Drain() (*profiler.RawBatch, error)
	Frequency() int
	Stop() error
}

// Symbolizer names addresses (symbolizer.Symbolizer).
type Symbolizer interface {
	Kernel(addrs []uint64) []symbolizer.Frame
	User(pid uint32, addrs []uint64) []symbolizer.Frame
	// ExecutableAddress reports whether addr lies in executable code of pid.
	ExecutableAddress(pid uint32, addr uint64) bool
	// ProcessStarted snapshots a new process's mappings while it lives.
	ProcessStarted(pid uint32) error
	// ProcessForked gives a process forked from parent, without an exec
	// since, parent's snapshot (or a read of parent's mappings if there is
	// none, of its own if parent is gone).
	ProcessForked(pid, parent uint32) error
	// ProcessVanished says pid's image exec'd or exited before its
	// mappings could be read: its samples are not to re-read them.
	ProcessVanished(pid uint32)
}

// CgroupPaths names cgroup2 ids (cgroup.Resolver); "" when gone.
type CgroupPaths interface {
	Path(id uint64) string
}

// Pipeline turns drained batches into Windows for its subscribers.
type Pipeline struct {
	sampler   Sampler
	sym       Symbolizer
	cgroups   CgroupPaths // nil without cgroup2
	workloads WorkloadResolver
	unwinder  Unwinder     // nil: no unwind tables
	interp    Interpreters // nil: native frames only
	interval  time.Duration
	procs     *processes // announced processes, released after their exit (process.go)

	flushMu sync.Mutex // one drain at a time, delivered in order

	subsMu  sync.Mutex
	nextSub int
	subs    map[int]func(*Window)
	// delivering is held (read) while windows are handed to subscribers,
	// so that a cancel can wait until its subscriber has its last window.
	delivering sync.RWMutex

	lastUniqueStacks atomic.Int64
	windows          atomic.Uint64
	drainErrors      atomic.Uint64
}

// WorkloadResolver names the container or pod of a cgroup path without
// blocking (attribution.Resolver).
type WorkloadResolver interface {
	Lookup(cgroupPath string) *attribution.Workload
}

// SetWorkloads makes every sample carry its cgroup's workload. Call it
// before Run.
func (p *Pipeline) SetWorkloads(r WorkloadResolver) { p.workloads = r }

// New builds a pipeline. cgroups may be nil (no cgroup2 mounted).
func New(s Sampler, sym Symbolizer, cgroups CgroupPaths, interval time.Duration) *Pipeline {
	p := &Pipeline{sampler: s, sym: sym, cgroups: cgroups, interval: interval, subs: map[int]func(*Window){},
		procs: newProcesses()}
	p.releaseWith(sym)
	return p
}

// Run flushes every interval until ctx ends; then it stops sampling and
// flushes once more, so the last partial window reaches the subscribers and
// nothing sampled is left behind.
func (p *Pipeline) Run(ctx context.Context) {
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if err := p.sampler.Stop(); err != nil {
				slog.Warn("stopping the sampler", "err", err)
			}
			p.flushLogged()
			return
		case <-t.C:
			p.flushLogged()
		}
	}
}

func (p *Pipeline) flushLogged() {
	if _, err := p.Flush(); err != nil {
		slog.Error("draining profiles failed", "err", err)
	}
}

// Flush drains everything sampled since the previous flush, symbolizes it,
// and delivers it to every subscriber before returning it.
func (p *Pipeline) Flush() (*Window, error) {
	p.flushMu.Lock()
	defer p.flushMu.Unlock()
	drain := p.procs.drainStarted()
	batch, err := p.sampler.Drain()
	if err != nil {
		p.drainErrors.Add(1)
		return nil, err
	}
	w := p.symbolize(batch)
	p.windows.Add(1)
	p.lastUniqueStacks.Store(int64(len(w.Samples)))
	p.delivering.RLock()
	for _, fn := range p.subscribers() {
		fn(w)
	}
	p.delivering.RUnlock()
	p.releaseExited(drain, batch)
	return w, nil
}

// Subscribe calls fn with every window flushed from now on, in order, until
// cancel is called. fn runs on the flushing goroutine: keep it short. Once
// cancel returns, fn is not running and will not be called again: a
// window being delivered when cancel is called reaches fn first (so an
// exporter stopping sends it rather than lose it). fn must not call any
// subscription's cancel, nor Flush or Capture.
func (p *Pipeline) Subscribe(fn func(*Window)) (cancel func()) {
	p.subsMu.Lock()
	defer p.subsMu.Unlock()
	id := p.nextSub
	p.nextSub++
	p.subs[id] = fn
	return func() {
		p.subsMu.Lock()
		delete(p.subs, id)
		p.subsMu.Unlock()
		p.delivering.Lock() // waits out a delivery in progress
		p.delivering.Unlock()
	}
}

func (p *Pipeline) subscribers() []func(*Window) {
	p.subsMu.Lock()
	defer p.subsMu.Unlock()
	fns := make([]func(*Window), 0, len(p.subs))
	for _, fn := range p.subs {
		fns = append(fns, fn)
	}
	return fns
}

// Capture returns the windows that cover the next d of sampling: it flushes
// at the start (so nothing older is included) and at the end (so nothing
// sampled in between is missing).
func (p *Pipeline) Capture(ctx context.Context, d time.Duration) ([]*Window, error) {
	if _, err := p.Flush(); err != nil {
		return nil, err
	}
	var (
		mu      sync.Mutex
		windows []*Window
	)
	cancel := p.Subscribe(func(w *Window) {
		mu.Lock()
		windows = append(windows, w)
		mu.Unlock()
	})
	timer := time.NewTimer(d)
	select {
	case <-ctx.Done():
		timer.Stop()
		cancel()
		return nil, ctx.Err()
	case <-timer.C:
	}
	_, err := p.Flush()
	cancel()
	if err != nil {
		return nil, err
	}
	mu.Lock()
	defer mu.Unlock()
	return windows, nil
}

// Stats are the pipeline's own counters.
type Stats struct {
	Windows      uint64
	DrainErrors  uint64
	UniqueStacks int64 // unique sample keys in the last window
}

// Stats returns the pipeline's counters.
func (p *Pipeline) Stats() Stats {
	return Stats{Windows: p.windows.Load(), DrainErrors: p.drainErrors.Load(), UniqueStacks: p.lastUniqueStacks.Load()}
}

// ProcessStarted forwards a new-process notice to the symbolizer, which
// snapshots the process's mappings while it is still alive, then to the
// unwinder, which gives it unwind tables.
func (p *Pipeline) ProcessStarted(pid uint32, image uint64) {
	p.started(pid, image, 0)
}

// ProcessForked is ProcessStarted for a process forked from parent that
// has not exec'd since: the symbolizer takes its mappings from parent's
// snapshot instead of reading them.
func (p *Pipeline) ProcessForked(pid uint32, image uint64, parent uint32) {
	p.started(pid, image, parent)
}

// started records a new process image, has the symbolizer snapshot its
// mappings (from parent's snapshot when parent is not 0) and hands it to
// the unwinder.
func (p *Pipeline) started(pid uint32, image uint64, parent uint32) {
	p.procs.started(pid, image)
	var err error
	if parent != 0 {
		err = p.sym.ProcessForked(pid, parent)
	} else {
		err = p.sym.ProcessStarted(pid)
	}
	if err != nil {
		slog.Debug("snapshotting new process failed", "pid", pid, "err", err)
		return
	}
	if p.unwinder != nil {
		p.unwinder.ProcessStarted(pid, image)
	}
}

// ProcessVanished forwards the notice of an image gone before its mappings
// were read to the symbolizer, so that its samples do not try to: its
// ProcessGone follows, and its release.
func (p *Pipeline) ProcessVanished(pid uint32, image uint64) {
	p.sym.ProcessVanished(pid)
}

// ProcessMappingsChanged forwards the walker's request to read pid's
// mappings again.
func (p *Pipeline) ProcessMappingsChanged(pid uint32, image uint64) {
	if p.unwinder != nil {
		p.unwinder.ProcessMappingsChanged(pid, image)
	}
}

// ProcessGone forwards the exec or exit of an announced process image: the
// unwinder lets go of it at once (its kernel state must not serve the next
// image), the symbolizer once its last samples are symbolized (process.go).
func (p *Pipeline) ProcessGone(pid uint32, image uint64) {
	p.procs.gone(pid, image)
	if p.unwinder != nil {
		p.unwinder.ProcessGone(pid, image)
	}
}
