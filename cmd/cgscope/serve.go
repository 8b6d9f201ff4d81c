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

	"github.com/cgscope/cgscope/exporter"
)

type serveCommand struct {
	cmd            *kingpin.CmdClause
	prof           *profilingFlags
	web            *web.FlagConfig
	defaultSeconds int
	maxSeconds     int
}

func newServeCommand(app *kingpin.Application, prof *profilingFlags) *serveCommand {
	c := &serveCommand{prof: prof}
	c.cmd = app.Command("serve", "Run the daemon (the default command).").Default()
	c.web = kingpinflag.AddFlags(c.cmd, "127.0.0.1:9760")
	c.cmd.Flag("profiling.capture-default-seconds", "Capture length of /debug/pprof/profile without ?seconds=.").
		Default("30").IntVar(&c.defaultSeconds)
	c.cmd.Flag("profiling.capture-max-seconds", "Longest capture /debug/pprof/profile accepts.").
		Default("300").IntVar(&c.maxSeconds)
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
	)
	handler, err := exporter.NewHandler(exporter.HandlerOptions{
		Capturer:              a.pipeline,
		Gatherer:              reg,
		DefaultCaptureSeconds: c.defaultSeconds,
		MaxCaptureSeconds:     c.maxSeconds,
		Version:               version,
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
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}
