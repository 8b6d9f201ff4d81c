package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/google/pprof/profile"
	"golang.org/x/term"

	"github.com/cgscope/cgscope/exporter/pprof"
)

type recordCommand struct {
	cmd      *kingpin.CmdClause
	prof     *profilingFlags
	duration time.Duration
	kind     pprof.Kind
	pid      uint32
	cgroup   string
	output   string
	// outputSet tells an empty --output (an error) from none (the type's
	// file name).
	outputSet bool
}

func newRecordCommand(app *kingpin.Application, prof *profilingFlags) *recordCommand {
	c := &recordCommand{prof: prof}
	c.cmd = app.Command("record", "Capture one CPU or off-CPU profile of the host (or one process) to a pprof file.")
	c.cmd.Flag("duration", "How long to record.").Default("10s").DurationVar(&c.duration)
	c.cmd.Flag("type", "Profile type: cpu (where threads ran) or off_cpu (where they waited off the CPU, from the --profiling.off-cpu sampler).").
		Default(pprof.CPU.String()).SetValue(&c.kind)
	c.cmd.Flag("pid", "Only this process.").Uint32Var(&c.pid)
	c.cmd.Flag("cgroup", "Only this cgroup2 path and its children.").StringVar(&c.cgroup)
	c.cmd.Flag("output", "Where to write the gzip pprof (default: the type's name, cpu.pb.gz or off_cpu.pb.gz).").
		Short('o').IsSetByUser(&c.outputSet).StringVar(&c.output)
	return c
}

// outputPath is where the profile goes: --output, else the type's file
// name in the working directory.
func (c *recordCommand) outputPath() string {
	if !c.outputSet {
		return c.kind.FileName()
	}
	return c.output
}

func (c *recordCommand) validate() error {
	if c.duration < time.Second || c.duration > 24*time.Hour {
		return fmt.Errorf("--duration=%s: want 1s..24h", c.duration)
	}
	if c.cgroup != "" && c.cgroup[0] != '/' {
		return fmt.Errorf("--cgroup=%q: want a cgroup2 path starting with /", c.cgroup)
	}
	out := c.outputPath()
	if out == "" {
		return fmt.Errorf("--output=%q: want a file name", out)
	}
	if dir := filepath.Dir(out); dir != "" {
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			return fmt.Errorf("--output=%q: directory %q does not exist", out, dir)
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
	p := pprof.Build(windows, pprof.Selector{Kind: c.kind, PID: c.pid, Cgroup: c.cgroup})
	out := c.outputPath()
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	if err := p.Write(f); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", out, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if len(p.Sample) == 0 && c.kind == pprof.OffCPU {
		slog.Warn("no off-CPU samples recorded: is the off-CPU sampler on (--profiling.off-cpu)?")
	}
	fmt.Printf("wrote %s: %s\n", out, summary(c.kind, p))
	return nil
}

// summary says what a recorded profile holds, in its kind's words.
func summary(k pprof.Kind, p *profile.Profile) string {
	var events, nanos int64
	for _, s := range p.Sample {
		events += s.Value[0]
		nanos += s.Value[1]
	}
	if k == pprof.OffCPU {
		return fmt.Sprintf("%d switches off the CPU, %s off the CPU, %d unique stacks",
			events, time.Duration(nanos).Round(time.Millisecond), len(p.Sample))
	}
	return fmt.Sprintf("%d samples, %d unique stacks", events, len(p.Sample))
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
