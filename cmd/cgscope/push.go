package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"math"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/alecthomas/units"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cgscope/cgscope/exporter/otlp"
	"github.com/cgscope/cgscope/exporter/queue"
	"github.com/cgscope/cgscope/exporter/remotewrite"
	"github.com/cgscope/cgscope/internal/pipeline"
)

// pushFlags configure the push exporters (OTLP, remote write); every one
// is off unless configured.
type pushFlags struct {
	otlp        otlp.Config
	otlpSignals string
	otlpSkipTLS bool
	otlpMaxReq  units.Base2Bytes
	rw          remotewrite.Config
	rwTLS       tlsFlags
}

// tlsFlags name the PEM files of a TLS client configuration.
type tlsFlags struct {
	ca, cert, key string
	skipVerify    bool
}

// tlsFiles are PEM file names, each with the flag or variable it came
// from, for messages.
type tlsFiles struct {
	ca, cert, key otlp.Setting
	skipVerify    bool
}

// files names the flags of t, which start with prefix.
func (t tlsFlags) files(prefix string) tlsFiles {
	return tlsFiles{
		ca:         otlp.Setting{Value: t.ca, From: "--" + prefix + ".tls.ca-file"},
		cert:       otlp.Setting{Value: t.cert, From: "--" + prefix + ".tls.cert-file"},
		key:        otlp.Setting{Value: t.key, From: "--" + prefix + ".tls.key-file"},
		skipVerify: t.skipVerify,
	}
}

// pushConfig is the validated configuration, TLS files loaded.
type pushConfig struct {
	otlp otlp.Config
	rw   remotewrite.Config
}

