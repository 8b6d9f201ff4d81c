package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
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

// releaseEvery is how often the daemon hands the memory its heap freed back to
// the system. The runtime's scavenger keeps what the heap goal may need again,
// and returns the rest slowly, so RSS would keep the high-water mark of recent
// transient work (a busy drain, a table compiled, a history window encoded) for
// minutes and creep up with each new peak. A collection and release every 10 s
// costs about 0.1-0.2% of a core under churn (self-profile: 10-17 ms each, most
// of it returning pages the next allocations fault in again). Releasing only
// when 4 MiB or more was free saved most of that, but without the collection
// the heap in use rose from 12 to 17 MB and RSS swung by 4 MiB between
// readings: a flat RSS is worth more here.
const releaseEvery = 10 * time.Second

// releaseMemory returns freed memory to the system every releaseEvery until ctx
// ends.
func releaseMemory(ctx context.Context) {
	every.Run(ctx, releaseEvery, debug.FreeOSMemory)
}
