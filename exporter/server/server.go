// Package server owns every route of cgscope's HTTP server: the web UI (/,
// /ui/) and the history API (/api/v1/) when there is a history, else a
// landing page at /; the live capture (/debug/pprof/profile); /metrics;
// /healthz; and, when asked for, Go's pprof of cgscope itself
// (/debug/self/pprof/). The handlers' work is done by the packages it
// mounts: exporter/pprof, exporter/history, exporter/ui.
package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/google/pprof/profile"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"

	"github.com/cgscope/cgscope/exporter/history"
	"github.com/cgscope/cgscope/exporter/ui"
	"github.com/cgscope/cgscope/internal/pipeline"
)

// Capturer records the next d of whole-host profiling (pipeline.Pipeline).
type Capturer interface {
	Capture(ctx context.Context, d time.Duration) ([]*pipeline.Window, error)
}

// Options configure the server.
type Options struct {
	Capturer Capturer
	// Gatherer serves /metrics.
	Gatherer prometheus.Gatherer
	// DefaultCaptureSeconds is used when ?seconds= is absent (net/http/pprof uses 30).
	DefaultCaptureSeconds int
	// MaxCaptureSeconds caps ?seconds=.
	MaxCaptureSeconds int
	Version           string
	// SelfProfiling serves Go's net/http/pprof for cgscope itself under
	// /debug/self/pprof/, for reporting cgscope's own CPU and memory use.
	SelfProfiling bool
	// History, when set, is served by the web UI at / and /ui/ and the
	// history API at /api/v1/, instead of the plain landing page.
	History *history.History
}

// The endpoints every index page lists.
var (
	captureLink = ui.Link{Address: "/debug/pprof/profile?seconds=10", Text: "Live CPU profile",
		Description: "gzip pprof of the next N seconds of the whole host (filters: pid=, comm=, cgroup=, namespace=, pod=, container=, container_id=, pod_uid=)"}
	offCPULink = ui.Link{Address: "/debug/pprof/profile?type=off_cpu&seconds=10", Text: "Live off-CPU profile",
		Description: "the same for where threads waited off the CPU (label off_cpu_reason: runnable, sleeping, io_wait, uninterruptible, other)"}
	metricsLink = ui.Link{Address: "/metrics", Text: "Metrics", Description: "the agent's own metrics in Prometheus format"}
	healthLink  = ui.Link{Address: "/healthz", Text: "Health", Description: "200 when the agent is serving"}
	selfLink    = ui.Link{Address: "/debug/self/pprof/", Text: "Self profiling", Description: "Go pprof of cgscope itself"}
)

// New returns the agent's HTTP handler.
func New(opts Options) (http.Handler, error) {
	mux := http.NewServeMux()
	if opts.History != nil {
		mountHistory(mux, opts)
	} else if err := mountLanding(mux, opts); err != nil {
		return nil, err
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{ErrorLog: slogErrorLogger{}}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("GET /debug/pprof/profile", &captureHandler{opts: opts})
	if opts.SelfProfiling {
		mountSelfProfiling(mux)
	}
	return mux, nil
}

// mountHistory serves the history API and the web UI, whose views are
// history queries.
func mountHistory(mux *http.ServeMux, opts Options) {
	api := &history.API{H: opts.History}
	mux.HandleFunc("GET /api/v1/profile", api.ServeProfile)
	mux.HandleFunc("GET /api/v1/targets", api.ServeTargets)
	links := []ui.Link{captureLink, offCPULink, metricsLink, healthLink}
	if opts.SelfProfiling {
		links = append(links, selfLink)
	}
	h := opts.History
	u := ui.New(ui.Options{
		Source: func(ctx context.Context, q url.Values) (*profile.Profile, error) {
			hq, err := history.ParseQuery(q, time.Now())
			if err != nil {
				return nil, err
			}
			return h.Profile(ctx, hq)
		},
		Links:   links,
		Version: opts.Version,
	})
	mux.Handle("/{$}", u)
	mux.Handle("/ui/", u)
}

// mountLanding serves exporter-toolkit's landing page at /.
func mountLanding(mux *http.ServeMux, opts Options) error {
	var links []web.LandingLinks
	for _, l := range []ui.Link{captureLink, offCPULink, metricsLink, healthLink} {
		links = append(links, web.LandingLinks{Address: l.Address, Text: l.Text, Description: l.Description})
	}
	landing, err := web.NewLandingPage(web.LandingConfig{
		Name:        "cgscope",
		Description: "eBPF CPU profiler and per-cgroup resource exporter",
		Version:     opts.Version,
		Links:       links,
	})
	if err != nil {
		return fmt.Errorf("building index page: %w", err)
	}
	mux.Handle("/{$}", landing)
	return nil
}

type slogErrorLogger struct{}

func (slogErrorLogger) Println(v ...any) { slog.Error("serving /metrics", "err", fmt.Sprint(v...)) }
