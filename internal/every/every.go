// Package every runs a function on a fixed interval until a context ends:
// the loop every periodic worker of cgscope (cgroup file refresh, OTLP and
// remote-write exporters) shares.
package every

import (
	"context"
	"time"
)

// Run calls fn every interval until ctx ends. A slow fn delays the next
// call; ticks are not queued.
func Run(ctx context.Context, interval time.Duration, fn func()) {
	RunOrWake(ctx, interval, nil, fn)
}

// RunOrWake is Run that also calls fn whenever wake receives, without
// waiting for the interval (a producer with more than it should hold).
func RunOrWake(ctx context.Context, interval time.Duration, wake <-chan struct{}, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-wake: // a nil wake never receives
		}
		fn()
	}
}
