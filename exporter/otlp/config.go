package otlp

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Protocols an OTLP exporter speaks.
const (
	ProtocolGRPC = "grpc"
	ProtocolHTTP = "http/protobuf"
)

// Compressions of OTLP requests.
const (
	CompressionGzip = "gzip"
	CompressionNone = "none"
)

// Signals cgscope sends over OTLP.
const (
	SignalProfiles = "profiles"
	SignalMetrics  = "metrics"
)

// DefaultTimeout is the time limit of one send attempt when neither
// --otlp.timeout nor OTEL_EXPORTER_OTLP_*TIMEOUT sets it (the
// specification's default).
const DefaultTimeout = 10 * time.Second

// HTTP paths appended to a base URL (--otlp.endpoint or
// OTEL_EXPORTER_OTLP_ENDPOINT); a signal's own variable is a full URL.
var httpPaths = map[string]string{
	SignalMetrics:  "/v1/metrics",
	SignalProfiles: "/v1development/profiles",
}

// Config is what the user configured for OTLP export. The flag fields
// apply to both signals and win over every variable; Resolve combines
// them with the standard OTEL_EXPORTER_OTLP_* variables into one
// Transport per signal: flag, then the signal's variable
// (OTEL_EXPORTER_OTLP_METRICS_ENDPOINT), then the general one
// (OTEL_EXPORTER_OTLP_ENDPOINT), then the default.
type Config struct {
	Endpoint string // host:port or http(s):// URL (a base URL for HTTP)
	Protocol string // ProtocolGRPC or ProtocolHTTP; "" = not set
	Insecure bool   // plaintext to a host:port endpoint
	Headers  map[string]string
	// PEM files of the TLS client configuration; "" = not set.
	CAFile, CertFile, KeyFile string
	Timeout                   time.Duration // per send attempt; 0 = not set

	Profiles, Metrics bool // the signals asked for (--otlp.signals)
	Interval          time.Duration
	QueueSize         int
	// MaxRequestSize bounds a request of either signal, in bytes before
	// compression; an interval beyond is sent as several requests. 0 =
	// DefaultMaxRequestSize.
	MaxRequestSize int

	// Set by Resolve: how each signal is sent; nil when it is not.
	ProfilesTransport, MetricsTransport *Transport
	resolved                            bool
}

// Transport is how one signal reaches its backend.
type Transport struct {
	Signal   string
	Endpoint Setting // host:port or URL
	Protocol string
	Insecure bool
	Headers  map[string]string
	// PEM file names; the caller loads them into TLSConfig.
	CA, Cert, Key Setting
	TLSConfig     *tls.Config // nil: the system's roots
	Timeout       time.Duration
	Compression   string

	target endpoint
}

// Setting is a configured value and the flag or variable it came from, so
// that an error about it names what to fix.
type Setting struct{ Value, From string }

// Enabled reports whether any signal is exported (after Resolve).
func (c *Config) Enabled() bool { return c.ProfilesTransport != nil || c.MetricsTransport != nil }

// Resolve builds and checks each asked-for signal's Transport from the
// flags and the variables getenv returns (nil: no variables). A signal
// without an endpoint is not exported; with none at all, OTLP export is
// off. Errors name the flag or variable at fault.
func (c *Config) Resolve(getenv func(string) string) error {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	c.ProfilesTransport, c.MetricsTransport, c.resolved = nil, nil, true
	var configured []string // signals with an endpoint, asked for or not
	for _, s := range []struct {
		signal string
		asked  bool
		dst    **Transport
	}{{SignalProfiles, c.Profiles, &c.ProfilesTransport}, {SignalMetrics, c.Metrics, &c.MetricsTransport}} {
		r := resolver{c: c, signal: s.signal, getenv: getenv}
		if r.pick("", "", "ENDPOINT").Value == "" && c.Endpoint == "" {
			continue
		}
		configured = append(configured, s.signal)
		if !s.asked {
			continue
		}
		t, err := r.transport()
		if err != nil {
			return err
		}
		*s.dst = t
	}
	if len(configured) == 0 {
		return nil
	}
	if !c.Enabled() {
		return fmt.Errorf("--otlp.signals: no endpoint for the signals it names (endpoints are set for %s)", strings.Join(configured, ", "))
	}
	switch {
	case c.Interval < time.Second || c.Interval > time.Hour:
		return fmt.Errorf("--otlp.interval=%s: want 1s..1h", c.Interval)
	case c.QueueSize < 1:
		return fmt.Errorf("--otlp.queue-size=%d: want at least 1", c.QueueSize)
	case c.Timeout < 0:
		return fmt.Errorf("--otlp.timeout=%s: want more than 0", c.Timeout)
	case c.MaxRequestSize == 0:
		c.MaxRequestSize = DefaultMaxRequestSize
	case c.MaxRequestSize < MinMaxRequestSize || c.MaxRequestSize > maxRequestBytes:
		return fmt.Errorf("--otlp.max-request-size=%d: want %dKiB..2GiB", c.MaxRequestSize, MinMaxRequestSize>>10)
	}
	return nil
}

