package server

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/cgscope/cgscope/exporter/pprof"
)

// captureHandler serves /debug/pprof/profile like net/http/pprof: it blocks
// for ?seconds= and returns a gzip pprof of what was sampled meanwhile, CPU
// or (type=off_cpu) off-CPU.
type captureHandler struct{ opts Options }

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
	p := pprof.Build(windows, req.filter)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="`+req.filter.Kind.FileName()+`"`)
	if err := p.Write(w); err != nil {
		slog.Warn("writing profile to client failed", "err", err)
	}
}

type captureRequest struct {
	duration time.Duration
	filter   pprof.Selector
}

// parseCaptureQuery reads seconds= and the selector's parameters (type=
// among them) strictly: an unknown or malformed parameter is an error,
// never silently ignored.
func parseCaptureQuery(q url.Values, defaultSeconds, maxSeconds int) (captureRequest, error) {
	req := captureRequest{duration: time.Duration(defaultSeconds) * time.Second}
	seconds := pprof.Param{Name: "seconds", Set: func(v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxSeconds {
			return fmt.Errorf("seconds=%q: want a whole number from 1 to %d", v, maxSeconds)
		}
		req.duration = time.Duration(n) * time.Second
		return nil
	}}
	var err error
	req.filter, err = pprof.ParseParams(q, seconds)
	return req, err
}
