package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/alecthomas/kingpin/v2"
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
	rw          remotewrite.Config
	rwTLS       tlsFlags
}

// tlsFlags name the PEM files of a TLS client configuration.
type tlsFlags struct {
	ca, cert, key string
	skipVerify    bool
}

// pushConfig is the validated configuration, TLS files loaded.
type pushConfig struct {
	otlp otlp.Config
	rw   remotewrite.Config
}

func addPushFlags(cmd *kingpin.CmdClause) *pushFlags {
	f := &pushFlags{}
	o := &f.otlp
	cmd.Flag("otlp.endpoint", "OTLP backend, host:port or http(s):// URL; turns OTLP export on (also OTEL_EXPORTER_OTLP_ENDPOINT).").StringVar(&o.Endpoint)
	cmd.Flag("otlp.protocol", "OTLP transport: grpc or http/protobuf (also OTEL_EXPORTER_OTLP_PROTOCOL; default grpc).").StringVar(&o.Protocol)
	cmd.Flag("otlp.insecure", "Send OTLP in plaintext, without TLS (also OTEL_EXPORTER_OTLP_INSECURE).").BoolVar(&o.Insecure)
	cmd.Flag("otlp.header", "Header to send with every OTLP request, KEY=VALUE; repeatable (also OTEL_EXPORTER_OTLP_HEADERS).").StringMapVar(&o.Headers)
	cmd.Flag("otlp.tls.ca-file", "CA certificates (PEM) to verify the OTLP backend (also OTEL_EXPORTER_OTLP_CERTIFICATE).").StringVar(&o.CAFile)
	cmd.Flag("otlp.tls.cert-file", "Client certificate (PEM) for OTLP (also OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE).").StringVar(&o.CertFile)
	cmd.Flag("otlp.tls.key-file", "Client key (PEM) for OTLP (also OTEL_EXPORTER_OTLP_CLIENT_KEY).").StringVar(&o.KeyFile)
	cmd.Flag("otlp.tls.insecure-skip-verify", "Do not verify the OTLP backend's certificate.").BoolVar(&f.otlpSkipTLS)
	cmd.Flag("otlp.signals", "Signals to send over OTLP: profiles, metrics, or both comma-separated.").Default("profiles,metrics").StringVar(&f.otlpSignals)
	cmd.Flag("otlp.interval", "How often OTLP profiles and metrics are sent.").Default("10s").DurationVar(&o.Interval)
	cmd.Flag("otlp.queue-size", "Batches each OTLP signal keeps while the backend is unreachable; the oldest is dropped beyond.").Default("12").IntVar(&o.QueueSize)
	cmd.Flag("otlp.timeout", "Time limit of one OTLP send attempt.").Default("10s").DurationVar(&o.Timeout)

	r := &f.rw
	cmd.Flag("remote-write.url", "Prometheus remote-write receiver URL; turns remote write on.").StringVar(&r.URL)
	cmd.Flag("remote-write.protocol", "Remote-write protocol: 1.0 or 2.0.").Default(remotewrite.Protocol1).StringVar(&r.Protocol)
	cmd.Flag("remote-write.interval", "How often the /metrics series are pushed.").Default("15s").DurationVar(&r.Interval)
	cmd.Flag("remote-write.queue-size", "Requests kept while the receiver is unreachable; the oldest is dropped beyond.").Default("20").IntVar(&r.QueueSize)
	cmd.Flag("remote-write.timeout", "Time limit of one remote-write attempt.").Default("10s").DurationVar(&r.Timeout)
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
	if err := c.otlp.ApplyEnv(os.Getenv); err != nil {
		return nil, err
	}
	if c.otlp.Enabled() {
		if err := f.otlpSignalSet(&c.otlp); err != nil {
			return nil, err
		}
		if err := c.otlp.Validate(); err != nil {
			return nil, err
		}
		t := tlsFlags{ca: c.otlp.CAFile, cert: c.otlp.CertFile, key: c.otlp.KeyFile, skipVerify: f.otlpSkipTLS}
		var err error
		if c.otlp.TLSConfig, err = t.load("otlp"); err != nil {
			return nil, err
		}
	}
	if c.rw.Enabled() {
		if err := c.rw.Validate(); err != nil {
			return nil, err
		}
		var err error
		if c.rw.TLSConfig, err = f.rwTLS.load("remote-write"); err != nil {
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

// load reads the files into a client TLS configuration; prefix names the
// flags in errors.
func (t tlsFlags) load(prefix string) (*tls.Config, error) {
	cfg := &tls.Config{InsecureSkipVerify: t.skipVerify} //nolint:gosec // asked for by flag
	if t.ca != "" {
		pem, err := os.ReadFile(t.ca)
		if err != nil {
			return nil, fmt.Errorf("--%s.tls.ca-file: %w", prefix, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--%s.tls.ca-file=%s: no PEM certificate in it", prefix, t.ca)
		}
		cfg.RootCAs = pool
	}
	if (t.cert == "") != (t.key == "") {
		return nil, fmt.Errorf("--%s.tls.cert-file and --%s.tls.key-file: give both or neither", prefix, prefix)
	}
	if t.cert != "" {
		cert, err := tls.LoadX509KeyPair(t.cert, t.key)
		if err != nil {
			return nil, fmt.Errorf("--%s.tls.cert-file/key-file: %w", prefix, err)
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
		slog.Info("OTLP export on", "endpoint", c.otlp.Endpoint, "protocol", c.otlp.Protocol,
			"profiles", c.otlp.Profiles, "metrics", c.otlp.Metrics, "interval", c.otlp.Interval)
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
