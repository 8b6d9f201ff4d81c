package otlp

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	grpcgzip "google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cgscope/cgscope/exporter/queue"
)

// dialGRPC makes the one client connection both signals share. It does not
// connect yet (start-up never waits for a backend). Its reconnect backoff is
// capped at 5 s, rather than gRPC's 120 s, so that a backend that comes back
// is used within seconds.
func dialGRPC(cfg *Config, ep endpoint) (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if ep.secure {
		tc := cfg.TLSConfig
		if tc == nil {
			tc = &tls.Config{}
		}
		creds = credentials.NewTLS(tc)
	}
	bc := backoff.DefaultConfig
	bc.BaseDelay = 500 * time.Millisecond
	bc.MaxDelay = 5 * time.Second
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: bc, MinConnectTimeout: 5 * time.Second}),
		grpc.WithDefaultCallOptions(grpc.UseCompressor(grpcgzip.Name)),
		grpc.WithUserAgent("cgscope"),
	}
	if len(cfg.Headers) > 0 {
		md := metadata.New(cfg.Headers)
		opts = append(opts, grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, callOpts ...grpc.CallOption) error {
			return invoker(metadata.NewOutgoingContext(ctx, md), method, req, reply, cc, callOpts...)
		}))
	}
	return grpc.NewClient(ep.hostport, opts...)
}

// classifyGRPC marks the status codes the OTLP specification calls not
// retryable as permanent. RESOURCE_EXHAUSTED is retried: the backend is
// overloaded, which passes.
func classifyGRPC(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err // not from gRPC (e.g. a context error): retry
	}
	switch st.Code() {
	case codes.Canceled, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted,
		codes.OutOfRange, codes.Unavailable, codes.DataLoss:
		return err
	}
	return queue.Permanent(err)
}

// httpClient posts OTLP/HTTP requests with the configured TLS and headers,
// and remembers the status of the last response so that errors can be
// classified (the SDK's HTTP exporter does not expose it).
type httpClient struct {
	client     *http.Client
	headers    map[string]string
	lastStatus int // written by RoundTrip; sends are sequential per queue
}

func newHTTPClient(cfg *Config, timeout time.Duration) *httpClient {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if cfg.TLSConfig != nil {
		tr.TLSClientConfig = cfg.TLSConfig.Clone()
	}
	h := &httpClient{headers: cfg.Headers}
	h.client = &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		for k, v := range h.headers {
			r.Header.Set(k, v)
		}
		r.Header.Set("User-Agent", "cgscope")
		resp, err := tr.RoundTrip(r)
		if resp != nil {
			h.lastStatus = resp.StatusCode
		}
		return resp, err
	}), Timeout: timeout}
	return h
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// classifyHTTP marks an error after a response of status as permanent
// unless the OTLP/HTTP specification calls that status retryable; errors
// without a response (connection refused, timeouts) are retried.
func classifyHTTP(err error, status int) error {
	if err == nil || status == 0 {
		return err
	}
	switch status {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return err
	}
	if status >= 400 && status < 500 {
		return queue.Permanent(err)
	}
	return err
}

// postProto sends one gzip-compressed protobuf body.
func (h *httpClient) postProto(ctx context.Context, url string, body []byte) error {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(body)
	if err := zw.Close(); err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, &buf)
	if err != nil {
		return queue.Permanent(err)
	}
	req.Header.Set("Content-Type", "application/x-protobuf")
	req.Header.Set("Content-Encoding", "gzip")
	h.lastStatus = 0
	resp, err := h.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode/100 == 2 {
		return nil
	}
	err = fmt.Errorf("%s: %s: %s", url, resp.Status, strings.TrimSpace(string(msg)))
	return classifyHTTP(err, resp.StatusCode)
}

var errNoData = errors.New("nothing to send")
