package pipeline

import (
	"testing"
	"time"

	"github.com/cgscope/cgscope/profiler"
	"github.com/cgscope/cgscope/symbolizer"
)

// emptySampler drains empty batches: what is tested here is the delivery
// of windows to subscribers, which needs no samples (the kernel side is
// tested against the kernel in package profiler and internal/e2e).
type emptySampler struct{}

func (emptySampler) Drain() (*profiler.RawBatch, error) {
	return &profiler.RawBatch{Start: time.Now(), End: time.Now()}, nil
}
func (emptySampler) Frequency() int { return 19 }
func (emptySampler) Stop() error    { return nil }

// A cancel called while its subscriber is receiving a window returns only
// once the subscriber has it, and no window reaches it afterwards: an
// exporter that stops converts that window rather than lose it.
func TestCancelWaitsForDelivery(t *testing.T) {
	p := New(emptySampler{}, symbolizer.New(symbolizer.Options{}), nil, time.Hour)
	entered, release := make(chan struct{}), make(chan struct{})
	calls := 0
	cancel := p.Subscribe(func(*Window) {
		calls++
		close(entered)
		<-release
	})
	go p.Flush()
	<-entered
	cancelled := make(chan struct{})
	go func() { cancel(); close(cancelled) }()
	select {
	case <-cancelled:
		t.Fatal("cancel returned while its subscriber was still receiving a window")
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("cancel did not return after the delivery ended")
	}
	if _, err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	if calls != 1 {
		t.Errorf("subscriber called %d times, want once (not after cancel)", calls)
	}
}
