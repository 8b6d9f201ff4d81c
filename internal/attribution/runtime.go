package attribution

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/go-logr/logr"
	internalapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remote "k8s.io/cri-client/pkg"
	"k8s.io/klog/v2"
)

// errNoRuntime says that no configured or default CRI socket exists.
var errNoRuntime = errors.New("no CRI runtime socket found")

// runtimeClient is one CRI runtime connection, made on first use, dropped
// after a failure (the socket may be recreated by a runtime restart) and
// made again by the next listing.
type runtimeClient struct {
	endpoint string // configured endpoint, "" to probe DefaultEndpoints
	timeout  time.Duration
	logger   *slog.Logger

	svc       internalapi.RuntimeService
	connected string // endpoint of svc
	state     string // last logged state, so each change is logged once
}

func newRuntimeClient(endpoint string, timeout time.Duration, logger *slog.Logger) *runtimeClient {
	return &runtimeClient{endpoint: endpoint, timeout: timeout, logger: logger}
}

// list returns every pod sandbox and container the runtime knows.
func (c *runtimeClient) list(ctx context.Context) ([]*runtimeapi.PodSandbox, []*runtimeapi.Container, error) {
	if err := c.connect(ctx); err != nil {
		c.report(ctx, err)
		return nil, nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	pods, err := c.svc.ListPodSandbox(cctx, nil)
	if err == nil {
		var containers []*runtimeapi.Container
		containers, err = c.svc.ListContainers(cctx, nil)
		if err == nil {
			c.report(ctx, nil)
			return pods, containers, nil
		}
	}
	err = fmt.Errorf("CRI runtime %s: %w", c.connected, err)
	c.report(ctx, err)
	c.close()
	return nil, nil, err
}

// connect dials the configured endpoint, or the first default socket that
// exists, and checks that it speaks CRI v1.
func (c *runtimeClient) connect(ctx context.Context) error {
	if c.svc != nil {
		return nil
	}
	endpoint := c.endpoint
	if endpoint == "" {
		endpoint = probeEndpoints(DefaultEndpoints)
		if endpoint == "" {
			return errNoRuntime
		}
	}
	// cri-client logs through klog; route it to slog.
	ctx = klog.NewContext(ctx, logr.FromSlogHandler(c.logger.Handler()))
	svc, err := remote.NewRemoteRuntimeServiceBuilder().
		WithEndpoint(endpoint).
		WithConnectionTimeout(c.timeout).
		WithTracerProvider(nil). // no tracing of cgscope's own CRI calls
		Build(ctx)
	if err != nil {
		return fmt.Errorf("CRI runtime %s: %w", endpoint, err)
	}
	c.svc, c.connected = svc, endpoint
	return nil
}

// probeEndpoints returns the first endpoint whose socket file exists.
func probeEndpoints(endpoints []string) string {
	for _, e := range endpoints {
		fi, err := os.Stat(strings.TrimPrefix(e, "unix://"))
		if err == nil && fi.Mode()&os.ModeSocket != 0 {
			return e
		}
	}
	return ""
}

// report logs the runtime's state when it changes: connected, failing (with
// the first error) or absent. An unreachable runtime is one log line, not
// one per attempt, whatever each attempt's error; shutting down is not a
// failure.
func (c *runtimeClient) report(ctx context.Context, err error) {
	if ctx.Err() != nil {
		return
	}
	state := "connected"
	switch {
	case errors.Is(err, errNoRuntime):
		state = "absent"
	case err != nil:
		state = "failing"
	}
	if state == c.state {
		return
	}
	c.state = state
	switch {
	case err == nil:
		c.logger.Info("CRI runtime connected; pods and containers get Kubernetes names", "endpoint", c.connected)
	case errors.Is(err, errNoRuntime):
		c.logger.Info("no CRI runtime socket found; container_id and pod_uid come from cgroup paths only (set --kubernetes.cri-endpoint)",
			"probed", strings.Join(DefaultEndpoints, ","))
	default:
		c.logger.Warn("CRI runtime unreachable; Kubernetes names are kept from the last listing and retried in the background", "err", err)
	}
}

func (c *runtimeClient) close() {
	if c.svc == nil {
		return
	}
	_ = c.svc.Close(context.Background())
	c.svc = nil
}
