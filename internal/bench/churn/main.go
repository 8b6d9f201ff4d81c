// Command churn is the process-churn soak of issue 16: cgscope with its defaults at
// 99 Hz, history on disk (--storage.path), while 100 processes a second start and exit
// (benchutil.Churn: twenty /bin/true every 200 ms and a Go program burning CPU for
// 200 ms every 150 ms). Every -every it reads the agent's RSS, Go heap in use, open
// file descriptors and CPU, and the symbolizer's and pipeline's process gauges, and it
// writes them as a table into a Markdown section with the targets next to the figures:
//
//   - agent CPU at most 0.5% of one core (user+sys, after the first minute);
//   - RSS flat after the first minute (growth under 2% between minute 2 and the end)
//     and at most 48 MiB;
//   - open file descriptors at most 1.2 times the objects the held processes map.
//
// It must run as root, from the repository:
//
//	go run ./internal/bench/churn -cgscope bin/cgscope -out docs/benchmarks.md
//
// cgscope and every churned process run in their own process group or die with this
// one (parent-death SIGKILL), and are stopped on every exit path it controls.
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
	duration time.Duration
	every    time.Duration
	hz       int
	extra    string // more cgscope flags, space-separated
}

func main() {
	var opt options
	opt.Flags("", "write the Markdown section into this file, replacing its previous version or appended (default: stdout)")
	flag.DurationVar(&opt.duration, "duration", 10*time.Minute, "how long the churn runs")
	flag.DurationVar(&opt.every, "every", 10*time.Second, "how often the agent is read")
	flag.IntVar(&opt.hz, "frequency", 99, "cgscope's --profiling.frequency")
	flag.StringVar(&opt.extra, "cgscope-flags", "", "more flags for cgscope, space-separated (e.g. --runtime.memory-limit=40MiB); they name the report's section")
	flag.Parse()
	if err := check(&opt); err != nil {
		fmt.Fprintln(os.Stderr, "churn:", err)
		os.Exit(2)
	}
	benchutil.SetName("churn")
	benchutil.Main(func() error { return run(opt) })
}

func check(opt *options) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("must run as root (cgscope needs it)")
	}
	if opt.duration < 3*time.Minute || opt.duration > 24*time.Hour {
		return fmt.Errorf("-duration %s: want 3m..24h (the targets compare minute 2 with the end)", opt.duration)
	}
	if opt.every < time.Second || opt.every > opt.duration/6 {
		return fmt.Errorf("-every %s: want 1s..duration/6", opt.every)
	}
	if opt.hz < 1 || opt.hz > 1000 {
		return fmt.Errorf("-frequency %d: want 1..1000", opt.hz)
	}
	if err := opt.Check(busySrc + "/main.go"); err != nil {
		return err
	}
	return benchutil.NeedTools([]string{"go", "/bin/true"})
}
