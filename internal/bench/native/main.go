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
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/cgscope/cgscope/internal/bench/benchutil"
)

type options struct {
	cgscope string
	out     string
	window  time.Duration
	settle  time.Duration
	quiet   time.Duration
	retries int
	repo    string
}

// Fixed by the issue: the frequency the targets are stated at, and the
// object whose table compile time is measured.
const (
	hz      = 99
	libLLVM = "/usr/lib/x86_64-linux-gnu/libLLVM.so.19.1"
)

func main() {
	var opt options
	flag.StringVar(&opt.cgscope, "cgscope", "bin/cgscope", "path of the cgscope binary to measure")
	flag.StringVar(&opt.out, "out", "", "append the Markdown section to this file (default: write it to stdout)")
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
	bin, err := filepath.Abs(opt.cgscope)
	if err != nil {
		return err
	}
	if st, err := os.Stat(bin); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return fmt.Errorf("-cgscope %s: not an executable file (run `make build` first)", opt.cgscope)
	}
	opt.cgscope = bin
	if opt.repo, err = findRepo(); err != nil {
		return err
	}
	var missing []string
	// By name on PATH, except Debian's rustc and python3.11 by path: rustup's
	// and pyenv's come first on PATH on some hosts, and the workloads are
	// meant to be what Debian ships.
	for _, tool := range []string{"gcc", "g++", "/usr/bin/rustc", "/usr/bin/python3.11", "bpftool", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if _, err := os.Stat(libLLVM); err != nil {
		missing = append(missing, libLLVM)
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s: `scripts/install-deps.sh test` (or `make test`) installs them", strings.Join(missing, ", "))
	}
	return nil
}

// findRepo returns the repository (the directory holding go.mod at or
// above the working directory): the workloads' sources and ./unwind are
// found from it.
func findRepo() (string, error) {
	dir, err := benchutil.FindRepo()
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(dir, nativeSrc, "chain.c")); err != nil {
		return "", fmt.Errorf("%s has no %s/chain.c: run from the cgscope repository", dir, nativeSrc)
	}
	return dir, nil
}

func logf(format string, args ...any) { benchutil.Logf(format, args...) }
