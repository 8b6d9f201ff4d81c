// Package dutycycle keeps BPF programs that run at every context switch
// within a CPU budget whatever the host's switch rate: it attaches them for
// only part of each period — all of it on a quiet host, a twentieth of it
// on one that switches 150,000 times a second — at a random moment in the
// period, so that what they see is a fair sample of the time. Each program
// set is told how large a part it runs, to scale what it counts.
//
// Attaching and detaching are not free either: a tp_btf program's link is
// made and broken by patching kernel text on every CPU, about 3.5 ms of
// CPU a round trip on the 2-CPU VM of docs/benchmarks.md, more than a
// second attached costs at a few thousand switches a second. So the
// controller measures that cost too, lengthens the period until toggling
// takes a small share of the budget, and stays attached when cycling would
// cost more than it saves.
package dutycycle

import (
	"context"
	"log/slog"
	"math"
	"math/rand/v2"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Program is a set of programs attached together.
type Program interface {
	// Start attaches the programs for a window of the given length, the
	// fraction duty of the period (1: attached throughout).
	Start(window time.Duration, duty float64) error
	// Stop detaches them.
	Stop() error
	// Runtime is the BPF time its programs used so far (kernel bpf_stats;
	// 0 when they are off).
	Runtime() time.Duration
}

// Config sets the budget.
type Config struct {
	// Budget is the BPF time per second the programs may use together.
	Budget time.Duration
	// Period holds one window (default 1s); it grows, up to MaxPeriod, to
	// keep windows at least MinWindow long when the duty is small.
	Period time.Duration
	// MinWindow is the shortest window (default 250ms): what happens
	// across its end is seen only in part (a thread blocked when it
	// ends), so short windows lose more of the long events.
	MinWindow time.Duration
	// MaxPeriod bounds the period (default 10s).
	MaxPeriod time.Duration
	// Fallback is what one second attached is assumed to cost when
	// bpf_stats say nothing (default 10ms: 40,000 switches at 250 ns).
	Fallback time.Duration
}

// Stats say how it goes.
type Stats struct {
	Duty     float64       // the last period's fraction attached
	Period   time.Duration // the last period's length
	Attached time.Duration // time attached so far
	Cost     time.Duration // BPF time a second attached costs, as last measured
	// Toggle is the CPU time one detach and attach of all the programs
	// took, as last measured (0 until they were once detached).
	Toggle time.Duration
	// Toggling is the CPU time all detaches and attaches took so far.
	Toggling time.Duration
}

// Controller runs the windows of some programs.
type Controller struct {
	cfg Config

	mu    sync.Mutex // guards progs, stats and floorWarned
	progs []Program
	stats Stats
	// floorWarned: the budget was found to be below what the programs
	// cost at the lowest duty, and it was said once.
	floorWarned bool
}

// New returns a controller of progs; call Run.
func New(cfg Config, progs ...Program) *Controller {
	if cfg.Period <= 0 {
		cfg.Period = time.Second
	}
	if cfg.Fallback <= 0 {
		cfg.Fallback = 10 * time.Millisecond
	}
	if cfg.MinWindow <= 0 {
		cfg.MinWindow = 250 * time.Millisecond
	}
	if cfg.MaxPeriod < cfg.Period {
		cfg.MaxPeriod = max(cfg.Period, 10*time.Second)
	}
	return &Controller{cfg: cfg, progs: progs, stats: Stats{Duty: 1, Period: cfg.Period}}
}

// Run attaches the programs window by window until ctx ends, then detaches
// them. The first window assumes the fallback cost; each next one follows
// the cost the last one measured.
func (c *Controller) Run(ctx context.Context) {
	// The cost of toggling is read from this thread's CPU clock: attaching
	// and detaching are system calls made on it.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	duty, period := c.plan(c.cfg.Fallback)
	attached := false
	var toggle time.Duration // CPU of the last detach, to add to the next attach's
	defer func() {
		if attached {
			c.stop()
		}
	}()
	for {
		window := time.Duration(math.Round(duty * float64(period)))
		offset := time.Duration(0)
		if duty < 1 {
			offset = time.Duration(rand.Int64N(int64(period - window + 1)))
			if attached { // from a period attached throughout
				toggle = c.stop()
				attached = false
			}
		}
		if !sleep(ctx, offset) {
			return
		}
		before := c.runtime()
		// Started every period, even when attached throughout, so that
		// the programs adapt their sampling to the last period's rate.
		took, err := c.start(window, duty)
		if err != nil {
			slog.Warn("attaching switch-time programs", "err", err)
		}
		if !attached && toggle > 0 {
			c.recordToggle(toggle + took)
		}
		attached = true
		start := time.Now()
		if !sleep(ctx, window) {
			return
		}
		used, on := c.runtime()-before, time.Since(start)
		if duty < 1 {
			toggle = c.stop()
			attached = false
		}
		slog.Debug("switch-time programs window", "attached", on, "duty", duty, "period", period, "bpf_time", used)
		c.record(on, duty, period)
		next, nextPeriod := c.plan(c.measuredCost(used, on))
		if !sleep(ctx, period-offset-on) {
			return
		}
		duty, period = next, nextPeriod
	}
}

// plan returns the duty and the period for a cost per second attached.
// Without a measured toggle cost it is dutyFor and periodFor. With one,
// the period grows (up to MaxPeriod) until toggling takes at most
// toggleShare of the budget, the duty affords what toggling leaves of the
// budget, and the programs stay attached throughout when cycling would
// save less than it costs.
func (c *Controller) plan(cost time.Duration) (float64, time.Duration) {
	duty := c.dutyFor(cost, 0)
	if duty >= 1 {
		return 1, c.cfg.Period
	}
	period := c.periodFor(duty)
	toggle := c.Stats().Toggle
	if toggle <= 0 {
		return duty, period
	}
	enough := time.Duration(float64(toggle) / (toggleShare * c.cfg.Budget.Seconds()))
	period = min(max(period, enough), c.cfg.MaxPeriod)
	perSecond := toggle.Seconds() / period.Seconds() // toggling's CPU a second
	duty = c.dutyFor(cost, perSecond)
	if cost.Seconds()*(1-duty) <= perSecond {
		return 1, c.cfg.Period
	}
	return duty, max(period, c.periodFor(duty))
}

// periodFor is the period that keeps a window at duty at least MinWindow
// long, within Period..MaxPeriod.
func (c *Controller) periodFor(duty float64) time.Duration {
	p := time.Duration(float64(c.cfg.MinWindow) / duty)
	return min(max(p, c.cfg.Period), c.cfg.MaxPeriod)
}

// toggleShare is the part of the budget toggling may take when MaxPeriod
// allows a period that long.
const toggleShare = 0.1

// measuredCost is the BPF time a second attached cost in the window just
// ended (used in on), smoothed over a few periods, and recorded.
func (c *Controller) measuredCost(used, on time.Duration) time.Duration {
	cost := c.cfg.Fallback
	if used > 0 && on > 0 {
		cost = time.Duration(float64(used) / on.Seconds())
	}
	c.mu.Lock()
	// Smoothed over a few periods: one window's cost is noisy (a burst of
	// new threads, each sampled at its first switch).
	if c.stats.Cost > 0 {
		cost = (cost + c.stats.Cost) / 2
	}
	c.stats.Cost = cost
	// Below the floor the budget is not kept: say it, once (it is the
	// host's switch rate, not a passing state, so once is enough; the
	// duty-ratio and cost metrics show it from then on).
	warn := !c.floorWarned && c.cfg.Budget.Seconds()/cost.Seconds() < minDuty
	c.floorWarned = c.floorWarned || warn
	c.mu.Unlock()
	if warn {
		slog.Warn("switch-time BPF programs cost more than their budget even at the lowest duty: the budget is exceeded",
			"cost_per_second_attached", cost, "min_duty", minDuty,
			"bpf_time_per_second", time.Duration(minDuty*float64(cost)), "budget", c.cfg.Budget)
	}
	return cost
}

// recordToggle keeps a detach and attach's CPU time, smoothed as the cost.
func (c *Controller) recordToggle(took time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats.Toggling += took
	if c.stats.Toggle > 0 {
		took = (took + c.stats.Toggle) / 2
	}
	c.stats.Toggle = took
}

// minDuty is the lowest duty: a window must be long enough to see a
// switch out and back in, and to measure the cost again.
const minDuty = 0.01

// dutyFor is the fraction of the period the budget affords at a cost per
// second attached, once toggling took its part (seconds a second) of it;
// not below minDuty.
func (c *Controller) dutyFor(cost time.Duration, toggling float64) float64 {
	if cost <= 0 {
		return 1
	}
	return min(1, max(minDuty, (c.cfg.Budget.Seconds()-toggling)/cost.Seconds()))
}

func (c *Controller) record(on time.Duration, duty float64, period time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats.Duty = duty
	c.stats.Period = period
	c.stats.Attached += on
}

// Add has the controller run p too, from its next window on.
func (c *Controller) Add(p Program) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.progs = append(c.progs, p)
}

func (c *Controller) programs() []Program {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.progs[:len(c.progs):len(c.progs)]
}

// start starts the programs and returns the CPU time it took.
func (c *Controller) start(window time.Duration, duty float64) (time.Duration, error) {
	var first error
	before := threadCPU()
	for _, p := range c.programs() {
		if err := p.Start(window, duty); err != nil && first == nil {
			first = err
		}
	}
	return threadCPU() - before, first
}

// stop detaches the programs and returns the CPU time it took.
func (c *Controller) stop() time.Duration {
	before := threadCPU()
	for _, p := range c.programs() {
		if err := p.Stop(); err != nil {
			slog.Warn("detaching switch-time programs", "err", err)
		}
	}
	return threadCPU() - before
}

// threadCPU is the calling thread's CPU time, user and system.
func threadCPU() time.Duration {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts) != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

func (c *Controller) runtime() time.Duration {
	var t time.Duration
	for _, p := range c.programs() {
		t += p.Runtime()
	}
	return t
}

// Stats returns what the controller measured last.
func (c *Controller) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// sleep waits d or until ctx ends, and says whether ctx is still alive.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
