package exporter

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// HistoryAPI serves the history over HTTP:
//
//	GET /api/v1/profile?from=&to=&<filters>  summed gzip pprof
//	GET /api/v1/targets?from=&to=&<filters>  CPU by cgroup and process, JSON
type HistoryAPI struct {
	H *History
	// Now is the clock for default ranges (time.Now when nil).
	Now func() time.Time
	// Timeout bounds one query (default 30 s).
	Timeout time.Duration
}

// Handler returns the API's handler, to mount at /api/v1/.
func (a *HistoryAPI) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/profile", a.profile)
	mux.HandleFunc("GET /api/v1/targets", a.targets)
	return mux
}

func (a *HistoryAPI) query(w http.ResponseWriter, r *http.Request) (HistoryQuery, context.Context, context.CancelFunc, bool) {
	now := time.Now
	if a.Now != nil {
		now = a.Now
	}
	q, err := ParseHistoryQuery(r.URL.Query(), now())
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

func (a *HistoryAPI) profile(w http.ResponseWriter, r *http.Request) {
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
	w.Header().Set("Content-Disposition", `attachment; filename="cpu-`+q.From.UTC().Format("20060102T150405Z")+`.pb.gz"`)
	if err := p.Write(w); err != nil {
		slog.Warn("writing profile to client failed", "err", err)
	}
}

func (a *HistoryAPI) targets(w http.ResponseWriter, r *http.Request) {
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

// historyCollector exports the History's and its store's counters.
type historyCollector struct {
	h                                                *History
	windows, bytes, appended, appendedBytes, evicted *prometheus.Desc
	corrupt, writeErrors, dropped, encodeErrs        *prometheus.Desc
}

// NewHistoryCollector returns the self-metrics of h.
func NewHistoryCollector(h *History) prometheus.Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("cgscope_history_"+name, help, labels, nil)
	}
	return &historyCollector{
		h:             h,
		windows:       d("records", "Records (profiling windows and their dictionary records) held in the history store."),
		bytes:         d("bytes", "Bytes the history store holds (files on disk, or data in memory)."),
		appended:      d("records_written_total", "Records written to the history store."),
		appendedBytes: d("written_bytes_total", "Record bytes written to the history store."),
		evicted:       d("records_evicted_total", "Records evicted from the history store, by reason (size, age).", "reason"),
		corrupt:       d("corrupt_skipped_total", "Torn or corrupted records, unreadable segment files, and windows undecodable because a dictionary record they use was lost, skipped.", "kind"),
		writeErrors:   d("write_errors_total", "Failed writes to the history store."),
		dropped:       d("windows_dropped_total", "Profiling windows dropped because the history writer fell behind."),
		encodeErrs:    d("encode_errors_total", "Profiling windows that could not be encoded."),
	}
}

func (c *historyCollector) Describe(ch chan<- *prometheus.Desc) {
	prometheus.DescribeByCollect(c, ch)
}

func (c *historyCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.h.st.Stats()
	g := func(d *prometheus.Desc, t prometheus.ValueType, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, t, v, l...)
	}
	g(c.windows, prometheus.GaugeValue, float64(st.Records))
	g(c.bytes, prometheus.GaugeValue, float64(st.Bytes))
	g(c.appended, prometheus.CounterValue, float64(st.Appended))
	g(c.appendedBytes, prometheus.CounterValue, float64(st.AppendedBytes))
	g(c.evicted, prometheus.CounterValue, float64(st.EvictedSize), "size")
	g(c.evicted, prometheus.CounterValue, float64(st.EvictedAge), "age")
	g(c.corrupt, prometheus.CounterValue, float64(st.CorruptRecords), "record")
	g(c.corrupt, prometheus.CounterValue, float64(st.CorruptFiles), "file")
	g(c.corrupt, prometheus.CounterValue, float64(c.h.undecodable.Load()), "window")
	g(c.writeErrors, prometheus.CounterValue, float64(st.WriteErrors))
	g(c.dropped, prometheus.CounterValue, float64(c.h.dropped.Load()))
	g(c.encodeErrs, prometheus.CounterValue, float64(c.h.encErrs.Load()))
}
