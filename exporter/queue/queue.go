// Package queue is the delivery loop shared by cgscope's push exporters
// (OTLP profiles, OTLP metrics, Prometheus remote write).
//
// Each exporter owns one Queue: producers Push batches without ever
// blocking; one goroutine (Run) sends them in order, retrying retryable
// failures with capped exponential backoff and jitter. Memory is bounded by
// the queue size: when it is full the oldest waiting batch is dropped and
// counted, because during an outage the newest data is the most useful when
// the backend returns. A batch is also dropped (and counted) when the
// backend rejects it permanently or when its retries exceed MaxElapsed, so
// that every batch pushed ends up exactly once in sent or dropped (or is
// still queued). Backend trouble is logged once per state change, not once
// per attempt. A batch too large for one request is a Parts: sent as
// several, counted as one.
package queue

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// SendFunc delivers one batch. It returns an error wrapped with Permanent
// when retrying cannot help (the backend rejected the data).
type SendFunc[T any] func(ctx context.Context, batch T) error

// Backoff shapes the retries of one batch.
type Backoff struct {
	Initial    time.Duration // first wait; doubles on every retry
	Max        time.Duration // cap of a single wait
	MaxElapsed time.Duration // give the batch up (dropped) after retrying this long
}

// DefaultBackoff keeps the wait short enough that a returning backend is
// noticed within seconds, and gives a batch up after two minutes (newer
// batches are waiting by then).
var DefaultBackoff = Backoff{Initial: 500 * time.Millisecond, Max: 5 * time.Second, MaxElapsed: 2 * time.Minute}

// DefaultTimeout limits one send attempt unless Options say otherwise.
const DefaultTimeout = 10 * time.Second

// Options configure a Queue.
type Options struct {
	Exporter, Signal string        // metric labels and log fields
	Size             int           // batches waiting at most; at least 1
	Timeout          time.Duration // per attempt (per request of a Parts batch: see SendParts); default DefaultTimeout
	Backoff          Backoff       // zero: DefaultBackoff
	Metrics          *Metrics      // nil: not counted
	Logger           *slog.Logger  // nil: slog.Default()
}

// Queue is a bounded FIFO of batches with one sender.
type Queue[T any] struct {
	opts Options
	send SendFunc[T]
	c    counters

	mu     sync.Mutex
	items  []T // oldest first
	wakeup chan struct{}

	state state // touched by the sender goroutine only
}

// state is what the last attempt said about the backend.
type state int

const (
	stateUnknown state = iota
	stateOK
	stateFailing  // retryable errors: unreachable, overloaded
	stateRejected // permanent errors: the backend refuses the data
)

// New builds a queue; call Run to start sending.
func New[T any](opts Options, send SendFunc[T]) *Queue[T] {
	if opts.Size < 1 {
		opts.Size = 1
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Backoff == (Backoff{}) {
		opts.Backoff = DefaultBackoff
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	opts.Logger = opts.Logger.With("exporter", opts.Exporter, "signal", opts.Signal)
	return &Queue[T]{
		opts: opts, send: send, c: opts.Metrics.counters(opts.Exporter, opts.Signal),
		wakeup: make(chan struct{}, 1),
	}
}

// Push enqueues a batch without blocking. When the queue is full the
// oldest waiting batch makes room and is counted as dropped.
func (q *Queue[T]) Push(batch T) {
	q.mu.Lock()
	q.c.enqueued.Inc()
	if len(q.items) >= q.opts.Size {
		var zero T
		q.items[0] = zero // let the dropped batch be collected
		q.items = q.items[1:]
		q.c.dropped.Inc()
	}
	q.items = append(q.items, batch)
	q.c.length.Set(float64(len(q.items)))
	q.mu.Unlock()
	select {
	case q.wakeup <- struct{}{}:
	default:
	}
}

// Drop counts a batch the producer made but could not push (e.g. data
// too large for any request): it is counted as enqueued and dropped, so
// that the accounting of Push holds for it too.
func (q *Queue[T]) Drop() {
	q.c.enqueued.Inc()
	q.c.dropped.Inc()
}

// Len is the number of batches waiting (not counting one being sent).
func (q *Queue[T]) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

func (q *Queue[T]) pop() (T, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var zero T
	if len(q.items) == 0 {
		return zero, false
	}
	b := q.items[0]
	q.items[0] = zero
	q.items = q.items[1:]
	if len(q.items) == 0 {
		q.items = nil // release the backing array grown by a burst
	}
	q.c.length.Set(float64(len(q.items)))
	return b, true
}

// Run sends batches until ctx ends. Batches still waiting then are left
// for Flush.
func (q *Queue[T]) Run(ctx context.Context) {
	for {
		if ctx.Err() != nil { // deliver put its batch back: it is Flush's now
			return
		}
		b, ok := q.pop()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-q.wakeup:
				continue
			}
		}
		q.deliver(ctx, b)
	}
}

// Flush makes one attempt at every waiting batch until ctx ends, for a
// last send at shutdown; what cannot be sent is counted as dropped.
func (q *Queue[T]) Flush(ctx context.Context) {
	for {
		b, ok := q.pop()
		if !ok {
			return
		}
		if ctx.Err() != nil {
			q.c.dropped.Inc()
			continue
		}
		if err := q.attempt(ctx, b); err != nil {
			q.c.dropped.Inc()
		}
	}
}

