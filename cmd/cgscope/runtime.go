package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/alecthomas/units"

	"github.com/cgscope/cgscope/internal/every"
)

// runtimeFlags tune the Go runtime of the daemon.
type runtimeFlags struct {
	memoryLimit  units.Base2Bytes
	gcPercent    int
	gcPercentSet bool
	maxProcs     int
	maxProcsSet  bool
}

func addRuntimeFlags(cmd *kingpin.CmdClause) *runtimeFlags {
	f := &runtimeFlags{}
	// Without a limit the Go heap goal is twice the live heap at the last collection,
	// so RSS follows the peaks of transient work (a drain of a busy interval, a
	// table compiled) and stays up after them. A soft limit makes the collector run
	// earlier as it is approached, flattening RSS at some CPU; it is off by default
	// because a live heap above it (an in-memory history of 256MiB, a very large host)
	// would make the collector run continuously.
	cmd.Flag("runtime.memory-limit", "Soft limit of the Go runtime's memory (heap, stacks, runtime; not the binary's mapped pages): the collector runs more often as it is approached. 0: none, or GOMEMLIMIT from the environment.").
		Default("0").BytesVar(&f.memoryLimit)
	// The live heap is small (about 9 MB under a churn of 100 processes a
	// second) and most of what is allocated is garbage within one drain, so
	// Go's default of a heap twice the live one mostly holds garbage: at 50
	// the heap goal, and with it RSS, is a third lower for a collection every
	// few seconds (about 5 ms of CPU each).
	cmd.Flag("runtime.gc-percent", "Heap growth over the live heap before the Go collector runs (GOGC); GOGC from the environment applies unless this flag is given.").
		Default("50").IsSetByUser(&f.gcPercentSet).IntVar(&f.gcPercent)
	// The daemon's work comes in small bursts (a new process read, a notice
	// handed to a worker), each of which, with more than one P, also wakes
	// an idle one to look for more work and finds none: under a churn of 100
	// processes a second that spinning was a sixth of its CPU (3.41 -> 2.91%
	// and 4.46 -> 3.61% of a core, side by side; thread switches 440-490 ->
	// 300 a second). Its CPU-heavy work (a drain, a table compile) is short
	// and the scheduler preempts it every 10 ms, so one P keeps up.
	// node_exporter defaults to one as well.
	cmd.Flag("runtime.gomaxprocs", "CPUs the Go runtime runs the daemon's code on at once (GOMAXPROCS); GOMAXPROCS from the environment applies unless this flag is given.").
		Default("1").IsSetByUser(&f.maxProcsSet).IntVar(&f.maxProcs)
	return f
}

// apply sets the collector's target (unless GOGC is set and the flag is not) and the
// limit, unless none is asked for (GOMEMLIMIT, read by the runtime at start, then
// applies).
func (f *runtimeFlags) apply() error {
	if f.memoryLimit < 0 {
		return fmt.Errorf("--runtime.memory-limit=%s: want 0 or more", f.memoryLimit)
	}
	if f.gcPercent < 10 {
		return fmt.Errorf("--runtime.gc-percent=%d: want 10 or more (below, the collector runs almost continuously)", f.gcPercent)
	}
	if f.maxProcs < 1 {
		return fmt.Errorf("--runtime.gomaxprocs=%d: want 1 or more", f.maxProcs)
	}
	if f.gcPercentSet || os.Getenv("GOGC") == "" {
		debug.SetGCPercent(f.gcPercent)
	}
	if f.maxProcsSet || os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(f.maxProcs)
	}
	if f.memoryLimit == 0 {
		return nil
	}
	if env := os.Getenv("GOMEMLIMIT"); env != "" {
		slog.Info("--runtime.memory-limit overrides GOMEMLIMIT", "GOMEMLIMIT", env)
	}
	debug.SetMemoryLimit(int64(f.memoryLimit))
	return nil
}

// releaseEvery is how often the daemon looks at whether to hand the memory
// its heap freed back to the system. The runtime's scavenger keeps what the
// heap goal may need again, and returns the rest slowly, so RSS would keep
// the high-water mark of recent transient work (a busy drain, a table
// compiled, a history window encoded) for minutes and creep up with each new
// peak. A collection and release every 10 s costs about 0.1-0.2% of a core
// under churn (self-profile: 10-17 ms each, most of it returning pages the
// next allocations fault in again). Releasing only when 4 MiB or more was
// free saved most of that, but without the collection the heap in use rose
// from 12 to 17 MB and RSS swung by 4 MiB between readings: a flat RSS is
// worth more there.
const releaseEvery = 10 * time.Second

// A release follows releaseAfter bytes allocated since the last one (under
// a churn of 100 processes a second the daemon allocates about 10 MB in
// releaseEvery, so it releases every time, as RSS stays flat only then),
// and otherwise comes at least every releaseAtLeast. A host whose processes
// live long allocates about 3 MB in releaseEvery; releasing every 10 s
// there was a tenth to a third of the daemon's CPU (0.20-0.23% of a core
// against 0.16-0.18% with none), for memory its heap goal would want back
// soon anyway.
const (
	releaseAfter   = 6 << 20
	releaseAtLeast = time.Minute
)

// releaseMemory returns freed memory to the system, when releaseDue says
// so, until ctx ends.
func releaseMemory(ctx context.Context) {
	sample := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	var lastAllocs uint64
	last := time.Now()
	every.Run(ctx, releaseEvery, func() {
		metrics.Read(sample)
		allocs := sample[0].Value.Uint64()
		if !releaseDue(allocs-lastAllocs, time.Since(last)) {
			return
		}
		debug.FreeOSMemory()
		lastAllocs, last = allocs, time.Now()
	})
}

// releaseDue says whether to release now, allocated bytes and since the
// last release.
func releaseDue(allocated uint64, since time.Duration) bool {
	return allocated >= releaseAfter || since >= releaseAtLeast
}
