package history

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"time"
)

// API serves the history over HTTP; the server routes to it:
//
//	GET /api/v1/profile?type=&from=&to=&<selector>  summed gzip pprof (ServeProfile)
//	GET /api/v1/targets?type=&from=&to=&<selector>  CPU (or off-CPU) time by cgroup and process, JSON (ServeTargets)
//
// type= is cpu (the default) or off_cpu.
type API struct {
	H *History
	// Now is the clock for default ranges (time.Now when nil).
	Now func() time.Time
	// Timeout bounds one query (default 30 s).
	Timeout time.Duration
}

func (a *API) query(w http.ResponseWriter, r *http.Request) (Query, context.Context, context.CancelFunc, bool) {
	now := time.Now
	if a.Now != nil {
		now = a.Now
	}
	q, err := ParseQuery(r.URL.Query(), now())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return q, nil, nil, false
	}
	timeout := a.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	return q, ctx, cancel, true
}

// ServeProfile answers /api/v1/profile.
func (a *API) ServeProfile(w http.ResponseWriter, r *http.Request) {
	q, ctx, cancel, ok := a.query(w, r)
	if !ok {
		return
	}
	defer cancel()
	p, err := a.H.Profile(ctx, q)
	if err != nil {
		queryFailed(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="`+q.Kind.String()+`-`+q.From.UTC().Format("20060102T150405Z")+`.pb.gz"`)
	if err := p.Write(w); err != nil {
		slog.Warn("writing profile to client failed", "err", err)
	}
}

// ServeTargets answers /api/v1/targets.
func (a *API) ServeTargets(w http.ResponseWriter, r *http.Request) {
	q, ctx, cancel, ok := a.query(w, r)
	if !ok {
		return
	}
	defer cancel()
	t, err := a.H.Targets(ctx, q)
	if err != nil {
		queryFailed(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(t); err != nil {
		slog.Warn("writing targets to client failed", "err", err)
	}
}

func queryFailed(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case r.Context().Err() != nil:
		// The client left; nobody reads an answer.
	case errors.Is(err, context.DeadlineExceeded):
		http.Error(w, "query timed out: narrow the range or add filters", http.StatusServiceUnavailable)
	default:
		http.Error(w, "query failed: "+err.Error(), http.StatusInternalServerError)
	}
}
