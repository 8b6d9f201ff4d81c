// Command overhead measures what cgscope costs the host it profiles and
// compares it with perf and bpftrace sampling the same CPUs at the same
// frequency, side by side, while two CPU-burning workloads keep both CPUs busy.
//
// For each tool it reports the process's own CPU time (user+sys from rusage)
// plus the run time of its BPF programs from the kernel's bpf_stats, because
// the kernel charges a sampler's in-interrupt work to the interrupted tasks:
// perf's per-sample cost in particular never shows up in perf's own rusage.
// It also times how long cgscope takes from exec to its first healthy
// /healthz, runs the symbolizer benchmark when it exists, and writes the
// results as a Markdown report.
//
// It must run as root:
//
//	go run ./internal/bench/overhead -cgscope bin/cgscope -out docs/benchmarks.md -duration 30s
//
// The tool sets kernel.bpf_stats_enabled=1 for the run and restores the old
// value on every exit path it controls (normal return, error, panic,
// SIGINT/SIGTERM/SIGHUP). Every child process is started with a parent-death
// signal and is killed on exit.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cgscope/cgscope/internal/bench/benchutil"
)

type options struct {
	benchutil.Target
	duration   time.Duration
	freqs      []int
	readyRuns  int
	quietWait  time.Duration
	retries    int
	commandRun string
}

func main() {
	var opt options
	var freqs string
	opt.Flags("docs/benchmarks.md", "Markdown report to write (overwritten)")
	flag.DurationVar(&opt.duration, "duration", 30*time.Second, "how long the tools run side by side at each frequency")
	flag.StringVar(&freqs, "freqs", "19,99", "comma-separated sampling frequencies in Hz")
	flag.IntVar(&opt.readyRuns, "ready-runs", 5, "how many times to time cgscope's exec-to-healthy")
	flag.IntVar(&opt.retries, "noisy-retries", 2, "run a frequency again up to this many times when other work crowded out the workloads; the quietest run is kept")
	flag.DurationVar(&opt.quietWait, "quiet-wait", 5*time.Minute, "wait at most this long for the host to be idle before measuring (0: do not wait)")
	flag.Parse()

	if err := parseOptions(&opt, freqs); err != nil {
		fmt.Fprintln(os.Stderr, "overhead:", err)
		os.Exit(2)
	}

	benchutil.SetName("overhead")
	// Whatever ends the run, the sysctl is restored with the children
	// stopped.
	benchutil.OnCleanup(restoreBPFStats)
	benchutil.Main(func() error { return run(opt) })
}

func parseOptions(opt *options, freqs string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("must run as root (perf -a, bpftrace, bpftool and cgscope need it)")
	}
	if opt.duration < time.Second || opt.duration > time.Hour {
		return fmt.Errorf("-duration %s: want 1s..1h", opt.duration)
	}
	if opt.quietWait < 0 || opt.quietWait > time.Hour {
		return fmt.Errorf("-quiet-wait %s: want 0..1h", opt.quietWait)
	}
	if opt.retries < 0 || opt.retries > 10 {
		return fmt.Errorf("-noisy-retries %d: want 0..10", opt.retries)
	}
	if opt.readyRuns < 1 || opt.readyRuns > 100 {
		return fmt.Errorf("-ready-runs %d: want 1..100", opt.readyRuns)
	}
	for _, f := range strings.Split(freqs, ",") {
		hz, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || hz < 1 || hz > 1000 {
			return fmt.Errorf("-freqs: bad frequency %q (want 1..1000)", f)
		}
		opt.freqs = append(opt.freqs, hz)
	}
	if err := opt.Check(); err != nil {
		return err
	}
	repo, bin := opt.Repo, opt.Cgscope
	opt.commandRun = fmt.Sprintf("go run ./internal/bench/overhead -cgscope %s -out %s -duration %s",
		relTo(repo, bin), opt.Out, opt.duration)
	if freqs != "19,99" {
		opt.commandRun += " -freqs " + freqs
	}
	if opt.quietWait != 5*time.Minute {
		opt.commandRun += fmt.Sprintf(" -quiet-wait %s", opt.quietWait)
	}
	if opt.retries != 2 {
		opt.commandRun += fmt.Sprintf(" -noisy-retries %d", opt.retries)
	}
	if opt.readyRuns != 5 {
		opt.commandRun += fmt.Sprintf(" -ready-runs %d", opt.readyRuns)
	}
	return nil
}

func relTo(base, p string) string {
	if r, err := filepath.Rel(base, p); err == nil && !strings.HasPrefix(r, "..") {
		return r
	}
	return p
}

func logf(format string, args ...any) { benchutil.Logf(format, args...) }
