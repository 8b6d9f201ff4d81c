// Package dutycycle keeps BPF programs that run at every context switch
// within a CPU budget whatever the host's switch rate: it attaches them for
// only part of each period — all of it on a quiet host, a twentieth of it
// on one that switches 150,000 times a second — at a random moment in the
// period, so that what they see is a fair sample of the time. Each program
// set is told how large a part it runs, to scale what it counts.
package dutycycle

import (
	"context"
	"log/slog"
	"math"
	"math/rand/v2"
	"sync"
	"time"
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
	Attached time.Duration // time attached so far
	Cost     time.Duration // BPF time a second attached costs, as last measured
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
	return &Controller{cfg: cfg, progs: progs, stats: Stats{Duty: 1}}
}

// Run attaches the programs window by window until ctx ends, then detaches
// them. The first window assumes the fallback cost; each next one follows
// the cost the last one measured.
func (c *Controller) Run(ctx context.Context) {
	duty := c.dutyFor(c.cfg.Fallback)
	attached := false
	defer func() {
		if attached {
			c.stop()
		}
	}()
	for {
		period := c.periodFor(duty)
		window := time.Duration(math.Round(duty * float64(period)))
		offset := time.Duration(0)
		if duty < 1 {
			offset = time.Duration(rand.Int64N(int64(period - window + 1)))
			if attached { // from a period attached throughout
				c.stop()
				attached = false
			}
		}
		if !sleep(ctx, offset) {
			return
		}
		before := c.runtime()
		// Started every period, even when attached throughout, so that
		// the programs adapt their sampling to the last period's rate.
		if err := c.start(window, duty); err != nil {
			slog.Warn("attaching switch-time programs", "err", err)
		}
		attached = true
		start := time.Now()
		if !sleep(ctx, window) {
			return
		}
		used, on := c.runtime()-before, time.Since(start)
		if duty < 1 {
			c.stop()
			attached = false
		}
		slog.Debug("switch-time programs window", "attached", on, "duty", duty, "bpf_time", used)
		c.record(on, duty)
		duty = c.nextDuty(used, on)
		if !sleep(ctx, period-offset-on) {
			return
		}
	}
}

// periodFor is the period that keeps a window at duty at least MinWindow
// long, within Period..MaxPeriod.
func (c *Controller) periodFor(duty float64) time.Duration {
	p := time.Duration(float64(c.cfg.MinWindow) / duty)
	return min(max(p, c.cfg.Period), c.cfg.MaxPeriod)
}

// nextDuty is the fraction of the period the budget affords at the cost
// per second attached just measured.
func (c *Controller) nextDuty(used, on time.Duration) float64 {
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
	return c.dutyFor(cost)
}

// minDuty is the lowest duty: a window must be long enough to see a
// switch out and back in, and to measure the cost again.
const minDuty = 0.01

// dutyFor is the fraction of the period the budget affords at a cost per
// second attached; not below minDuty.
func (c *Controller) dutyFor(cost time.Duration) float64 {
	if cost <= 0 {
		return 1
	}
	return min(1, max(minDuty, c.cfg.Budget.Seconds()/cost.Seconds()))
}

func (c *Controller) record(on time.Duration, duty float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats.Duty = duty
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

func (c *Controller) start(window time.Duration, duty float64) error {
	var first error
	for _, p := range c.programs() {
		if err := p.Start(window, duty); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (c *Controller) stop() {
	for _, p := range c.programs() {
		if err := p.Stop(); err != nil {
			slog.Warn("detaching switch-time programs", "err", err)
		}
	}
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