func addPushFlags(cmd *kingpin.CmdClause) *pushFlags {
	f := &pushFlags{}
	o := &f.otlp
	cmd.Flag("otlp.endpoint", "OTLP backend, host:port or http(s):// URL (for http/protobuf a base URL: /v1/metrics and /v1development/profiles are appended); turns OTLP export on. Also OTEL_EXPORTER_OTLP_ENDPOINT, or OTEL_EXPORTER_OTLP_{METRICS,PROFILES}_ENDPOINT (a full URL) per signal.").StringVar(&o.Endpoint)
	cmd.Flag("otlp.protocol", "OTLP transport: grpc or http/protobuf (default grpc; also OTEL_EXPORTER_OTLP_[SIGNAL_]PROTOCOL).").StringVar(&o.Protocol)
	cmd.Flag("otlp.insecure", "Send OTLP in plaintext to a host:port endpoint (a URL's scheme decides for itself; also OTEL_EXPORTER_OTLP_[SIGNAL_]INSECURE).").BoolVar(&o.Insecure)
	cmd.Flag("otlp.header", "Header to send with every OTLP request, KEY=VALUE; repeatable (also OTEL_EXPORTER_OTLP_[SIGNAL_]HEADERS).").StringMapVar(&o.Headers)
	cmd.Flag("otlp.tls.ca-file", "CA certificates (PEM) to verify the OTLP backend (also OTEL_EXPORTER_OTLP_[SIGNAL_]CERTIFICATE).").StringVar(&o.CAFile)
	cmd.Flag("otlp.tls.cert-file", "Client certificate (PEM) for OTLP (also OTEL_EXPORTER_OTLP_[SIGNAL_]CLIENT_CERTIFICATE).").StringVar(&o.CertFile)
	cmd.Flag("otlp.tls.key-file", "Client key (PEM) for OTLP (also OTEL_EXPORTER_OTLP_[SIGNAL_]CLIENT_KEY).").StringVar(&o.KeyFile)
	cmd.Flag("otlp.tls.insecure-skip-verify", "Do not verify the OTLP backend's certificate.").BoolVar(&f.otlpSkipTLS)
	cmd.Flag("otlp.signals", "Signals to send over OTLP: profiles, metrics, or both comma-separated (a signal without an endpoint is not sent).").Default("profiles,metrics").StringVar(&f.otlpSignals)
	cmd.Flag("otlp.interval", "How often OTLP profiles and metrics are sent.").Default("10s").DurationVar(&o.Interval)
	cmd.Flag("otlp.queue-size", "Intervals each OTLP signal keeps while the backend is unreachable (an interval split into several requests is one); the oldest is dropped beyond.").Default("12").IntVar(&o.QueueSize)
	cmd.Flag("otlp.max-request-size", "Largest OTLP request, before compression (64KiB..2GiB); an interval beyond is sent as several requests (profiles split between processes, metrics between data points). gRPC servers, the OpenTelemetry Collector's included, refuse messages over 4MiB unless configured otherwise.").
		Default("4MiB").BytesVar(&f.otlpMaxReq)
	cmd.Flag("otlp.timeout", "Time limit of one OTLP request (default 10s; also OTEL_EXPORTER_OTLP_[SIGNAL_]TIMEOUT in milliseconds). Compression: gzip, or OTEL_EXPORTER_OTLP_[SIGNAL_]COMPRESSION=none.").DurationVar(&o.Timeout)

	r := &f.rw
	cmd.Flag("remote-write.url", "Prometheus remote-write receiver URL; turns remote write on.").StringVar(&r.URL)
	cmd.Flag("remote-write.protocol", "Remote-write protocol: 1.0 or 2.0.").Default(remotewrite.Protocol1).StringVar(&r.Protocol)
	cmd.Flag("remote-write.interval", "How often the /metrics series are pushed.").Default("15s").DurationVar(&r.Interval)
	cmd.Flag("remote-write.queue-size", "Collections kept while the receiver is unreachable (each sent as requests of at most 2,000 series); the oldest is dropped beyond.").Default("20").IntVar(&r.QueueSize)
	cmd.Flag("remote-write.timeout", "Time limit of one remote-write request.").Default("10s").DurationVar(&r.Timeout)
	cmd.Flag("remote-write.header", "Header to send with every remote-write request, KEY=VALUE; repeatable.").StringMapVar(&r.Headers)
	cmd.Flag("remote-write.tls.ca-file", "CA certificates (PEM) to verify the receiver.").StringVar(&f.rwTLS.ca)
	cmd.Flag("remote-write.tls.cert-file", "Client certificate (PEM) for remote write.").StringVar(&f.rwTLS.cert)
	cmd.Flag("remote-write.tls.key-file", "Client key (PEM) for remote write.").StringVar(&f.rwTLS.key)
	cmd.Flag("remote-write.tls.insecure-skip-verify", "Do not verify the receiver's certificate.").BoolVar(&f.rwTLS.skipVerify)
	return f
}

