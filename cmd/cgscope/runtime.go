package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
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
	if f.gcPercentSet || os.Getenv("GOGC") == "" {
		debug.SetGCPercent(f.gcPercent)
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

// releaseEvery is how often the daemon looks at the memory its heap freed and
// has not handed back. The runtime's scavenger keeps what the heap goal may
// need again, and returns the rest slowly, so RSS would keep the high-water
// mark of recent transient work (a busy drain, a table compiled, a history
// window encoded) for minutes and creep up with each new peak.
const releaseEvery = 10 * time.Second

// releaseMinBytes is the freed, unreturned heap worth a collection and a
// release. Releasing at every look cost 0.17% of a core under churn (the
// release returned the pages the next allocations faulted in again); below
// this the scavenger's own pace does.
const releaseMinBytes = 4 << 20

// releaseMemory hands freed memory back to the system every releaseEvery
// when at least releaseMinBytes of it is held, until ctx ends.
func releaseMemory(ctx context.Context) {
	free := []metrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}
	every.Run(ctx, releaseEvery, func() {
		metrics.Read(free)
		if free[0].Value.Kind() == metrics.KindUint64 && free[0].Value.Uint64() >= releaseMinBytes {
			debug.FreeOSMemory()
		}
	})
}