// deliver sends one batch, retrying retryable errors with backoff until
// it is sent, rejected, out of time, or ctx ends.
func (q *Queue[T]) deliver(ctx context.Context, b T) {
	start := time.Now()
	wait := q.opts.Backoff.Initial
	for {
		before := progress(b)
		err := q.attempt(ctx, b)
		if err == nil {
			return
		}
		if progress(b) > before {
			// Some of a Parts batch got through: the backend works, if
			// slowly; the retry budget starts again from here.
			start, wait = time.Now(), q.opts.Backoff.Initial
		}
		if IsPermanent(err) || time.Since(start)+wait > q.opts.Backoff.MaxElapsed {
			q.c.dropped.Inc()
			if !IsPermanent(err) {
				q.opts.Logger.Warn("export batch given up after retrying", "for", time.Since(start).Round(time.Millisecond), "err", err)
			}
			return
		}
		t := time.NewTimer(jitter(wait))
		select {
		case <-ctx.Done():
			t.Stop()
			// Put it back first in line, so Flush gets one last try.
			q.requeue(b)
			return
		case <-t.C:
		}
		wait = min(2*wait, q.opts.Backoff.Max)
	}
}

// requeue puts a batch back at the head, dropping it if producers filled
// the queue meanwhile.
func (q *Queue[T]) requeue(b T) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) >= q.opts.Size {
		q.c.dropped.Inc()
		return
	}
	q.items = append([]T{b}, q.items...)
	q.c.length.Set(float64(len(q.items)))
}

// attempt sends once and records the outcome. A Parts batch bounds each
// of its requests itself (SendParts), not all of them together.
func (q *Queue[T]) attempt(ctx context.Context, b T) error {
	actx, cancel := ctx, context.CancelFunc(func() {})
	if _, ok := any(b).(partsBatch); !ok {
		actx, cancel = context.WithTimeout(ctx, q.opts.Timeout)
	}
	err := q.send(actx, b)
	cancel()
	if err == nil {
		q.c.sent.Inc()
		q.transition(stateOK, nil)
		return nil
	}
	q.c.errors.Inc()
	if IsPermanent(err) {
		q.transition(stateRejected, err)
	} else {
		q.transition(stateFailing, err)
	}
	return err
}

// transition logs when the backend's state changes, once.
func (q *Queue[T]) transition(s state, err error) {
	if s == q.state {
		return
	}
	prev := q.state
	q.state = s
	switch s {
	case stateOK:
		if prev != stateUnknown {
			q.opts.Logger.Info("export backend accepting data again")
		}
	case stateFailing:
		q.opts.Logger.Warn("export backend unreachable or failing; retrying with backoff, dropping the oldest batches when the queue is full", "err", err)
	case stateRejected:
		q.opts.Logger.Error("export backend rejects data; not retrying those batches", "err", err)
	}
}

// jitter spreads waits over [d/2, d) so that many daemons restarted
// together do not retry in lockstep.
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	half := d / 2
	return half + rand.N(half)
}

// permanentError marks an error that retrying cannot fix.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent marks err as not retryable. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

// IsPermanent reports whether err was marked with Permanent.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}

// Parts is one batch sent as several requests, in order: an interval too
// large for one request. The queue keeps and counts it as one batch (so a
// large interval does not push its own first requests out of the queue,
// and the queue size still counts intervals), and a retry resumes after
// the requests already done, so none is sent twice.
type Parts[T any] struct {
	items   []T
	done    int   // requests sent or refused; touched by the queue's sender only
	refused error // the first permanent refusal of a request
}

// NewParts makes one batch of items.
func NewParts[T any](items []T) *Parts[T] { return &Parts[T]{items: items} }

// partsBatch is how the queue tells a Parts batch (and its progress) from
// others.
type partsBatch interface{ progress() int }

func (p *Parts[T]) progress() int { return p.done }

// progress is how many requests of b are done, for a Parts batch; 0
// otherwise.
func progress[T any](b T) int {
	if p, ok := any(b).(partsBatch); ok {
		return p.progress()
	}
	return 0
}

// SendParts sends a Parts batch with send, one request after another, each
// within timeout (0: DefaultTimeout), so that a batch of many requests is
// not cut short by one limit for all. A retryable error stops the attempt
// (the retry resumes at that request). A request refused for good is
// skipped, the others are still sent, and the refusal is returned at the
// end: the batch is not delivered in full, so it counts as dropped.
func SendParts[T any](send SendFunc[T], timeout time.Duration) SendFunc[*Parts[T]] {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return func(ctx context.Context, p *Parts[T]) error {
		for p.done < len(p.items) {
			rctx, cancel := context.WithTimeout(ctx, timeout)
			err := send(rctx, p.items[p.done])
			cancel()
			if err != nil && !IsPermanent(err) {
				return err
			}
			if err != nil && p.refused == nil {
				p.refused = err
			}
			var zero T
			p.items[p.done] = zero // done: its memory can go
			p.done++
		}
		return p.refused
	}
}
