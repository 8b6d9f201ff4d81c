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

	"github.com/cgscope/cgscope/cgroup"
	"github.com/cgscope/cgscope/exporter"
	"github.com/cgscope/cgscope/profiler"
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
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	a, err := startAgent(c.prof)
	if err != nil {
		return err
	}
	defer a.close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		exporter.NewSelfCollector(a.sampler, a.sym.Stats, a.pipeline.Stats),
		a.workloads,
	)
	cgroupOpts.Workloads = a.workloads
	counters, cgroupMetrics, err := c.registerCgroupMetrics(ctx, reg, a, cgroupOpts)
	if err != nil {
		return err
	}
	gatherer := prometheus.Gatherer(reg)
	if cgroupMetrics != nil {
		gatherer = exporter.CombineGatherers(reg, cgroupMetrics)
	}
	programs := []exporter.ProgramStatsSource{a.sampler}
	if counters != nil {
		programs = append(programs, counters)
	}
	reg.MustRegister(exporter.NewBPFProgramCollector(programs...))
	a.releaseBTF()
	stopPush, err := startPushExporters(ctx, pushCfg, reg, gatherer, a.pipeline)
	if err != nil {
		return err
	}
	history, stopHistory, err := startHistory(c.history, reg, a.pipeline, c.selfProfiling)
	if err != nil {
		return err
	}
	defer stopHistory() // after the pipeline's last window, so it is stored too
	handler, err := exporter.NewHandler(exporter.HandlerOptions{
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

// registerCgroupMetrics starts the per-cgroup collectors and registers their
// health metrics; it returns the counter programs (nil when none run) and
// the per-cgroup collector, which is gathered beside the registry (nil
// without cgroup2: such a host gets no per-cgroup metrics, with a warning).
func (c *serveCommand) registerCgroupMetrics(ctx context.Context, reg *prometheus.Registry, a *agent, opts exporter.CgroupOptions) (*profiler.CgroupCounters, *exporter.CgroupCollector, error) {
	if a.cgroups == nil {
		slog.Warn("no cgroup2 hierarchy: per-cgroup metrics are off")
		return nil, nil, nil
	}
	counters, err := c.counters.startCounters(a.cgroups.Root(), a.btf)
	if err != nil {
		return nil, nil, err
	}
	opts.Collectors = map[string]bool{}
	var source exporter.CgroupCounterSource
	if counters != nil {
		a.addCloser(counters.Close)
		reg.MustRegister(exporter.NewCounterHealthCollector(counters))
		for _, st := range counters.Collectors() {
			opts.Collectors[st.Name] = st.Enabled
		}
		source = counters
	}
	var files *exporter.FileStatsCache
	if c.counters.cgroupFiles {
		if r, err := cgroup.NewFileReader(); err != nil {
			slog.Warn("collector disabled: cgroup files unreadable", "collector", "cgroupfs", "err", err)
		} else {
			files = exporter.NewFileStatsCache(r, c.counters.filesInterval, 20*time.Millisecond)
			go files.Run(ctx)
		}
	}
	return counters, exporter.NewCgroupCollector(source, a.cgroups, files, opts), nil
}
