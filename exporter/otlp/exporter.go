// Package otlp pushes cgscope's data to an OpenTelemetry backend over OTLP
// (gRPC or HTTP/protobuf, gzip unless configured off).
//
// Profiles: every reporting interval the symbolized windows the pipeline
// delivered are written as one OTLP profiles request (several when one
// would be over the size limit, split between processes), in protobuf
// (the bytes pdata's marshaler would write), and queued as bytes: a single
// shared dictionary (strings, mappings, locations, functions, stacks,
// attributes) and one ResourceProfiles per process, with container.id,
// k8s.pod.uid, process.pid, process.executable.name/path and host.name
// as resource attributes. A process's scope holds its CPU profile
// (samples/count, period cpu/nanoseconds) and, when the off-CPU sampler
// saw it wait, two off-CPU profiles of the same samples: the time away
// (off_cpu/nanoseconds) and the switch-outs (context_switch/count), each
// sample with its cgscope.off_cpu.reason (see profileKind). Mappings
// carry their build ID (process.executable.build_id.gnu or .go);
// locations carry the object-relative address and the symbolized
// function.
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
// for the rest; the run-queue latency histogram, which no observable
// instrument can carry, is added to each collection as
// cgscope.cgroup.schedule.duration.
//
// Each signal has its own transport (endpoint, protocol, TLS, headers,
// timeout, compression: flags, then the signal's OTEL_EXPORTER_OTLP_*
// variables, then the general ones), its own connection and its own
// bounded queue (package queue): retries, drop counting and state-change
// logging live there. Nothing here waits for the backend at start-up.
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
	conns    []*grpc.ClientConn // one per gRPC signal
	profiles *profilesExporter
	metrics  *metricsExporter
	sdkExp   sdkmetric.Exporter
	unsub    func()
	wg       sync.WaitGroup
}

// New builds the exporters of cfg (resolved with cfg.Resolve; a config
// that was not is resolved from its flags alone) without contacting a
// backend; Start starts them.
func New(cfg Config, src Sources, m *queue.Metrics, version string) (*Exporter, error) {
	if !cfg.resolved {
		if err := cfg.Resolve(nil); err != nil {
			return nil, err
		}
	}
	e := &Exporter{cfg: cfg}
	conv := NewConverter(version)
	if t := cfg.ProfilesTransport; t != nil {
		send, err := e.profilesSender(t, conv.Release)
		if err != nil {
			return nil, err
		}
		e.profiles = newProfilesExporter(cfg.Interval, cfg.MaxRequestSize, conv, queue.New(e.queueOptions(t, m), queue.SendParts(send, t.Timeout)))
	}
	if t := cfg.MetricsTransport; t != nil {
		if err := e.newMetrics(src.Gatherer, t, conv.HostName, version, e.queueOptions(t, m)); err != nil {
			e.close()
			return nil, err
		}
	}
	if e.profiles != nil {
		e.unsub = src.Subscribe(e.profiles.onWindow)
	}
	return e, nil
}

func (e *Exporter) queueOptions(t *Transport, m *queue.Metrics) queue.Options {
	return queue.Options{Exporter: "otlp", Signal: t.Signal, Size: e.cfg.QueueSize, Timeout: t.Timeout, Metrics: m}
}

// dial makes a gRPC connection for t, closed with the exporter.
func (e *Exporter) dial(t *Transport) (*grpc.ClientConn, error) {
	conn, err := dialGRPC(t)
	if err != nil {
		return nil, fmt.Errorf("%s=%q: %w", t.Endpoint.From, t.Endpoint.Value, err)
	}
	e.conns = append(e.conns, conn)
	return conn, nil
}

// profilesSender sends encoded requests over t, and gives those sent back
// to the converter with release.
func (e *Exporter) profilesSender(t *Transport, release func([]byte)) (queue.SendFunc[[]byte], error) {
	if t.Protocol == ProtocolHTTP {
		return httpProfilesSender(newHTTPClient(t), t.URL(), release), nil
	}
	conn, err := e.dial(t)
	if err != nil {
		return nil, err
	}
	return grpcProfilesSender(conn, release), nil
}

func (e *Exporter) newMetrics(g prometheus.Gatherer, t *Transport, host, version string, qo queue.Options) error {
	provider, reader := newMeterProvider(host, version)
	source, err := newMetricsSource(provider.Meter(scopeName), g)
	if err != nil {
		return fmt.Errorf("OTLP metrics: %w", err)
	}
	exp, classify, err := e.newSDKExporter(t)
	if err != nil {
		return fmt.Errorf("OTLP metrics: %w", err)
	}
	e.sdkExp = exp
	e.metrics = &metricsExporter{interval: e.cfg.Interval, provider: provider, reader: reader, source: source,
		q: queue.New(qo, sdkSender(exp, classify, t.Timeout)), maxRequest: e.cfg.MaxRequestSize}
	return nil
}

// newSDKExporter builds the SDK's OTLP exporter on our connection or HTTP
// client, with its retries off (the queue retries). Every setting is
// passed, so that the SDK's own reading of the OTEL_EXPORTER_OTLP_*
// variables changes nothing.
func (e *Exporter) newSDKExporter(t *Transport) (sdkmetric.Exporter, func(error) error, error) {
	ctx := context.Background()
	if t.Protocol == ProtocolGRPC {
		conn, err := e.dial(t)
		if err != nil {
			return nil, nil, err
		}
		exp, err := otlpmetricgrpc.New(ctx, otlpmetricgrpc.WithGRPCConn(conn),
			otlpmetricgrpc.WithHeaders(map[string]string{}), // the connection sends them
			otlpmetricgrpc.WithRetry(otlpmetricgrpc.RetryConfig{Enabled: false}),
			otlpmetricgrpc.WithTimeout(t.Timeout))
		return exp, classifyGRPC, err
	}
	h := newHTTPClient(t)
	compression := otlpmetrichttp.NoCompression
	if t.Compression == CompressionGzip {
		compression = otlpmetrichttp.GzipCompression
	}
	exp, err := otlpmetrichttp.New(ctx, otlpmetrichttp.WithEndpointURL(t.URL()),
		otlpmetrichttp.WithHTTPClient(h.client),
		otlpmetrichttp.WithHeaders(t.Headers),
		otlpmetrichttp.WithCompression(compression),
		otlpmetrichttp.WithRetry(otlpmetrichttp.RetryConfig{Enabled: false}),
		otlpmetrichttp.WithTimeout(t.Timeout))
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
	for _, conn := range e.conns {
		errs = append(errs, conn.Close())
	}
	_ = errors.Join(errs...) // nothing useful to do with them at exit
}
