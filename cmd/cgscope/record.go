package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"golang.org/x/term"

	"github.com/cgscope/cgscope/exporter/pprof"
)

type recordCommand struct {
	cmd      *kingpin.CmdClause
	prof     *profilingFlags
	duration time.Duration
	pid      uint32
	cgroup   string
	output   string
}

func newRecordCommand(app *kingpin.Application, prof *profilingFlags) *recordCommand {
	c := &recordCommand{prof: prof}
	c.cmd = app.Command("record", "Capture one CPU profile of the host (or one process) to a pprof file.")
	c.cmd.Flag("duration", "How long to record.").Default("10s").DurationVar(&c.duration)
	c.cmd.Flag("pid", "Only this process.").Uint32Var(&c.pid)
	c.cmd.Flag("cgroup", "Only this cgroup2 path and its children.").StringVar(&c.cgroup)
	c.cmd.Flag("output", "Where to write the gzip pprof.").Short('o').Default("cpu.pb.gz").StringVar(&c.output)
	return c
}

func (c *recordCommand) validate() error {
	if c.duration < time.Second || c.duration > 24*time.Hour {
		return fmt.Errorf("--duration=%s: want 1s..24h", c.duration)
	}
	if c.cgroup != "" && c.cgroup[0] != '/' {
		return fmt.Errorf("--cgroup=%q: want a cgroup2 path starting with /", c.cgroup)
	}
	if dir := filepath.Dir(c.output); dir != "" {
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			return fmt.Errorf("--output=%q: directory %q does not exist", c.output, dir)
		}
	}
	return nil
}

func (c *recordCommand) run() error {
	if err := c.validate(); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	a, err := startAgent(c.prof)
	if err != nil {
		return err
	}
	defer a.close()

	done := make(chan struct{})
	if term.IsTerminal(int(os.Stdout.Fd())) {
		go c.showProgress(a, done)
	}
	windows, err := a.pipeline.Capture(ctx, c.duration)
	close(done)
	if err != nil {
		return fmt.Errorf("recording: %w", err)
	}
	p := pprof.Build(windows, pprof.Selector{PID: c.pid, Cgroup: c.cgroup})
	f, err := os.Create(c.output)
	if err != nil {
		return err
	}
	if err := p.Write(f); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", c.output, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	var samples int64
	for _, s := range p.Sample {
		samples += s.Value[0]
	}
	fmt.Printf("wrote %s: %d samples, %d unique stacks\n", c.output, samples, len(p.Sample))
	return nil
}

// showProgress redraws one status line per second while recording.
func (c *recordCommand) showProgress(a *agent, done <-chan struct{}) {
	start := time.Now()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-done:
			fmt.Print("\r\033[K")
			return
		case <-t.C:
			st, _ := a.sampler.Stats()
			fmt.Printf("\r\033[Krecording %s / %s, %d samples on %d CPUs",
				time.Since(start).Round(time.Second), c.duration, st.Samples, a.sampler.CPUs())
		}
	}
}
