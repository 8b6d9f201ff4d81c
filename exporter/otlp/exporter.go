// Package otlp pushes cgscope's data to an OpenTelemetry backend over OTLP
// (gRPC with gzip, or HTTP/protobuf with gzip).
//
// Profiles: every reporting interval the symbolized windows the pipeline
// delivered are converted into one pprofile request: a single shared
// dictionary (strings, mappings, locations, functions, stacks,
// attributes) and one ResourceProfiles per process, with container.id,
// k8s.pod.uid, process.pid, process.executable.name/path and host.name
// as resource attributes. Mappings carry their build ID
// (process.executable.build_id.gnu or .go); locations carry the
// object-relative address and the symbolized function.
//
// Metrics: the per-cgroup figures go through the OpenTelemetry Go SDK
// (observable instruments, a manual reader, cumulative temporality) to
// otlpmetricgrpc or otlpmetrichttp. The instruments read the daemon's own
// Prometheus registry on each collection, rather than the BPF maps and
// cgroup files directly: /metrics, remote write and OTLP then agree on
// every figure, the cgroup filters and the cardinality cap apply to all
// three, and the collector's merging logic exists once. Names follow the
// OpenTelemetry container semantic conventions v1.43 (container.cpu.time,
// container.memory.usage, .working_set, .rss, container.memory.paging.faults,
// container.network.io with network.io.direction) and cgscope.cgroup.*
// for the rest.
//
// Both signals share one gRPC connection and each has its own bounded
// queue (package queue): retries, drop counting and state-change logging
// live there. Nothing here waits for the backend at start-up.
package otlp

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"google.golang.org/grpc"

	"github.com/cgscope/cgscope/exporter/queue"
	"github.com/cgscope/cgscope/internal/pipeline"
)

// Sources are where the exporters read from.
type Sources struct {
	// Subscribe delivers every profile window ((*pipeline.Pipeline).Subscribe).
	Subscribe func(func(*pipeline.Window)) (cancel func())
	// Gatherer is the registry behind /metrics.
	Gatherer prometheus.Gatherer
}

// Exporter runs the configured OTLP signals.
type Exporter struct {
	cfg      Config
	conn     *grpc.ClientConn // nil for HTTP
	profiles *profilesExporter
	metrics  *metricsExporter
	sdkExp   sdkmetric.Exporter
	unsub    func()
	wg       sync.WaitGroup
}

// New builds the exporters for a validated cfg without contacting the
// backend; Start starts them.
func New(cfg Config, src Sources, m *queue.Metrics, version string) (*Exporter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ep, _ := cfg.target()
	e := &Exporter{cfg: cfg}
	var h *httpClient
	if cfg.Protocol == ProtocolGRPC {
		conn, err := dialGRPC(&cfg, ep)
		if err != nil {
			return nil, fmt.Errorf("--otlp.endpoint=%q: %w", cfg.Endpoint, err)
		}
		e.conn = conn
	} else {
		h = newHTTPClient(&cfg, cfg.Timeout)
	}
	qopts := func(signal string) queue.Options {
		return queue.Options{Exporter: "otlp", Signal: signal, Size: cfg.QueueSize, Timeout: cfg.Timeout, Metrics: m}
	}
	conv := NewConverter(version)
	if cfg.Profiles {
		send := httpProfilesSender(h, ep.base)
		if e.conn != nil {
			send = grpcProfilesSender(e.conn)
		}
		e.profiles = &profilesExporter{interval: cfg.Interval, conv: conv,
			q: queue.New(qopts("profiles"), send)}
	}
	if cfg.Metrics {
		if err := e.newMetrics(src.Gatherer, h, ep, conv.HostName, version, qopts("metrics")); err != nil {
			e.close()
			return nil, err
		}
	}
	if e.profiles != nil {
		e.unsub = src.Subscribe(e.profiles.onWindow)
	}
	return e, nil
}

func (e *Exporter) newMetrics(g prometheus.Gatherer, h *httpClient, ep endpoint, host, version string, qo queue.Options) error {
	provider, reader := newMeterProvider(host, version)
	if _, err := newMetricsSource(provider.Meter(scopeName), g); err != nil {
		return fmt.Errorf("OTLP metrics: %w", err)
	}
	exp, classify, err := e.newSDKExporter(h, ep)
	if err != nil {
		return fmt.Errorf("OTLP metrics: %w", err)
	}
	e.sdkExp = exp
	e.metrics = &metricsExporter{interval: e.cfg.Interval, provider: provider, reader: reader,
		q: queue.New(qo, sdkSender(exp, classify))}
	return nil
}

// newSDKExporter builds the SDK's OTLP exporter on our connection or HTTP
// client, with its retries off (the queue retries).
func (e *Exporter) newSDKExporter(h *httpClient, ep endpoint) (sdkmetric.Exporter, func(error) error, error) {
	ctx := context.Background()
	if e.conn != nil {
		exp, err := otlpmetricgrpc.New(ctx, otlpmetricgrpc.WithGRPCConn(e.conn),
			otlpmetricgrpc.WithRetry(otlpmetricgrpc.RetryConfig{Enabled: false}),
			otlpmetricgrpc.WithTimeout(e.cfg.Timeout))
		return exp, classifyGRPC, err
	}
	exp, err := otlpmetrichttp.New(ctx, otlpmetrichttp.WithEndpointURL(ep.base+"/v1/metrics"),
		otlpmetrichttp.WithHTTPClient(h.client),
		otlpmetrichttp.WithCompression(otlpmetrichttp.GzipCompression),
		otlpmetrichttp.WithRetry(otlpmetrichttp.RetryConfig{Enabled: false}),
		otlpmetrichttp.WithTimeout(e.cfg.Timeout))
	classify := func(err error) error {
		st := h.lastStatus
		h.lastStatus = 0
		return classifyHTTP(err, st)
	}
	return exp, classify, err
}

// Start runs the exporters until ctx ends.
func (e *Exporter) Start(ctx context.Context) {
	if e.profiles != nil {
		e.goRun(func() { e.profiles.run(ctx) })
		e.goRun(func() { e.profiles.q.Run(ctx) })
	}
	if e.metrics != nil {
		e.goRun(func() { e.metrics.run(ctx) })
		e.goRun(func() { e.metrics.q.Run(ctx) })
	}
}

func (e *Exporter) goRun(f func()) {
	e.wg.Add(1)
	go func() { defer e.wg.Done(); f() }()
}

// Stop waits for the exporters to end (cancel Start's ctx first), then
// converts what is left and tries once to send it within timeout.
func (e *Exporter) Stop(timeout time.Duration) {
	if e.unsub != nil {
		e.unsub()
	}
	e.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if e.profiles != nil {
		e.profiles.tick()
		e.profiles.q.Flush(ctx)
	}
	if e.metrics != nil {
		e.metrics.collect(ctx)
		e.metrics.q.Flush(ctx)
	}
	e.close()
}

func (e *Exporter) close() {
	var errs []error
	if e.sdkExp != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		errs = append(errs, e.sdkExp.Shutdown(ctx))
		cancel()
	}
	if e.metrics != nil {
		errs = append(errs, e.metrics.provider.Shutdown(context.Background()))
	}
	if e.conn != nil {
		errs = append(errs, e.conn.Close())
	}
	_ = errors.Join(errs...) // nothing useful to do with them at exit
}
