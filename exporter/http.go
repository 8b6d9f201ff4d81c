package exporter

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"

	"github.com/cgscope/cgscope/internal/pipeline"
)

// Capturer records the next d of whole-host profiling.
type Capturer interface {
	Capture(ctx context.Context, d time.Duration) ([]*pipeline.Window, error)
}

// HandlerOptions configures the HTTP endpoints.
type HandlerOptions struct {
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
	// History, when set, serves the web UI at / and /ui/ and the history
	// API at /api/v1/, replacing the plain landing page.
	History http.Handler
}

// NewHandler returns the agent's HTTP handler.
func NewHandler(opts HandlerOptions) (http.Handler, error) {
	mux := http.NewServeMux()
	landing, err := web.NewLandingPage(web.LandingConfig{
		Name:        "cgscope",
		Description: "eBPF CPU profiler and per-cgroup resource exporter",
		Version:     opts.Version,
		Links: []web.LandingLinks{
			{Address: "/debug/pprof/profile?seconds=10", Text: "CPU profile", Description: "gzip pprof of the next N seconds of the whole host (filters: pid=, cgroup=, namespace=, pod=, container=, container_id=, pod_uid=)"},
			{Address: "/metrics", Text: "Metrics", Description: "the agent's own metrics in Prometheus format"},
			{Address: "/healthz", Text: "Health", Description: "200 when the agent is serving"},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("building index page: %w", err)
	}
	if opts.History != nil {
		mux.Handle("/{$}", opts.History)
		mux.Handle("/ui/", opts.History)
		mux.Handle("/api/v1/", opts.History)
	} else {
		mux.Handle("/{$}", landing)
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

type slogErrorLogger struct{}

func (slogErrorLogger) Println(v ...any) { slog.Error("serving /metrics", "err", fmt.Sprint(v...)) }

// captureHandler serves /debug/pprof/profile like net/http/pprof: it blocks
// for ?seconds= and returns a gzip pprof of what was sampled meanwhile.
type captureHandler struct{ opts HandlerOptions }

func (h *captureHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	req, err := parseCaptureQuery(r.URL.Query(), h.opts.DefaultCaptureSeconds, h.opts.MaxCaptureSeconds)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	windows, err := h.opts.Capturer.Capture(r.Context(), req.duration)
	if err != nil {
		if r.Context().Err() == nil {
			http.Error(w, "capturing profile: "+err.Error(), http.StatusInternalServerError)
		}
		return
	}
	p := BuildProfile(windows, req.filter)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="cpu.pb.gz"`)
	if err := p.Write(w); err != nil {
		slog.Warn("writing profile to client failed", "err", err)
	}
}

type captureRequest struct {
	duration time.Duration
	filter   Filter
}

// parseCaptureQuery validates the query strictly: an unknown or malformed
// parameter is an error, never silently ignored.
func parseCaptureQuery(q url.Values, defaultSeconds, maxSeconds int) (captureRequest, error) {
	req := captureRequest{duration: time.Duration(defaultSeconds) * time.Second}
	for name, values := range q {
		if len(values) != 1 {
			return req, fmt.Errorf("parameter %q given %d times, want once", name, len(values))
		}
		v := values[0]
		switch name {
		case "seconds":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > maxSeconds {
				return req, fmt.Errorf("seconds=%q: want a whole number from 1 to %d", v, maxSeconds)
			}
			req.duration = time.Duration(n) * time.Second
		case "pid":
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil || n == 0 {
				return req, fmt.Errorf("pid=%q: want a positive process id", v)
			}
			req.filter.PID = uint32(n)
		case "cgroup":
			if !strings.HasPrefix(v, "/") {
				return req, fmt.Errorf("cgroup=%q: want a cgroup2 path starting with /", v)
			}
			req.filter.CgroupPrefix = v
		default:
			if known, err := req.filter.Workload.parseParam(name, v); err != nil {
				return req, err
			} else if !known {
				return req, fmt.Errorf("unknown parameter %q (known: seconds, pid, cgroup, %s)", name, workloadParams)
			}
		}
	}
	return req, nil
}

// mountSelfProfiling serves net/http/pprof's handlers under /debug/self/pprof/.
func mountSelfProfiling(mux *http.ServeMux) {
	const prefix = "/debug/self/pprof/"
	mux.HandleFunc(prefix, func(w http.ResponseWriter, r *http.Request) {
		name := strings.TrimPrefix(r.URL.Path, prefix)
		switch name {
		case "", "cmdline", "profile", "symbol", "trace":
			r2 := r.Clone(r.Context())
			r2.URL.Path = "/debug/pprof/" + name
			map[string]http.HandlerFunc{"": pprof.Index, "cmdline": pprof.Cmdline, "profile": pprof.Profile,
				"symbol": pprof.Symbol, "trace": pprof.Trace}[name](w, r2)
		default:
			pprof.Handler(name).ServeHTTP(w, r)
		}
	})
}
