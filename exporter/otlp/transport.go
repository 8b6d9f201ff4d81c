package otlp

import (
	"bytes"
	"context"
	"crypto/tls"
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
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cgscope/cgscope/exporter/queue"
)

// dialGRPC makes a signal's client connection. It does not connect yet
// (start-up never waits for a backend). Its reconnect backoff is capped at
// 5 s, rather than gRPC's 120 s, so that a backend that comes back is used
// within seconds.
func dialGRPC(t *Transport) (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if t.target.secure {
		tc := t.TLSConfig
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
		grpc.WithUserAgent("cgscope"),
	}
	if t.Compression == CompressionGzip {
		opts = append(opts, grpc.WithDefaultCallOptions(grpc.UseCompressor(gzipName)))
	}
	if len(t.Headers) > 0 {
		headers := metadata.New(t.Headers)
		opts = append(opts, grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, callOpts ...grpc.CallOption) error {
			md := headers
			if own, ok := metadata.FromOutgoingContext(ctx); ok { // e.g. the profiles version
				md = metadata.Join(own, headers)
			}
			return invoker(metadata.NewOutgoingContext(ctx, md), method, req, reply, cc, callOpts...)
		}))
	}
	return grpc.NewClient(t.target.hostport, opts...)
}

// classifyGRPC marks the status codes the OTLP specification calls not
// retryable as permanent. RESOURCE_EXHAUSTED is retried (the backend is
// overloaded, which passes) unless it refuses the message's size.
func classifyGRPC(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err // not from gRPC (e.g. a context error): retry
	}
	switch st.Code() {
	case codes.ResourceExhausted:
		if msg := st.Message(); strings.Contains(msg, "larger than max") || strings.Contains(msg, "exceeds maximum size") {
			// A refusal of a message over the server's (or this client's)
			// size limit, in grpc-go's and C-core's words or grpc-java's:
			// the same request is refused again.
			return queue.Permanent(err)
		}
		return err // the backend is overloaded, which passes
	case codes.Canceled, codes.DeadlineExceeded, codes.Aborted,
		codes.OutOfRange, codes.Unavailable, codes.DataLoss:
		return err
	}
	return queue.Permanent(err)
}

// httpClient posts a signal's OTLP/HTTP requests with its TLS, headers and
// compression, and remembers the status of the last response so that
// errors can be classified (the SDK's HTTP exporter does not expose it).
type httpClient struct {
	client     *http.Client
	headers    map[string]string
	gzip       bool
	lastStatus int // written by RoundTrip; sends are sequential per queue
}

func newHTTPClient(t *Transport) *httpClient {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if t.TLSConfig != nil {
		tr.TLSClientConfig = t.TLSConfig.Clone()
	}
	h := &httpClient{headers: t.Headers, gzip: t.Compression == CompressionGzip}
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
	}), Timeout: t.Timeout}
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

// postProto sends one protobuf body, gzip-compressed unless the
// transport says none, with the extra headers given.
func (h *httpClient) postProto(ctx context.Context, url string, body []byte, extra map[string]string) error {
	var r io.Reader = bytes.NewReader(body)
	if h.gzip {
		buf, err := gzipBody(body)
		if err != nil {
			return queue.Permanent(err)
		}
		r = buf
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, r)
	if err != nil {
		return queue.Permanent(err)
	}
	req.Header.Set("Content-Type", "application/x-protobuf")
	if h.gzip {
		req.Header.Set("Content-Encoding", "gzip")
	}
	for k, v := range extra {
		req.Header.Set(k, v)
	}
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
