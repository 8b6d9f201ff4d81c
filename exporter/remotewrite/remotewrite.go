// Package remotewrite pushes the series of cgscope's /metrics to a
// Prometheus remote-write receiver: every interval it gathers the same
// registry /metrics serves, converts each family (counters, gauges,
// histograms as _bucket/_sum/_count, summaries) into time series stamped
// with the gather time, and queues them as one batch of requests of at
// most 2,000 series each (Prometheus' max_samples_per_send).
//
// Remote-Write 1.0 (prompb.WriteRequest from the Prometheus module, with
// metric metadata) is the default; 2.0 (io.prometheus.write.v2.Request)
// is available. Both are sent with client_golang/exp/api/remote, which
// snappy-compresses and sets the protocol headers. That client retries by
// itself; it is held to one quick internal retry so that the queue
// (package queue) does the real retrying and counts drops in one place.
package remotewrite

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/prometheus/client_golang/exp/api/remote"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cgscope/cgscope/exporter/queue"
	"github.com/cgscope/cgscope/internal/every"
)

// Protocol versions.
const (
	Protocol1 = "1.0"
	Protocol2 = "2.0"
)

// Config configures remote write; an empty URL turns it off.
type Config struct {
	URL       string
	Protocol  string // Protocol1 (default) or Protocol2
	Interval  time.Duration
	QueueSize int
	Timeout   time.Duration // per attempt
	Headers   map[string]string
	TLSConfig *tls.Config // nil: system roots
}

// Enabled reports whether remote write is configured.
func (c *Config) Enabled() bool { return c.URL != "" }

// Validate checks the configuration before anything starts; it
// normalizes Protocol.
func (c *Config) Validate() error {
	if !c.Enabled() {
		return nil
	}
	u, err := url.Parse(c.URL)
	if err != nil {
		return fmt.Errorf("--remote-write.url=%q: %w", c.URL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("--remote-write.url=%q: want an http:// or https:// URL with a host", c.URL)
	}
	switch c.Protocol {
	case "":
		c.Protocol = Protocol1
	case Protocol1, Protocol2:
	default:
		return fmt.Errorf("--remote-write.protocol=%q: want %s or %s", c.Protocol, Protocol1, Protocol2)
	}
	switch {
	case c.Interval < time.Second || c.Interval > time.Hour:
		return fmt.Errorf("--remote-write.interval=%s: want 1s..1h", c.Interval)
	case c.QueueSize < 1:
		return fmt.Errorf("--remote-write.queue-size=%d: want at least 1", c.QueueSize)
	case c.Timeout <= 0:
		return fmt.Errorf("--remote-write.timeout=%s: want more than 0", c.Timeout)
	}
	return nil
}

// Exporter gathers and pushes on an interval.
type Exporter struct {
	cfg      Config
	gatherer prometheus.Gatherer
	api      *remote.API
	msgType  remote.WriteMessageType
	q        *queue.Queue[*queue.Parts[any]] // a collection's requests are one batch
	now      func() time.Time
}

// New builds the exporter for cfg without contacting the receiver.
func New(cfg Config, g prometheus.Gatherer, m *queue.Metrics) (*Exporter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	api, err := remote.NewAPI(cfg.URL,
		remote.WithAPIPath(""),
		remote.WithAPIHTTPClient(newHTTPClient(cfg)),
		remote.WithAPIBackoff(remote.BackoffConfig{Min: 100 * time.Millisecond, Max: 100 * time.Millisecond, MaxRetries: 1}))
	if err != nil {
		return nil, fmt.Errorf("--remote-write.url=%q: %w", cfg.URL, err)
	}
	e := &Exporter{cfg: cfg, gatherer: g, api: api, msgType: remote.WriteV1MessageType, now: time.Now}
	if cfg.Protocol == Protocol2 {
		e.msgType = remote.WriteV2MessageType
	}
	e.q = queue.New(queue.Options{Exporter: "remote_write", Signal: "metrics", Size: cfg.QueueSize, Timeout: cfg.Timeout, Metrics: m},
		queue.SendParts(e.send, cfg.Timeout))
	return e, nil
}

func newHTTPClient(cfg Config) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if cfg.TLSConfig != nil {
		tr.TLSClientConfig = cfg.TLSConfig.Clone()
	}
	return &http.Client{Transport: headerTransport{next: tr, headers: cfg.Headers}}
}

// headerTransport adds the configured headers (auth tokens) to every request.
type headerTransport struct {
	next    http.RoundTripper
	headers map[string]string
}

func (t headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if len(t.headers) > 0 {
		r = r.Clone(r.Context())
		for k, v := range t.headers {
			r.Header.Set(k, v)
		}
	}
	r.Header.Set("User-Agent", "cgscope")
	return t.next.RoundTrip(r)
}

// Run gathers every interval and sends until ctx ends. It returns once the
// sender has stopped too, so that a batch it was sending is back in the
// queue for Stop's last attempt, not lost between the two.
func (e *Exporter) Run(ctx context.Context) {
	sent := make(chan struct{})
	go func() { e.q.Run(ctx); close(sent) }()
	every.Run(ctx, e.cfg.Interval, e.collect)
	<-sent
}

// Stop pushes one last time within timeout (after Run's ctx ended).
func (e *Exporter) Stop(timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	e.collect()
	e.q.Flush(ctx)
}

// maxSamplesPerRequest is how many series one request carries at most:
// Prometheus' own max_samples_per_send. A node's /metrics with 1,000
// cgroups is some 60,000 series, tens of MiB uncompressed in one request,
// which receivers with a request size limit (VictoriaMetrics, hosted
// services) refuse.
const maxSamplesPerRequest = 2000

// collect gathers the registry and queues its series as one batch of
// requests of at most maxSamplesPerRequest series each.
func (e *Exporter) collect() {
	families, err := e.gatherer.Gather()
	if len(families) == 0 {
		_ = err // a failing gather shows on /metrics too; nothing to push
		return
	}
	ss := flatten(families)
	ts := e.now().UnixMilli()
	var requests []any
	for start := 0; start < len(ss); start += maxSamplesPerRequest {
		chunk := ss[start:min(start+maxSamplesPerRequest, len(ss))]
		if e.msgType == remote.WriteV2MessageType {
			requests = append(requests, requestV2(chunk, ts))
		} else {
			requests = append(requests, requestV1(chunk, ts))
		}
	}
	if len(requests) > 0 {
		e.q.Push(queue.NewParts(requests))
	}
}

// send writes one request of a batch; errors the client calls retryable (network,
// 5xx, 429) are retried by the queue, the rest are permanent.
func (e *Exporter) send(ctx context.Context, msg any) error {
	_, err := e.api.Write(ctx, e.msgType, msg)
	if err == nil {
		return nil
	}
	var retryable interface{ RetryAfter() time.Duration }
	if errors.As(err, &retryable) || ctx.Err() != nil {
		return err
	}
	return queue.Permanent(err)
}
