// Command sched measures what cgscope costs a host that switches and
// faults a lot, and what it takes from the loads that do: each of three
// loads runs with no cgscope (the baseline) and with cgscope in each of
// three configurations, and the run reports, for each, the BPF time of all
// of cgscope's programs, the agent's own CPU and memory, the load's event
// rate and its own throughput next to the baseline's, and the targets met.
//
// Loads (testdata/loads.c, compiled at run time with gcc, and the spin load
// of the overhead benchmark):
//
//   - pingpong: two processes bounce a byte over two pipes, each blocking in
//     read(2): the host's context switches (/proc/stat ctxt) per second;
//   - faults: one process per CPU maps fresh memory, touches every page and
//     unmaps it: the host's page faults (/proc/vmstat pgfault) per second;
//   - spin: two internal/e2e/testdata/gosplit burn CPU: few events, the
//     cost of profiling alone.
//
// Configurations: "defaults" (no flags), "off-CPU on" (--profiling.off-cpu,
// run only when bin/cgscope has that flag: said loudly otherwise),
// "profiling only" (--no-collector.<name> for every collector its --help
// lists, and --no-profiling.off-cpu when it has that flag).
//
// Each measurement is a window (15 s by default) on a load that has run for
// a warm-up; repetitions interleave the configurations (baseline, A, B, C,
// baseline, A, B, C…) so that drift on the host reaches all alike, and the
// report gives the median and the range over the repetitions.
//
// BPF time: the run time (kernel bpf_stats, which this process keeps on for
// its life) of every program cgscope holds a descriptor to, found in
// /proc/PID/fdinfo and read by id: programs attached only part of the time
// are counted, and the descriptors are polled during the window, so that a
// program loaded or closed in it counts too.
//
// It must run as root, from the repository:
//
//	go run ./internal/bench/sched -cgscope bin/cgscope -out docs/benchmarks.md
//
// With -out, the section replaces its previous version in the file, or is
// appended. Every child runs in its own process group with a parent-death
// SIGKILL and is killed on every exit path this process controls; the
// loads also end on their own after the time they were given.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/cgscope/cgscope/internal/bench/benchutil"
)

type options struct {
	benchutil.Target
	// The timing of each measurement (see the flags).
	window, warmup, settle, quiet, poll time.Duration
	reps, faultKiB                      int
	loads                               []string
}

func main() {
	var opt options
	var loads string
	opt.Flags("", "write the Markdown section into this file, replacing its previous version or appended (default: stdout)")
	flag.DurationVar(&opt.window, "window", 15*time.Second, "measuring window of each load in each configuration")
	flag.DurationVar(&opt.warmup, "warmup", 2*time.Second, "time a load runs before its window")
	flag.DurationVar(&opt.settle, "settle", 3*time.Second, "time cgscope runs after its first healthy /healthz before the first load starts")
	flag.IntVar(&opt.reps, "reps", 3, "repetitions of every (configuration, load) pair, interleaved")
	flag.StringVar(&loads, "loads", "pingpong,faults,spin", "comma-separated loads to run, of pingpong, faults, spin")
	flag.IntVar(&opt.faultKiB, "fault-kib", 512, "KiB the faults load maps, touches and unmaps at a time")
	flag.DurationVar(&opt.quiet, "quiet-wait", time.Minute, "before the first measurement, wait at most this long for the host to be idle (0: do not wait)")
	flag.DurationVar(&opt.poll, "poll", time.Second, "how often cgscope's BPF program descriptors are listed during a window")
	flag.Parse()
	if err := checkOptions(&opt, loads); err != nil {
		fmt.Fprintln(os.Stderr, "sched:", err)
		os.Exit(2)
	}
	benchutil.SetName("sched")
	benchutil.Main(func() error { return run(opt) })
}

// checkOptions validates the flags and checks, before anything starts,
// that the tools the loads need are there.
func checkOptions(opt *options, loads string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("must run as root (cgscope, and reading its BPF programs' statistics, need it)")
	}
	if opt.window < 5*time.Second || opt.window > time.Hour {
		return fmt.Errorf("-window %s: want 5s..1h", opt.window)
	}
	if opt.warmup < 0 || opt.warmup > time.Minute {
		return fmt.Errorf("-warmup %s: want 0..1m", opt.warmup)
	}
	if opt.settle < 0 || opt.settle > 5*time.Minute {
		return fmt.Errorf("-settle %s: want 0..5m", opt.settle)
	}
	if opt.reps < 1 || opt.reps > 100 {
		return fmt.Errorf("-reps %d: want 1..100", opt.reps)
	}
	if opt.faultKiB < 4 || opt.faultKiB > 1<<20 {
		return fmt.Errorf("-fault-kib %d: want 4..1048576", opt.faultKiB)
	}
	if opt.quiet < 0 || opt.quiet > time.Hour {
		return fmt.Errorf("-quiet-wait %s: want 0..1h", opt.quiet)
	}
	if opt.poll < 100*time.Millisecond || opt.poll > opt.window {
		return fmt.Errorf("-poll %s: want 100ms..the window", opt.poll)
	}
	seen := map[string]bool{}
	for _, l := range strings.Split(loads, ",") {
		l = strings.TrimSpace(l)
		if loadByName(l) == nil {
			return fmt.Errorf("-loads: unknown load %q (want pingpong, faults, spin)", l)
		}
		if !seen[l] {
			opt.loads = append(opt.loads, l)
			seen[l] = true
		}
	}
	if err := opt.Check(loadsSrc); err != nil {
		return err
	}
	return benchutil.NeedTools([]string{"gcc", "go"})
}

func logf(format string, args ...any) { benchutil.Logf(format, args...) }
