package queue

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

var fastBackoff = Backoff{Initial: time.Millisecond, Max: 5 * time.Millisecond, MaxElapsed: time.Minute}

// While the backend is down the queue keeps the newest batches, counts
// every one it pushes out, and delivers the rest in order once it is back.
func TestOutageDropsOldestAndRecovers(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	var down atomic.Bool
	down.Store(true)
	var mu sync.Mutex
	var got []int
	q := New(Options{Exporter: "test", Signal: "s", Size: 3, Backoff: fastBackoff, Metrics: m},
		func(ctx context.Context, b int) error {
			if down.Load() {
				return errors.New("connection refused")
			}
			mu.Lock()
			got = append(got, b)
			mu.Unlock()
			return nil
		})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go q.Run(ctx)
	for i := 0; i < 10; i++ {
		q.Push(i)
		time.Sleep(2 * time.Millisecond)
	}
	down.Store(false)
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return q.Len() == 0 && len(got) >= 4 })
	time.Sleep(20 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	sent := value(m.sent.WithLabelValues("test", "s"))
	dropped := value(m.dropped.WithLabelValues("test", "s"))
	if int(sent) != len(got) || sent+dropped != 10 {
		t.Errorf("sent %v (received %d) + dropped %v, want 10 in all", sent, len(got), dropped)
	}
	if got[len(got)-1] != 9 {
		t.Errorf("last delivered %v, want the newest batch 9", got)
	}
	for i := 1; i < len(got); i++ {
		if got[i] <= got[i-1] {
			t.Errorf("delivered out of order: %v", got)
		}
	}
	if value(m.errors.WithLabelValues("test", "s")) == 0 {
		t.Error("no send errors counted during the outage")
	}
}

// A permanent rejection is tried once and dropped, never retried.
func TestPermanentErrorNotRetried(t *testing.T) {
	m := NewMetrics(nil)
	var calls atomic.Int32
	q := New(Options{Exporter: "test", Signal: "s", Size: 10, Backoff: fastBackoff, Metrics: m},
		func(ctx context.Context, b int) error {
			calls.Add(1)
			return Permanent(errors.New("invalid argument"))
		})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go q.Run(ctx)
	q.Push(1)
	q.Push(2)
	waitFor(t, func() bool { return value(m.dropped.WithLabelValues("test", "s")) == 2 })
	time.Sleep(20 * time.Millisecond)
	if n := calls.Load(); n != 2 {
		t.Errorf("%d attempts for 2 rejected batches, want 2", n)
	}
}

// A batch the producer could not make is counted as pushed and dropped, so
// that enqueued = sent + dropped + waiting still holds.
func TestDropCountsUnmadeBatch(t *testing.T) {
	m := NewMetrics(nil)
	q := New(Options{Exporter: "test", Signal: "s", Size: 2, Metrics: m},
		func(ctx context.Context, b int) error { return nil })
	q.Push(1)
	q.Drop()
	enqueued, dropped := value(m.enqueued.WithLabelValues("test", "s")), value(m.dropped.WithLabelValues("test", "s"))
	if enqueued != 2 || dropped != 1 || q.Len() != 1 {
		t.Errorf("enqueued %v, dropped %v, waiting %d; want 2, 1, 1", enqueued, dropped, q.Len())
	}
}

// partLog records the parts a test's backend accepted; refuse returns its
// error for the parts it does not accept, nil for the others.
type partLog struct {
	mu  sync.Mutex
	got []int
}

func (l *partLog) sender(refuse func(part int) error) SendFunc[*Parts[int]] {
	return SendParts(func(ctx context.Context, part int) error {
		if err := refuse(part); err != nil {
			return err
		}
		l.mu.Lock()
		l.got = append(l.got, part)
		l.mu.Unlock()
		return nil
	}, 0)
}

func (l *partLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprint(l.got)
}

