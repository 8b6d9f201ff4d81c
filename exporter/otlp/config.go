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

// Config is what the user configured for OTLP export, from flags and the
// standard OTEL_EXPORTER_OTLP_* variables (flags win).
type Config struct {
	Endpoint string // host:port or http(s):// URL; "" = OTLP export off
	Protocol string // ProtocolGRPC (default) or ProtocolHTTP
	Insecure bool   // plaintext instead of TLS
	Headers  map[string]string
	// TLS file names, from OTEL_EXPORTER_OTLP_CERTIFICATE and friends when
	// the flags leave them empty; the caller loads them into TLSConfig.
	CAFile, CertFile, KeyFile string
	TLSConfig                 *tls.Config // nil: system roots

	Profiles, Metrics bool // the signals to send
	Interval          time.Duration
	QueueSize         int
	Timeout           time.Duration // per send attempt
}

// Enabled reports whether OTLP export is configured at all.
func (c *Config) Enabled() bool { return c.Endpoint != "" }

// ApplyEnv fills what the flags left unset from the standard
// OTEL_EXPORTER_OTLP_* variables (the signal-independent ones).
func (c *Config) ApplyEnv(getenv func(string) string) error {
	set := func(dst *string, name string) {
		if *dst == "" {
			*dst = strings.TrimSpace(getenv(name))
		}
	}
	set(&c.Endpoint, "OTEL_EXPORTER_OTLP_ENDPOINT")
	set(&c.Protocol, "OTEL_EXPORTER_OTLP_PROTOCOL")
	set(&c.CAFile, "OTEL_EXPORTER_OTLP_CERTIFICATE")
	set(&c.CertFile, "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")
	set(&c.KeyFile, "OTEL_EXPORTER_OTLP_CLIENT_KEY")
	if v := getenv("OTEL_EXPORTER_OTLP_INSECURE"); v != "" && !c.Insecure {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("OTEL_EXPORTER_OTLP_INSECURE=%q: want true or false", v)
		}
		c.Insecure = b
	}
	if v := getenv("OTEL_EXPORTER_OTLP_HEADERS"); v != "" {
		h, err := ParseHeaderList(v)
		if err != nil {
			return fmt.Errorf("OTEL_EXPORTER_OTLP_HEADERS: %w", err)
		}
		for k, v := range h {
			if _, ok := c.Headers[k]; !ok {
				if c.Headers == nil {
					c.Headers = map[string]string{}
				}
				c.Headers[k] = v
			}
		}
	}
	return nil
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

// Validate checks the configuration, so that a bad one stops the daemon
// before anything starts. It normalizes Protocol.
func (c *Config) Validate() error {
	if !c.Enabled() {
		return nil
	}
	if c.Protocol == "" {
		c.Protocol = ProtocolGRPC
	}
	if c.Protocol != ProtocolGRPC && c.Protocol != ProtocolHTTP {
		return fmt.Errorf("--otlp.protocol=%q: want %s or %s", c.Protocol, ProtocolGRPC, ProtocolHTTP)
	}
	if _, err := c.target(); err != nil {
		return fmt.Errorf("--otlp.endpoint=%q: %w", c.Endpoint, err)
	}
	if !c.Profiles && !c.Metrics {
		return errors.New("--otlp.signals: name at least one of profiles, metrics")
	}
	switch {
	case c.Interval < time.Second || c.Interval > time.Hour:
		return fmt.Errorf("--otlp.interval=%s: want 1s..1h", c.Interval)
	case c.QueueSize < 1:
		return fmt.Errorf("--otlp.queue-size=%d: want at least 1", c.QueueSize)
	case c.Timeout <= 0:
		return fmt.Errorf("--otlp.timeout=%s: want more than 0", c.Timeout)
	}
	return nil
}

// endpoint is a parsed Endpoint.
type endpoint struct {
	hostport string
	secure   bool   // TLS
	base     string // for HTTP: scheme://host:port/path without a trailing slash
}

// target parses Endpoint: "host:port" takes TLS unless Insecure; a URL's
// scheme decides (http is plaintext), as the OTLP exporter spec says.
func (c *Config) target() (endpoint, error) {
	ep := endpoint{secure: !c.Insecure}
	raw := c.Endpoint
	if strings.Contains(raw, "://") {
		u, err := url.Parse(raw)
		if err != nil {
			return ep, err
		}
		switch u.Scheme {
		case "http":
			ep.secure = false
		case "https":
			ep.secure = !c.Insecure
		default:
			return ep, fmt.Errorf("scheme %q: want http or https", u.Scheme)
		}
		if u.Host == "" {
			return ep, errors.New("no host")
		}
		ep.hostport = u.Host
		if u.Port() == "" {
			ep.hostport = net.JoinHostPort(u.Hostname(), defaultPort(c.Protocol))
		}
		ep.base = u.Scheme + "://" + u.Host + strings.TrimSuffix(u.Path, "/")
		if u.Scheme == "https" && !ep.secure {
			ep.base = "http://" + u.Host + strings.TrimSuffix(u.Path, "/")
		}
		return ep, nil
	}
	host, port, err := net.SplitHostPort(raw)
	if err != nil {
		return ep, fmt.Errorf("want host:port or an http(s):// URL: %w", err)
	}
	if host == "" || port == "" {
		return ep, errors.New("want host:port or an http(s):// URL")
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return ep, fmt.Errorf("port %q: want a number", port)
	}
	ep.hostport = raw
	scheme := "https"
	if !ep.secure {
		scheme = "http"
	}
	ep.base = scheme + "://" + raw
	return ep, nil
}

func defaultPort(protocol string) string {
	if protocol == ProtocolHTTP {
		return "4318"
	}
	return "4317"
}