// resolver picks one signal's settings.
type resolver struct {
	c      *Config
	signal string
	getenv func(string) string
}

// envName is the variable of a setting: the signal's own, or the general
// one for signal "".
func envName(signal, suffix string) string {
	if signal == "" {
		return "OTEL_EXPORTER_OTLP_" + suffix
	}
	return "OTEL_EXPORTER_OTLP_" + strings.ToUpper(signal) + "_" + suffix
}

// pick returns the flag's value when set, else the signal's variable, else
// the general variable; the zero Setting when none is set.
func (r resolver) pick(flagValue, flagName, suffix string) Setting {
	if flagValue != "" {
		return Setting{Value: flagValue, From: flagName}
	}
	for _, name := range []string{envName(r.signal, suffix), envName("", suffix)} {
		if v := strings.TrimSpace(r.getenv(name)); v != "" {
			return Setting{Value: v, From: name}
		}
	}
	return Setting{}
}

func (r resolver) transport() (*Transport, error) {
	c := r.c
	t := &Transport{Signal: r.signal, Endpoint: r.pick(c.Endpoint, "--otlp.endpoint", "ENDPOINT"),
		CA:   r.pick(c.CAFile, "--otlp.tls.ca-file", "CERTIFICATE"),
		Cert: r.pick(c.CertFile, "--otlp.tls.cert-file", "CLIENT_CERTIFICATE"),
		Key:  r.pick(c.KeyFile, "--otlp.tls.key-file", "CLIENT_KEY"),
	}
	steps := []func(*Transport) error{r.protocol, r.insecure, r.headers, r.timeout, r.compression, r.target}
	for _, step := range steps {
		if err := step(t); err != nil {
			return nil, err
		}
	}
	return t, nil
}

func (r resolver) protocol(t *Transport) (err error) {
	t.Protocol, err = oneOf(r.pick(r.c.Protocol, "--otlp.protocol", "PROTOCOL"), ProtocolGRPC, ProtocolHTTP)
	return err
}

// oneOf returns s's value, or def (the first allowed value) when s is
// unset; any other value is an error naming where it came from.
func oneOf(s Setting, def, other string) (string, error) {
	switch s.Value {
	case "":
		return def, nil
	case def, other:
		return s.Value, nil
	}
	return "", fmt.Errorf("%s=%q: want %s or %s", s.From, s.Value, def, other)
}

func (r resolver) insecure(t *Transport) error {
	if r.c.Insecure {
		t.Insecure = true
		return nil
	}
	v := r.pick("", "", "INSECURE")
	switch {
	case v.Value == "", strings.EqualFold(v.Value, "false"):
	case strings.EqualFold(v.Value, "true"):
		t.Insecure = true
	default:
		return fmt.Errorf("%s=%q: want true or false", v.From, v.Value)
	}
	return nil
}

// headers are the variable's list (the signal's replaces the general
// one, as in the specification) with the --otlp.header flags over it.
func (r resolver) headers(t *Transport) error {
	t.Headers = map[string]string{}
	if v := r.pick("", "", "HEADERS"); v.Value != "" {
		h, err := ParseHeaderList(v.Value)
		if err != nil {
			return fmt.Errorf("%s: %w", v.From, err)
		}
		t.Headers = h
	}
	for k, v := range r.c.Headers {
		t.Headers[k] = v
	}
	return nil
}