// A batch of parts is sent part by part; a retry resumes after the parts
// the backend has, so none is sent twice; it counts as one batch.
func TestPartsResumeAfterFailure(t *testing.T) {
	m := NewMetrics(nil)
	var log partLog
	var fails atomic.Int32
	fails.Store(2) // the third part fails twice
	q := New(Options{Exporter: "test", Signal: "s", Size: 1, Backoff: fastBackoff, Metrics: m},
		log.sender(func(part int) error {
			if part == 3 && fails.Add(-1) >= 0 {
				return errors.New("unavailable")
			}
			return nil
		}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go q.Run(ctx)
	q.Push(NewParts([]int{1, 2, 3, 4}))
	waitFor(t, func() bool { return value(m.sent.WithLabelValues("test", "s")) == 1 })
	if log.String() != "[1 2 3 4]" {
		t.Errorf("parts sent %v, want each once in order", &log)
	}
	if e := value(m.errors.WithLabelValues("test", "s")); e != 2 {
		t.Errorf("%v send errors, want 2", e)
	}
}

// A part refused for good is skipped and the others are still sent; the
// batch, not delivered in full, counts as dropped, once.
func TestPartsPermanentRefusal(t *testing.T) {
	m := NewMetrics(nil)
	var log partLog
	q := New(Options{Exporter: "test", Signal: "s", Size: 1, Backoff: fastBackoff, Metrics: m},
		log.sender(func(part int) error {
			if part == 2 {
				return Permanent(errors.New("too large"))
			}
			return nil
		}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go q.Run(ctx)
	q.Push(NewParts([]int{1, 2, 3}))
	waitFor(t, func() bool { return value(m.dropped.WithLabelValues("test", "s")) == 1 })
	time.Sleep(20 * time.Millisecond)
	if log.String() != "[1 3]" || value(m.sent.WithLabelValues("test", "s")) != 0 {
		t.Errorf("parts sent %v, batches sent %v; want [1 3] and the batch dropped", &log, value(m.sent.WithLabelValues("test", "s")))
	}
}

// The timeout bounds each part, not the whole batch: many parts that each
// take a good share of it all arrive in one attempt.
func TestPartsTimeoutPerPart(t *testing.T) {
	m := NewMetrics(nil)
	var n atomic.Int32
	const timeout = 100 * time.Millisecond
	q := New(Options{Exporter: "test", Signal: "s", Size: 1, Timeout: timeout, Backoff: fastBackoff, Metrics: m},
		SendParts(func(ctx context.Context, part int) error {
			select {
			case <-time.After(30 * time.Millisecond):
				n.Add(1)
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}, timeout))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go q.Run(ctx)
	q.Push(NewParts(make([]int, 20)))
	waitFor(t, func() bool { return value(m.sent.WithLabelValues("test", "s")) == 1 })
	if e := value(m.errors.WithLabelValues("test", "s")); e != 0 || n.Load() != 20 {
		t.Errorf("%v errors, %d parts sent; want 0 and 20", e, n.Load())
	}
}

// A batch cut short by shutdown goes back to the queue with its progress,
// and the last attempt (Flush) sends only the parts still missing.
func TestPartsFinishedByFlush(t *testing.T) {
	m := NewMetrics(nil)
	var log partLog
	var up atomic.Bool
	q := New(Options{Exporter: "test", Signal: "s", Size: 2, Backoff: fastBackoff, Metrics: m},
		log.sender(func(part int) error {
			if part >= 3 && !up.Load() {
				return errors.New("unavailable")
			}
			return nil
		}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { q.Run(ctx); close(done) }()
	q.Push(NewParts([]int{1, 2, 3, 4}))
	waitFor(t, func() bool { return log.String() == "[1 2]" })
	cancel()
	<-done
	up.Store(true)
	fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer fcancel()
	q.Flush(fctx)
	if log.String() != "[1 2 3 4]" || value(m.sent.WithLabelValues("test", "s")) != 1 || value(m.dropped.WithLabelValues("test", "s")) != 0 {
		t.Errorf("parts %v, %v sent, %v dropped; want each part once and the batch sent", &log,
			value(m.sent.WithLabelValues("test", "s")), value(m.dropped.WithLabelValues("test", "s")))
	}
}

// Retrying stops after MaxElapsed; the batch is counted as dropped.
func TestRetriesAreBounded(t *testing.T) {
	m := NewMetrics(nil)
	q := New(Options{Exporter: "test", Signal: "s", Size: 1,
		Backoff: Backoff{Initial: time.Millisecond, Max: 2 * time.Millisecond, MaxElapsed: 30 * time.Millisecond}, Metrics: m},
		func(ctx context.Context, b int) error { return errors.New("unavailable") })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go q.Run(ctx)
	q.Push(1)
	waitFor(t, func() bool { return value(m.dropped.WithLabelValues("test", "s")) == 1 })
}

// Run returns when its context ends while a batch is being retried, and
// leaves the batch for Flush. It used to take the requeued batch again at
// once, fail it at once on the ended context, and spin for good.
func TestRunEndsWhileRetrying(t *testing.T) {
	m := NewMetrics(nil)
	var calls atomic.Int32
	q := New(Options{Exporter: "test", Signal: "s", Size: 4, Backoff: fastBackoff, Metrics: m},
		func(ctx context.Context, b int) error {
			calls.Add(1)
			return errors.New("unavailable")
		})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { q.Run(ctx); close(done) }()
	q.Push(1)
	waitFor(t, func() bool { return calls.Load() >= 2 }) // retrying
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("Run still running 5 s after its context ended (%d attempts)", calls.Load())
	}
	if q.Len() != 1 {
		t.Errorf("%d batches left for Flush, want 1", q.Len())
	}
}

func TestJitterRange(t *testing.T) {
	for i := 0; i < 1000; i++ {
		if d := jitter(time.Second); d < 500*time.Millisecond || d >= time.Second {
			t.Fatalf("jitter(1s) = %s", d)
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5 s")
		}
		time.Sleep(time.Millisecond)
	}
}

func value(m prometheus.Metric) float64 {
	var pb dto.Metric
	if err := m.Write(&pb); err != nil {
		panic(err)
	}
	if pb.Counter != nil {
		return pb.Counter.GetValue()
	}
	return pb.Gauge.GetValue()
}
