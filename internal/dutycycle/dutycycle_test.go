package dutycycle

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// meteredProgram costs a fixed BPF time per second attached, like a
// program run at every context switch of a host with a steady switch rate.
type meteredProgram struct {
	costPerSecond time.Duration
	// toggleCPU is burnt on the calling thread by each attach and detach
	// together, half each, as the kernel's text patching does.
	toggleCPU time.Duration

	mu       sync.Mutex
	since    time.Time // attached since; zero when detached
	runtime  time.Duration
	windows  []time.Duration // each Start's window
	duties   []float64
	attached time.Duration
	detaches int
}

func (p *meteredProgram) Start(window time.Duration, duty float64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.windows = append(p.windows, window)
	p.duties = append(p.duties, duty)
	if p.since.IsZero() {
		burn(p.toggleCPU / 2)
		p.since = time.Now()
	}
	return nil
}

func (p *meteredProgram) Stop() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.since.IsZero() {
		burn(p.toggleCPU / 2)
	}
	p.settle()
	p.since = time.Time{}
	p.detaches++
	return nil
}

// burn spins until the calling thread has used d of CPU.
func burn(d time.Duration) {
	for end := threadCPU() + d; threadCPU() < end; {
	}
}

// settle charges the time attached since the last call. p.mu is held.
func (p *meteredProgram) settle() {
	if p.since.IsZero() {
		return
	}
	on := time.Since(p.since)
	p.attached += on
	p.runtime += time.Duration(on.Seconds() * float64(p.costPerSecond))
	p.since = time.Now()
}

func (p *meteredProgram) Runtime() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.settle()
	return p.runtime
}

func run(t *testing.T, cfg Config, p *meteredProgram, d time.Duration) *Controller {
	t.Helper()
	c := New(cfg, p)
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	c.Run(ctx)
	return c
}

// On a quiet host the programs stay attached throughout; on a busy one the
// controller attaches them for the fraction the budget affords, in windows
// no shorter than MinWindow, and the BPF time spent a second stays near
// the budget.
func TestControllerKeepsBudget(t *testing.T) {
	cfg := Config{Budget: 2 * time.Millisecond, Period: 100 * time.Millisecond, MinWindow: 20 * time.Millisecond,
		MaxPeriod: time.Second, Fallback: 10 * time.Millisecond}

	quiet := &meteredProgram{costPerSecond: time.Millisecond}
	c := run(t, cfg, quiet, 1500*time.Millisecond)
	if st := c.Stats(); st.Duty != 1 {
		t.Errorf("quiet host (cost 1 ms a second attached, budget 2 ms): duty %.2f, want 1", st.Duty)
	}

	busy := &meteredProgram{costPerSecond: 20 * time.Millisecond}
	start := time.Now()
	c = run(t, cfg, busy, 3*time.Second)
	wall := time.Since(start)
	st := c.Stats()
	spent := busy.Runtime()
	perSecond := time.Duration(float64(spent) / wall.Seconds())
	t.Logf("busy host: duty %.3f, attached %v of %v, BPF time %v a second, windows %v", st.Duty, busy.attached, wall, perSecond, busy.windows)
	if st.Duty < 0.05 || st.Duty > 0.2 {
		t.Errorf("busy host (cost 20 ms a second attached, budget 2 ms): duty %.3f, want about 0.1", st.Duty)
	}
	if perSecond > 3*time.Millisecond {
		t.Errorf("BPF time %v a second, want about the 2 ms budget", perSecond)
	}
	for _, w := range busy.windows[1:] {
		if w < cfg.MinWindow {
			t.Errorf("window %v shorter than MinWindow %v", w, cfg.MinWindow)
		}
	}
}

// A program added while the controller runs is started from the next
// window on.
func TestControllerAdd(t *testing.T) {
	cfg := Config{Budget: time.Second, Period: 50 * time.Millisecond}
	c := New(cfg)
	p := &meteredProgram{costPerSecond: time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	time.Sleep(60 * time.Millisecond)
	c.Add(p)
	time.Sleep(200 * time.Millisecond)
	cancel()
	<-done
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.windows) == 0 {
		t.Fatal("added program never started")
	}
	if !p.since.IsZero() {
		t.Error("program still attached after Run returned")
	}
}

