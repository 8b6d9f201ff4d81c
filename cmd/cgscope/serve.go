package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/exporter-toolkit/web"
	"github.com/prometheus/exporter-toolkit/web/kingpinflag"

	"github.com/cgscope/cgscope/collector"
	"github.com/cgscope/cgscope/exporter/cgroupmetrics"
	"github.com/cgscope/cgscope/exporter/server"
	"github.com/cgscope/cgscope/internal/bpfstats"
)

type serveCommand struct {
	cmd            *kingpin.CmdClause
	prof           *profilingFlags
	web            *web.FlagConfig
	defaultSeconds int
	maxSeconds     int
	selfProfiling  bool
	counters       *counterFlags
	push           *pushFlags
	history        *historyFlags
	runtime        *runtimeFlags
}

func newServeCommand(app *kingpin.Application, prof *profilingFlags) *serveCommand {
	c := &serveCommand{prof: prof}
	c.cmd = app.Command("serve", "Run the daemon (the default command).").Default()
	c.web = kingpinflag.AddFlags(c.cmd, "127.0.0.1:9760")
	c.cmd.Flag("profiling.capture-default-seconds", "Capture length of /debug/pprof/profile without ?seconds=.").
		Default("30").IntVar(&c.defaultSeconds)
	c.cmd.Flag("profiling.capture-max-seconds", "Longest capture /debug/pprof/profile accepts.").
		Default("300").IntVar(&c.maxSeconds)
	c.cmd.Flag("web.enable-self-profiling", "Serve Go's pprof handlers for cgscope itself under /debug/self/pprof/.").
		BoolVar(&c.selfProfiling)
	c.counters = addCounterFlags(c.cmd)
	c.push = addPushFlags(c.cmd)
	c.history = addHistoryFlags(c.cmd)
	c.runtime = addRuntimeFlags(c.cmd)
	return c
}

func (c *serveCommand) validate() error {
	if c.maxSeconds < 1 || c.maxSeconds > 3600 {
		return fmt.Errorf("--profiling.capture-max-seconds=%d: want 1..3600", c.maxSeconds)
	}
	if c.defaultSeconds < 1 || c.defaultSeconds > c.maxSeconds {
		return fmt.Errorf("--profiling.capture-default-seconds=%d: want 1..%d", c.defaultSeconds, c.maxSeconds)
	}
	return nil
}

func (c *serveCommand) run() error {
	if err := c.validate(); err != nil {
		return err
	}
	cgroupOpts, err := c.counters.options()
	if err != nil {
		return err
	}
	pushCfg, err := c.push.config()
	if err != nil {
		return err
	}
	if err := c.history.validate(); err != nil {
		return err
	}
	if err := c.runtime.apply(); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go releaseMemory(ctx)

	a, err := startAgent(c.prof)
	if err != nil {
		return err
	}
	defer a.close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		a.sampler, a.sym, a.pipeline, a.workloads, a.switchTime,
	)
	if a.unwind != nil {
		reg.MustRegister(a.unwind)
	}
	if a.interp != nil {
		reg.MustRegister(a.interp)
	}
	cgroupOpts.Workloads = a.workloads
	collectors, cgroupMetrics, err := c.registerCgroupMetrics(ctx, reg, a, cgroupOpts)
	if err != nil {
		return err
	}
	if p := collectors.SwitchPrograms(); p != nil {
		a.switchTime.Add(p) // the run-queue latency histogram, sampled
	}
	gatherer := prometheus.Gatherer(reg)
	if cgroupMetrics != nil {
		gatherer = cgroupmetrics.CombineGatherers(reg, cgroupMetrics)
	}
	reg.MustRegister(bpfstats.NewCollector(a.sampler, collectors))
	a.releaseBTF()
	stopPush, err := startPushExporters(ctx, pushCfg, reg, gatherer, a.pipeline)
	if err != nil {
		return err
	}
	history, stopHistory, err := startHistory(c.history, reg, a.pipeline)
	if err != nil {
		return err
	}
	defer stopHistory() // after the pipeline's last window, so it is stored too
	handler, err := server.New(server.Options{
		Capturer:              a.pipeline,
		Gatherer:              gatherer,
		DefaultCaptureSeconds: c.defaultSeconds,
		MaxCaptureSeconds:     c.maxSeconds,
		Version:               version,
		SelfProfiling:         c.selfProfiling,
		History:               history,
	})
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}

	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); a.runPipeline(ctx) }()

	serveErr := make(chan error, 1)
	go func() { serveErr <- web.ListenAndServe(srv, c.web, slog.Default()) }()
	for _, addr := range *c.web.WebListenAddresses {
		slog.Info("serving", "url", "http://"+addr+"/")
	}

	select {
	case err = <-serveErr:
		stop()
	case <-ctx.Done():
		slog.Info("shutting down")
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err = srv.Shutdown(shutdownCtx)
	}
	wg.Wait()
	stopPush() // after the pipeline's last window, so it is sent too
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// registerCgroupMetrics starts the per-cgroup collectors and registers
// their own metrics; it returns them and the per-cgroup metrics, which are
// gathered beside the registry (nil without cgroup2: such a host gets no
// per-cgroup metrics, with a warning).
func (c *serveCommand) registerCgroupMetrics(ctx context.Context, reg *prometheus.Registry, a *agent, opts cgroupmetrics.Options) (*collector.Set, *cgroupmetrics.Collector, error) {
	if a.cgroups == nil {
		slog.Warn("no cgroup2 hierarchy: per-cgroup metrics are off")
		set := collector.Unavailable("no cgroup2 hierarchy")
		reg.MustRegister(set)
		return set, nil, nil
	}
	set, err := c.counters.startCollectors(ctx, a.cgroups.Root(), a.btf)
	if err != nil {
		return nil, nil, err
	}
	a.addCloser(set.Close)
	reg.MustRegister(set)
	opts.Collectors = map[string]bool{}
	for _, st := range set.Status() {
		opts.Collectors[st.Name] = st.Enabled
	}
	// Interfaces holding a nil pointer are not nil: pass only what runs.
	var counters cgroupmetrics.CounterSource
	if set.Counters() != nil {
		counters = set.Counters()
	}
	var files cgroupmetrics.FileSource
	if set.Files() != nil {
		files = set.Files()
	}
	return set, cgroupmetrics.New(counters, a.cgroups, files, opts), nil
}