// config validates the flags (and the OTEL_EXPORTER_OTLP_* environment)
// and loads the TLS files; it runs before anything is attached.
func (f *pushFlags) config() (*pushConfig, error) {
	c := &pushConfig{otlp: f.otlp, rw: f.rw}
	if f.otlpMaxReq <= 0 || f.otlpMaxReq > 2<<30 {
		return nil, fmt.Errorf("--otlp.max-request-size=%s: want 64KiB..2GiB", f.otlpMaxReq)
	}
	c.otlp.MaxRequestSize = int(min(f.otlpMaxReq, math.MaxInt32)) // 2GiB is the largest protobuf message, MaxInt32
	if err := f.otlpSignalSet(&c.otlp); err != nil {
		return nil, err
	}
	if err := c.otlp.Resolve(os.Getenv); err != nil {
		return nil, err
	}
	for _, t := range []*otlp.Transport{c.otlp.ProfilesTransport, c.otlp.MetricsTransport} {
		if t == nil {
			continue
		}
		var err error
		if t.TLSConfig, err = (tlsFiles{ca: t.CA, cert: t.Cert, key: t.Key, skipVerify: f.otlpSkipTLS}).load(); err != nil {
			return nil, err
		}
	}
	if c.rw.Enabled() {
		if err := c.rw.Validate(); err != nil {
			return nil, err
		}
		var err error
		if c.rw.TLSConfig, err = f.rwTLS.files("remote-write").load(); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func (f *pushFlags) otlpSignalSet(c *otlp.Config) error {
	for _, s := range strings.Split(f.otlpSignals, ",") {
		switch strings.TrimSpace(s) {
		case "profiles":
			c.Profiles = true
		case "metrics":
			c.Metrics = true
		case "":
		default:
			return fmt.Errorf("--otlp.signals=%q: unknown signal %q; want profiles and/or metrics", f.otlpSignals, s)
		}
	}
	return nil
}

// load reads the files into a client TLS configuration; errors name the
// flag or variable of the file at fault.
func (t tlsFiles) load() (*tls.Config, error) {
	cfg := &tls.Config{InsecureSkipVerify: t.skipVerify} //nolint:gosec // asked for by flag
	if t.ca.Value != "" {
		pem, err := os.ReadFile(t.ca.Value)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", t.ca.From, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s=%s: no PEM certificate in it", t.ca.From, t.ca.Value)
		}
		cfg.RootCAs = pool
	}
	if (t.cert.Value == "") != (t.key.Value == "") {
		return nil, fmt.Errorf("%s and %s: give both a client certificate and its key, or neither", t.cert.From, t.key.From)
	}
	if t.cert.Value != "" {
		cert, err := tls.LoadX509KeyPair(t.cert.Value, t.key.Value)
		if err != nil {
			return nil, fmt.Errorf("%s=%s, %s=%s: %w", t.cert.From, t.cert.Value, t.key.From, t.key.Value, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// startPushExporters registers the exporter self-metrics on reg and starts
// the configured exporters, which push what g gathers (the /metrics
// families); none of them waits for its backend. The
// returned stop ends them and makes one last bounded send; call it after
// the pipeline's last flush.
func startPushExporters(ctx context.Context, c *pushConfig, reg *prometheus.Registry, g prometheus.Gatherer, p *pipeline.Pipeline) (stop func(), err error) {
	m := queue.NewMetrics(reg)
	ctx, cancel := context.WithCancel(ctx)
	var stops []func()
	var wg sync.WaitGroup
	if c.otlp.Enabled() {
		e, err := otlp.New(c.otlp, otlp.Sources{Subscribe: p.Subscribe, Gatherer: g}, m, version)
		if err != nil {
			cancel()
			return nil, err
		}
		e.Start(ctx)
		stops = append(stops, func() { e.Stop(5 * time.Second) })
		for _, t := range []*otlp.Transport{c.otlp.ProfilesTransport, c.otlp.MetricsTransport} {
			if t != nil {
				slog.Info("OTLP export on", "signal", t.Signal, "endpoint", redactURL(t.Endpoint.Value), "from", t.Endpoint.From,
					"protocol", t.Protocol, "compression", t.Compression, "interval", c.otlp.Interval)
			}
		}
	}
	if c.rw.Enabled() {
		e, err := remotewrite.New(c.rw, g, m)
		if err != nil {
			cancel()
			return nil, err
		}
		wg.Add(1)
		go func() { defer wg.Done(); e.Run(ctx) }()
		stops = append(stops, func() { wg.Wait(); e.Stop(5 * time.Second) })
		slog.Info("remote write on", "url", redactURL(c.rw.URL), "protocol", c.rw.Protocol, "interval", c.rw.Interval)
	}
	return func() {
		cancel()
		var done sync.WaitGroup
		for _, s := range stops {
			done.Add(1)
			go func() { defer done.Done(); s() }()
		}
		done.Wait()
	}, nil
}

// redactURL hides credentials embedded in a URL before it is logged.
func redactURL(raw string) string {
	if i := strings.Index(raw, "@"); i >= 0 {
		if j := strings.Index(raw, "://"); j >= 0 && j < i {
			return raw[:j+3] + "REDACTED" + raw[i:]
		}
	}
	return raw
}
