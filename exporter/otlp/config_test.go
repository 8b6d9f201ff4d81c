package otlp

import (
	"strings"
	"testing"
	"time"
)

// flagsOnly is a Config with the flag defaults cgscope serve sets.
func flagsOnly() Config {
	return Config{Profiles: true, Metrics: true, Interval: 10 * time.Second, QueueSize: 12}
}

func resolve(t *testing.T, c Config, env map[string]string) Config {
	t.Helper()
	if err := c.Resolve(func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	return c
}

// Flag, then the signal's variable, then the general one, then the default.
func TestResolvePrecedence(t *testing.T) {
	env := map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT":             "http://general:4318",
		"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT":     "https://metrics.example/custom/path",
		"OTEL_EXPORTER_OTLP_PROTOCOL":             "http/protobuf",
		"OTEL_EXPORTER_OTLP_HEADERS":              "authorization=Bearer%20general,x-a=1",
		"OTEL_EXPORTER_OTLP_PROFILES_HEADERS":     "authorization=Bearer%20profiles",
		"OTEL_EXPORTER_OTLP_TIMEOUT":              "2500",
		"OTEL_EXPORTER_OTLP_METRICS_TIMEOUT":      "750",
		"OTEL_EXPORTER_OTLP_COMPRESSION":          "none",
		"OTEL_EXPORTER_OTLP_PROFILES_COMPRESSION": "gzip",
		"OTEL_EXPORTER_OTLP_CERTIFICATE":          "/etc/general-ca.pem",
		"OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE":  "/etc/metrics-ca.pem",
		"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE":   "/etc/client.pem",
		"OTEL_EXPORTER_OTLP_PROFILES_CLIENT_KEY":  "/etc/profiles-key.pem",
	}
	c := resolve(t, flagsOnly(), env)
	p, m := c.ProfilesTransport, c.MetricsTransport
	if p == nil || m == nil {
		t.Fatalf("transports %v %v", p, m)
	}
	// The general endpoint is a base URL; the signal's own is used as it is.
	if got := p.URL(); got != "http://general:4318/v1development/profiles" {
		t.Errorf("profiles URL %q", got)
	}
	if got := m.URL(); got != "https://metrics.example/custom/path" {
		t.Errorf("metrics URL %q", got)
	}
	if !m.target.secure || p.target.secure {
		t.Errorf("TLS: metrics %v profiles %v; the scheme decides", m.target.secure, p.target.secure)
	}
	if p.Headers["authorization"] != "Bearer profiles" || p.Headers["x-a"] != "" {
		t.Errorf("profiles headers %v: the signal's list replaces the general one", p.Headers)
	}
	if m.Headers["authorization"] != "Bearer general" || m.Headers["x-a"] != "1" {
		t.Errorf("metrics headers %v", m.Headers)
	}
	if p.Timeout != 2500*time.Millisecond || m.Timeout != 750*time.Millisecond {
		t.Errorf("timeouts %s %s", p.Timeout, m.Timeout)
	}
	if p.Compression != CompressionGzip || m.Compression != CompressionNone {
		t.Errorf("compression %s %s", p.Compression, m.Compression)
	}
	if p.CA.Value != "/etc/general-ca.pem" || m.CA.Value != "/etc/metrics-ca.pem" || m.CA.From != "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE" {
		t.Errorf("CA %+v %+v", p.CA, m.CA)
	}
	if p.Cert.Value != "/etc/client.pem" || p.Key.Value != "/etc/profiles-key.pem" || m.Key.Value != "" {
		t.Errorf("client cert %+v key %+v / %+v", p.Cert, p.Key, m.Key)
	}

	// Flags win over every variable.
	f := flagsOnly()
	f.Endpoint, f.Protocol, f.Timeout, f.CAFile = "127.0.0.1:4317", ProtocolGRPC, 3*time.Second, "/flag/ca.pem"
	f.Insecure = true
	f.Headers = map[string]string{"authorization": "flag"}
	c = resolve(t, f, env)
	for _, tr := range []*Transport{c.ProfilesTransport, c.MetricsTransport} {
		if tr.Endpoint != (Setting{"127.0.0.1:4317", "--otlp.endpoint"}) || tr.Protocol != ProtocolGRPC || tr.Timeout != 3*time.Second ||
			tr.CA.Value != "/flag/ca.pem" || tr.Headers["authorization"] != "flag" || tr.target.secure {
			t.Errorf("%s: flags lost: %+v", tr.Signal, tr)
		}
	}
	if c.MetricsTransport.Headers["x-a"] != "1" {
		t.Error("a variable's header the flags do not name was dropped")
	}

	// Defaults.
	c = resolve(t, flagsOnly(), map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"})
	m = c.MetricsTransport
	if m.Protocol != ProtocolGRPC || m.Timeout != DefaultTimeout || m.Compression != CompressionGzip || !m.target.secure || m.target.hostport != "collector:4317" {
		t.Errorf("defaults: %+v", m)
	}
}

// A signal is sent only when it has an endpoint; with none, OTLP is off.
func TestResolveSignals(t *testing.T) {
	c := resolve(t, flagsOnly(), nil)
	if c.Enabled() {
		t.Error("enabled without any endpoint")
	}
	c = resolve(t, flagsOnly(), map[string]string{"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://m:4318/v1/metrics"})
	if c.ProfilesTransport != nil || c.MetricsTransport == nil {
		t.Errorf("only the metrics endpoint set: profiles %v metrics %v", c.ProfilesTransport, c.MetricsTransport)
	}
	f := flagsOnly()
	f.Metrics = false
	c = resolve(t, f, map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "c:4317"})
	if c.ProfilesTransport == nil || c.MetricsTransport != nil {
		t.Error("--otlp.signals=profiles not obeyed")
	}
	f.Endpoint = ""
	err := f.Resolve(func(k string) string {
		return map[string]string{"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "m:4317"}[k]
	})
	if err == nil || !strings.Contains(err.Error(), "--otlp.signals") {
		t.Errorf("profiles asked for, only a metrics endpoint: %v", err)
	}
}

// Bad values stop the start with a message naming the flag or variable.
func TestResolveErrors(t *testing.T) {
	for _, c := range []struct {
		flags Config
		env   map[string]string
		name  string
	}{
		{Config{Endpoint: "http://[bad"}, nil, "--otlp.endpoint"},
		{Config{Endpoint: "localhost"}, nil, "--otlp.endpoint"},
		{Config{Endpoint: "ftp://x:1"}, nil, "--otlp.endpoint"},
		{Config{Endpoint: "x:1", Protocol: "udp"}, nil, "--otlp.protocol"},
		{Config{}, map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "collector"}, "OTEL_EXPORTER_OTLP_ENDPOINT"},
		{Config{}, map[string]string{"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "gopher://m"}, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"},
		{Config{Endpoint: "x:1"}, map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{Config{Endpoint: "x:1"}, map[string]string{"OTEL_EXPORTER_OTLP_PROFILES_PROTOCOL": "thrift"}, "OTEL_EXPORTER_OTLP_PROFILES_PROTOCOL"},
		{Config{Endpoint: "x:1"}, map[string]string{"OTEL_EXPORTER_OTLP_INSECURE": "yes"}, "OTEL_EXPORTER_OTLP_INSECURE"},
		{Config{Endpoint: "x:1"}, map[string]string{"OTEL_EXPORTER_OTLP_METRICS_INSECURE": "2"}, "OTEL_EXPORTER_OTLP_METRICS_INSECURE"},
		{Config{Endpoint: "x:1"}, map[string]string{"OTEL_EXPORTER_OTLP_HEADERS": "novalue"}, "OTEL_EXPORTER_OTLP_HEADERS"},
		{Config{Endpoint: "x:1"}, map[string]string{"OTEL_EXPORTER_OTLP_PROFILES_HEADERS": "k=%zz"}, "OTEL_EXPORTER_OTLP_PROFILES_HEADERS"},
		{Config{Endpoint: "x:1"}, map[string]string{"OTEL_EXPORTER_OTLP_TIMEOUT": "10s"}, "OTEL_EXPORTER_OTLP_TIMEOUT"},
		{Config{Endpoint: "x:1"}, map[string]string{"OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "0"}, "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT"},
		{Config{Endpoint: "x:1"}, map[string]string{"OTEL_EXPORTER_OTLP_TIMEOUT": "-5"}, "OTEL_EXPORTER_OTLP_TIMEOUT"},
		{Config{Endpoint: "x:1"}, map[string]string{"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, "OTEL_EXPORTER_OTLP_COMPRESSION"},
		{Config{Endpoint: "x:1"}, map[string]string{"OTEL_EXPORTER_OTLP_PROFILES_COMPRESSION": "GZIP "}, "OTEL_EXPORTER_OTLP_PROFILES_COMPRESSION"},
		{Config{Endpoint: "x:1", Interval: time.Millisecond}, nil, "--otlp.interval"},
		{Config{Endpoint: "x:1", QueueSize: -1}, nil, "--otlp.queue-size"},
		{Config{Endpoint: "x:1", Timeout: -time.Second}, nil, "--otlp.timeout"},
		{Config{Endpoint: "x:1", MaxRequestSize: 1 << 10}, nil, "--otlp.max-request-size"},
		{Config{Endpoint: "x:1", MaxRequestSize: -1}, nil, "--otlp.max-request-size"},
	} {
		f := c.flags
		f.Profiles, f.Metrics = true, true
		if f.Interval == 0 {
			f.Interval = time.Second
		}
		if f.QueueSize == 0 {
			f.QueueSize = 1
		}
		err := f.Resolve(func(k string) string { return c.env[k] })
		if err == nil {
			t.Errorf("%+v %v: no error", c.flags, c.env)
			continue
		}
		if !strings.Contains(err.Error(), c.name) {
			t.Errorf("%+v %v: error %q does not name %s", c.flags, c.env, err, c.name)
		}
	}
}

func TestEndpointForms(t *testing.T) {
	for _, c := range []struct {
		raw, protocol string
		insecure      bool
		hostport      string
		secure        bool
		base          string
	}{
		{"collector:4317", ProtocolGRPC, false, "collector:4317", true, "https://collector:4317"},
		{"collector:4317", ProtocolGRPC, true, "collector:4317", false, "http://collector:4317"},
		{"http://collector", ProtocolGRPC, false, "collector:4317", false, "http://collector"},
		{"https://otel.example:4318/prefix/", ProtocolHTTP, false, "otel.example:4318", true, "https://otel.example:4318/prefix"},
		{"https://otel.example/", ProtocolHTTP, true, "otel.example:4318", true, "https://otel.example"}, // the scheme wins over insecure
	} {
		ep, err := parseEndpoint(c.raw, c.protocol, c.insecure)
		if err != nil {
			t.Errorf("%s: %v", c.raw, err)
			continue
		}
		if ep.hostport != c.hostport || ep.secure != c.secure || ep.base != c.base {
			t.Errorf("%s (%s, insecure %v): %+v", c.raw, c.protocol, c.insecure, ep)
		}
	}
}