// timeout: the flag, else the variables (milliseconds, as the
// specification has it), else DefaultTimeout.
func (r resolver) timeout(t *Transport) error {
	if r.c.Timeout > 0 {
		t.Timeout = r.c.Timeout
		return nil
	}
	t.Timeout = DefaultTimeout
	v := r.pick("", "", "TIMEOUT")
	if v.Value == "" {
		return nil
	}
	ms, err := strconv.ParseUint(v.Value, 10, 31)
	if err != nil || ms == 0 {
		return fmt.Errorf("%s=%q: want milliseconds, a whole number above 0", v.From, v.Value)
	}
	t.Timeout = time.Duration(ms) * time.Millisecond
	return nil
}

func (r resolver) compression(t *Transport) (err error) {
	t.Compression, err = oneOf(r.pick("", "", "COMPRESSION"), CompressionGzip, CompressionNone)
	return err
}

func (r resolver) target(t *Transport) error {
	ep, err := parseEndpoint(t.Endpoint.Value, t.Protocol, t.Insecure)
	if err != nil {
		return fmt.Errorf("%s=%q: %w", t.Endpoint.From, t.Endpoint.Value, err)
	}
	t.target = ep
	return nil
}

// signalURL reports whether the endpoint is the signal's own variable,
// which for HTTP is the receiver's URL, used as it is.
func (t *Transport) signalURL() bool { return t.Endpoint.From == envName(t.Signal, "ENDPOINT") }

// URL is where OTLP/HTTP requests of the signal go: a signal-specific URL
// as it is, otherwise the base URL with the signal's path appended.
func (t *Transport) URL() string {
	if t.signalURL() {
		return t.target.url
	}
	return t.target.base + httpPaths[t.Signal]
}

// endpoint is a parsed Endpoint.
type endpoint struct {
	hostport string
	secure   bool   // TLS
	base     string // scheme://host:port plus the URL's path without a trailing slash
	url      string // the URL as given; for host:port, base
}

// parseEndpoint reads "host:port" (TLS unless insecure) or a URL, whose
// scheme decides (http is plaintext), as the OTLP exporter specification
// says.
func parseEndpoint(raw, protocol string, insecure bool) (endpoint, error) {
	if strings.Contains(raw, "://") {
		return parseEndpointURL(raw, protocol)
	}
	host, port, err := net.SplitHostPort(raw)
	if err != nil {
		return endpoint{}, fmt.Errorf("want host:port or an http(s):// URL: %w", err)
	}
	if host == "" || port == "" {
		return endpoint{}, errors.New("want host:port or an http(s):// URL")
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return endpoint{}, fmt.Errorf("port %q: want a number", port)
	}
	ep := endpoint{hostport: raw, secure: !insecure}
	scheme := "https"
	if insecure {
		scheme = "http"
	}
	ep.base = scheme + "://" + raw
	ep.url = ep.base
	return ep, nil
}

func parseEndpointURL(raw, protocol string) (endpoint, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return endpoint{}, err
	}
	var ep endpoint
	switch u.Scheme {
	case "http":
	case "https":
		ep.secure = true
	default:
		return ep, fmt.Errorf("scheme %q: want http or https", u.Scheme)
	}
	if u.Host == "" {
		return ep, errors.New("no host")
	}
	ep.hostport = u.Host
	if u.Port() == "" {
		ep.hostport = net.JoinHostPort(u.Hostname(), defaultPort(protocol))
	}
	ep.base = u.Scheme + "://" + u.Host + strings.TrimSuffix(u.Path, "/")
	ep.url = raw
	return ep, nil
}

func defaultPort(protocol string) string {
	if protocol == ProtocolHTTP {
		return "4318"
	}
	return "4317"
}

// ParseHeaderList parses the W3C-baggage-like "k1=v1,k2=v2" list of
// OTEL_EXPORTER_OTLP_HEADERS; values are URL-decoded.
func ParseHeaderList(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if strings.TrimSpace(kv) == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("%q: want key=value", kv)
		}
		dv, err := url.PathUnescape(strings.TrimSpace(v))
		if err != nil {
			return nil, fmt.Errorf("%q: %w", kv, err)
		}
		out[k] = dv
	}
	return out, nil
}
