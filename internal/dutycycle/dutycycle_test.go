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

	mu       sync.Mutex
	since    time.Time // attached since; zero when detached
	runtime  time.Duration
	windows  []time.Duration // each Start's window
	duties   []float64
	attached time.Duration
}

func (p *meteredProgram) Start(window time.Duration, duty float64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.windows = append(p.windows, window)
	p.duties = append(p.duties, duty)
	if p.since.IsZero() {
		p.since = time.Now()
	}
	return nil
}

func (p *meteredProgram) Stop() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.settle()
	p.since = time.Time{}
	return nil
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
