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
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}
