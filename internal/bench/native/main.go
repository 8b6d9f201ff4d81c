// Command native measures what cgscope's native stack unwinding (user
// stacks walked in BPF with tables compiled from .eh_frame) costs on this
// host, in one run, and writes a Markdown section with the targets next to
// the figures:
//
//  1. the BPF cost per sample (sample_cpu's run time over its runs) and the
//     user frames walked per stack, for two C workloads without frame
//     pointers at 99 Hz, cgscope profiling only; and the same with
//     --no-unwind.tables (the kernel's frame-pointer walk) for comparison;
//  2. the memory of the unwind tables while the C, C++, Rust and Python
//     workloads run, cgscope with its defaults: its unwind gauges, the
//     memlock of every BPF map it holds, and its peak RSS;
//  3. the CPU time to compile libLLVM-19's table (BenchmarkCompileLibLLVM,
//     from the test binary's rusage).
//
// It must run as root, from the repository:
//
//	go run ./internal/bench/native -cgscope bin/cgscope -out docs/benchmarks.md
//
// BPF run times come from cgscope's own /metrics: cgscope turns the kernel's
// bpf_stats on for its own life (--profiling.bpf-stats, on by default), so
// no sysctl is changed here. Every child runs in its own process group with
// a parent-death SIGKILL and is killed on every exit path this process
// controls (return, error, panic, SIGINT/SIGTERM/SIGHUP…); the workloads
// also end on their own after the time they were given.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/cgscope/cgscope/internal/bench/benchutil"
)

type options struct {
	benchutil.Target
	window  time.Duration
	settle  time.Duration
	quiet   time.Duration
	retries int
}

// Fixed by the issue: the frequency the targets are stated at, and the
// object whose table compile time is measured.
const (
	hz      = 99
	libLLVM = "/usr/lib/x86_64-linux-gnu/libLLVM.so.19.1"
)

func main() {
	var opt options
	opt.Flags("", "write the Markdown section into this file, replacing its previous version or appended (default: stdout)")
	flag.DurationVar(&opt.window, "window", 20*time.Second, "measuring window of each cgscope run")
	flag.DurationVar(&opt.settle, "settle", 3*time.Second, "least time the workloads run before the window (tables compiling and loading); "+
		"then it waits, at most 30 s more, until the table gauges stop changing")
	flag.DurationVar(&opt.quiet, "quiet-wait", 2*time.Minute, "before each cgscope run, wait at most this long for the host to be idle (0: do not wait)")
	flag.IntVar(&opt.retries, "noisy-retries", 2, "measure a run again up to this many times when other work crowded out its workloads; the quietest is kept")
	flag.Parse()
	if err := checkOptions(&opt); err != nil {
		fmt.Fprintln(os.Stderr, "native:", err)
		os.Exit(2)
	}

	benchutil.SetName("native")
	benchutil.Main(func() error { return run(opt) })
}

// checkOptions validates the flags and checks, before anything starts,
// that every tool and file the three measurements need is there.
func checkOptions(opt *options) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("must run as root (cgscope, bpftool and /proc/PID/fdinfo of its maps need it)")
	}
	if opt.window < 5*time.Second || opt.window > time.Hour {
		return fmt.Errorf("-window %s: want 5s..1h", opt.window)
	}
	if opt.settle < 0 || opt.settle > 5*time.Minute {
		return fmt.Errorf("-settle %s: want 0..5m", opt.settle)
	}
	if opt.quiet < 0 || opt.quiet > time.Hour {
		return fmt.Errorf("-quiet-wait %s: want 0..1h", opt.quiet)
	}
	if opt.retries < 0 || opt.retries > 10 {
		return fmt.Errorf("-noisy-retries %d: want 0..10", opt.retries)
	}
	if err := opt.Check(nativeSrc + "/chain.c"); err != nil {
		return err
	}
	// By name on PATH, except Debian's rustc and python3.11 by path: rustup's
	// and pyenv's come first on PATH on some hosts, and the workloads are
	// meant to be what Debian ships.
	return benchutil.NeedTools([]string{"gcc", "g++", "/usr/bin/rustc", "/usr/bin/python3.11", "bpftool", "go"}, libLLVM)
}

func logf(format string, args ...any) { benchutil.Logf(format, args...) }