// A host where even the lowest duty costs more than the budget runs at
// that duty, and the controller says once that the budget is exceeded.
func TestControllerWarnsOnceBelowFloor(t *testing.T) {
	var log strings.Builder
	var mu sync.Mutex
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(lockedWriter{&mu, &log}, &slog.HandlerOptions{Level: slog.LevelWarn})))
	defer slog.SetDefault(prev)

	cfg := Config{Budget: time.Millisecond, Period: 20 * time.Millisecond, MinWindow: time.Millisecond,
		MaxPeriod: 100 * time.Millisecond, Fallback: time.Second}
	// 1 s a second attached: the budget affords a thousandth, under 1/100.
	c := run(t, cfg, &meteredProgram{costPerSecond: time.Second}, time.Second)
	mu.Lock()
	out := log.String()
	mu.Unlock()
	if d := c.Stats().Duty; d != minDuty {
		t.Errorf("duty %v, want the floor %v", d, minDuty)
	}
	if n := strings.Count(out, "budget is exceeded"); n != 1 {
		t.Errorf("%d warnings that the budget is exceeded, want 1:\n%s", n, out)
	}

	log.Reset()
	run(t, cfg, &meteredProgram{costPerSecond: 50 * time.Millisecond}, 300*time.Millisecond)
	if strings.Contains(log.String(), "budget is exceeded") {
		t.Errorf("warned with a cost the floor keeps within budget:\n%s", log.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// Where detaching and attaching cost more than cycling saves, the programs
// stay attached once that cost is measured; where cycling pays, the period
// grows until toggling takes at most a tenth of the budget (within
// MaxPeriod), and the duty affords what toggling leaves of the budget.
func TestControllerCountsToggling(t *testing.T) {
	cfg := Config{Budget: 2 * time.Millisecond, Period: 100 * time.Millisecond, MinWindow: 20 * time.Millisecond,
		MaxPeriod: time.Second, Fallback: 10 * time.Millisecond}

	// 3 ms a second attached: cycling to the 2 ms budget saves 1 ms a
	// second, and toggling once a second (the longest period) costs 5.
	dear := &meteredProgram{costPerSecond: 3 * time.Millisecond, toggleCPU: 5 * time.Millisecond}
	c := run(t, cfg, dear, 2*time.Second)
	st := c.Stats()
	t.Logf("toggling dearer than cycling saves: duty %.2f, toggle %v, toggling %v, detaches %d", st.Duty, st.Toggle, st.Toggling, dear.detaches)
	if st.Toggle < 4*time.Millisecond || st.Toggle > 15*time.Millisecond {
		t.Errorf("measured toggle %v, want about the 5 ms burnt", st.Toggle)
	}
	if st.Duty != 1 {
		t.Errorf("duty %.2f, want 1: cycling costs more than it saves", st.Duty)
	}
	// The fallback cost (10 ms) has it cycle until the first windows are
	// measured; without the toggle cost it would cycle every 100 ms.
	if dear.detaches > 4 {
		t.Errorf("%d detaches in 2 s, want a few at most", dear.detaches)
	}

	// 20 ms a second attached, 1 ms a toggle: toggling once a second takes
	// half the budget, so the duty is (2 - 1) / 20.
	busy := &meteredProgram{costPerSecond: 20 * time.Millisecond, toggleCPU: time.Millisecond}
	start := time.Now()
	c = run(t, cfg, busy, 4*time.Second)
	wall := time.Since(start)
	st = c.Stats()
	perSecond := time.Duration((float64(busy.Runtime()) + float64(st.Toggling)) / wall.Seconds())
	t.Logf("busy host: duty %.3f, period %v, toggle %v, BPF and toggling %v a second, windows %v", st.Duty, st.Period, st.Toggle, perSecond, busy.windows)
	if st.Period != cfg.MaxPeriod {
		t.Errorf("period %v, want MaxPeriod %v: toggling once per 100 ms would take the budget", st.Period, cfg.MaxPeriod)
	}
	if st.Duty < 0.02 || st.Duty > 0.08 {
		t.Errorf("duty %.3f, want about 0.05", st.Duty)
	}
	if perSecond > 4*time.Millisecond {
		t.Errorf("BPF and toggling %v a second, want about the 2 ms budget", perSecond)
	}
}
