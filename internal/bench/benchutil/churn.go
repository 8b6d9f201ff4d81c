package benchutil

import (
	"context"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The process churn of issue 16, shared by the churn soak (internal/bench/churn) and
// the end-to-end churn test: 100 execs a second, most of them processes that live a
// millisecond, some a busy program that lives 200 ms and gets sampled.
const (
	ChurnShortEvery = 200 * time.Millisecond // a batch of short processes this often
	ChurnShortBatch = 20                     // /bin/true each batch: 100 a second
	ChurnBusyEvery  = 150 * time.Millisecond // a busy program this often
	ChurnBusyFor    = 200 * time.Millisecond // how long it burns CPU
)

// ChurnCounts counts what a churn started and what failed to start.
type ChurnCounts struct {
	Started, Failed atomic.Uint64
}

// Churn runs /bin/true ChurnBatch times every ChurnShortEvery and busy (argv of a
// program that burns CPU for ChurnBusyFor and exits) every ChurnBusyEvery, until ctx
// ends; it returns when every process it started has been reaped. The children die
// with the caller (parent-death SIGKILL).
func Churn(ctx context.Context, busy []string, counts *ChurnCounts) {
	var wg sync.WaitGroup
	spawn := func(argv ...string) {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			counts.Failed.Add(1)
			return
		}
		counts.Started.Add(1)
		wg.Add(1)
		go func() { defer wg.Done(); cmd.Wait() }()
	}
	short := time.NewTicker(ChurnShortEvery)
	defer short.Stop()
	long := time.NewTicker(ChurnBusyEvery)
	defer long.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-short.C:
			for range ChurnShortBatch {
				spawn("/bin/true")
			}
		case <-long.C:
			spawn(busy...)
		}
	}
}
