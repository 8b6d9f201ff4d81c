// Package attribution names the Kubernetes workload behind a cgroup. The
// cgroup path alone gives the container id and pod UID (the kubelet's and the
// runtimes' naming rules, containerid.Parse); the node's container
// runtime, asked over the CRI API (k8s.io/cri-client), adds the namespace,
// pod and container names. Lookups only read a cache and never wait for the
// runtime: an unknown container asks a background refresher for a new
// listing, so scrapes and the profiler never block on a slow or absent
// runtime socket.
package attribution

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cgscope/cgscope/internal/containerid"
)

// Workload is what cgscope knows about the container or pod a cgroup belongs
// to. Values are shared and must not be modified; empty fields are unknown.
type Workload struct {
	ContainerID string // runtime container id (64 hex for containerd, CRI-O, Docker)
	PodUID      string
	Namespace   string // from the CRI runtime
	Pod         string // from the CRI runtime
	Container   string // from the CRI runtime; "" for a pod's sandbox (pause) cgroup
}

// Named reports whether the runtime supplied the workload's names.
func (w *Workload) Named() bool { return w != nil && w.Pod != "" }

// LabelNames are a workload's labels wherever cgscope exports one (pprof
// sample labels, /metrics, the history's filters), in LabelValues' order.
var LabelNames = [5]string{"container_id", "pod_uid", "namespace", "pod", "container"}

// LabelValues returns the workload's labels in LabelNames' order; "" is
// unknown, and a nil workload knows none.
func (w *Workload) LabelValues() [5]string {
	if w == nil {
		return [5]string{}
	}
	return [5]string{w.ContainerID, w.PodUID, w.Namespace, w.Pod, w.Container}
}

// DefaultEndpoints are the CRI sockets probed, in order, when no endpoint is
// configured: containerd, CRI-O, cri-dockerd, k3s's and MicroK8s' containerd.
var DefaultEndpoints = []string{
	"unix:///run/containerd/containerd.sock",
	"unix:///run/crio/crio.sock",
	"unix:///var/run/cri-dockerd.sock",
	"unix:///run/k3s/containerd/containerd.sock",
	"unix:///var/snap/microk8s/common/run/containerd.sock",
}

// Config bounds and times the resolver. Zero values take the defaults.
type Config struct {
	// Endpoint is the CRI runtime socket, "unix:///path" or "/path". Empty
	// probes DefaultEndpoints at every resync; "none" turns the CRI off, so
	// that only cgroup paths are used.
	Endpoint      string
	MaxContainers int           // containers and sandboxes cached (default 16384)
	MaxPaths      int           // parsed cgroup paths cached (default 16384)
	Resync        time.Duration // full listing at least this often (default 1m)
	MinRefresh    time.Duration // at most one listing per this on misses (default 2s)
	Retain        time.Duration // keep containers the runtime stopped listing (default 10m)
	Timeout       time.Duration // connect and each CRI call (default 2s)
	Logger        *slog.Logger
}

const endpointNone = "none"

func (c *Config) setDefaults() {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.MaxContainers, 16384)
	def(&c.MaxPaths, 16384)
	defDur(&c.Resync, time.Minute)
	defDur(&c.MinRefresh, 2*time.Second)
	defDur(&c.Retain, 10*time.Minute)
	defDur(&c.Timeout, 2*time.Second)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// NormalizeEndpoint returns the endpoint as a unix:// URL, or an error that
// says what is wrong with it. "" and "none" are returned unchanged.
func NormalizeEndpoint(e string) (string, error) {
	switch {
	case e == "" || e == endpointNone:
		return e, nil
	case strings.HasPrefix(e, "/"):
		return "unix://" + e, nil
	case strings.HasPrefix(e, "unix:///"):
		return e, nil
	case strings.Contains(e, "://"):
		return "", fmt.Errorf("CRI endpoint %q: only unix:// sockets are supported", e)
	default:
		return "", fmt.Errorf("CRI endpoint %q: want an absolute socket path or unix:///path", e)
	}
}

// Resolver maps cgroup paths to workloads. Lookup is safe for concurrent
// use; Run keeps the runtime's names fresh.
type Resolver struct {
	cfg     Config
	runtime *runtimeClient // nil when the CRI is off

	names   atomic.Pointer[snapshot] // the runtime's latest listing
	refresh chan struct{}            // a miss asks for a listing; capacity 1

	mu         sync.Mutex
	paths      map[string]containerid.Identity
	unresolved map[string]*Workload // path-only workloads, by container id or pod UID
	asked      map[string]time.Time // when a listing was last asked for an unknown id

	stats stats
}

// snapshot is one listing of the runtime, immutable once published.
type snapshot struct {
	containers map[string]*entry // by container or sandbox id
	pods       map[string]*entry // sandboxes by pod UID
	at         time.Time
}

type entry struct {
	w        *Workload
	lastSeen time.Time
}

// NewResolver validates the configuration; it starts nothing and touches no
// socket. Call Run to use the CRI runtime.
func NewResolver(cfg Config) (*Resolver, error) {
	cfg.setDefaults()
	ep, err := NormalizeEndpoint(cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	cfg.Endpoint = ep
	r := &Resolver{
		cfg:        cfg,
		refresh:    make(chan struct{}, 1),
		paths:      map[string]containerid.Identity{},
		unresolved: map[string]*Workload{},
		asked:      map[string]time.Time{},
	}
	if ep != endpointNone {
		r.runtime = newRuntimeClient(ep, cfg.Timeout, cfg.Logger)
	}
	r.names.Store(&snapshot{containers: map[string]*entry{}, pods: map[string]*entry{}})
	return r, nil
}

// PathOnly returns a resolver that never asks a runtime: its workloads have
// only the container id and pod UID the cgroup path gives.
func PathOnly() *Resolver {
	r, _ := NewResolver(Config{Endpoint: endpointNone}) // "none" is always valid
	return r
}

// Lookup returns the workload of a cgroup path, or nil when the path is not
// a container's or a pod's. It never blocks on the runtime.
func (r *Resolver) Lookup(path string) *Workload {
	if r == nil {
		return nil
	}
	id := r.parse(path)
	if id.ContainerID == "" && id.PodUID == "" {
		return nil
	}
	names := r.names.Load()
	if id.ContainerID != "" {
		if e, ok := names.containers[id.ContainerID]; ok {
			r.stats.resolved.Add(1)
			return e.w
		}
	} else if e, ok := names.pods[id.PodUID]; ok {
		r.stats.resolved.Add(1)
		return e.w
	}
	r.stats.unresolved.Add(1)
	return r.pathOnly(id)
}

// parse returns the cached identity of a path. The cache is bounded by
// starting over when full: paths are cheap to parse again.
func (r *Resolver) parse(path string) containerid.Identity {
	r.mu.Lock()
	defer r.mu.Unlock()
	if id, ok := r.paths[path]; ok {
		return id
	}
	if len(r.paths) >= r.cfg.MaxPaths {
		clear(r.paths)
	}
	id := containerid.Parse(path)
	r.paths[path] = id
	return id
}

// pathOnly returns the workload the path alone describes (one shared value
// per id) and asks for a listing, at most once per Resync for the same id:
// containers the runtime does not know (plain Docker, Podman) must not make
// every lookup a listing.
func (r *Resolver) pathOnly(id containerid.Identity) *Workload {
	key := id.ContainerID
	if key == "" {
		key = "pod:" + id.PodUID
	}
	r.mu.Lock()
	w, ok := r.unresolved[key]
	if !ok {
		if len(r.unresolved) >= r.cfg.MaxContainers {
			clear(r.unresolved)
		}
		w = &Workload{ContainerID: id.ContainerID, PodUID: id.PodUID}
		r.unresolved[key] = w
	}
	now := time.Now()
	last, seen := r.asked[key]
	ask := r.runtime != nil && (!seen || now.Sub(last) >= r.cfg.Resync)
	if ask {
		if len(r.asked) >= r.cfg.MaxContainers {
			clear(r.asked)
		}
		r.asked[key] = now
	}
	r.mu.Unlock()
	if ask {
		select {
		case r.refresh <- struct{}{}:
		default: // a listing is already asked for
		}
	}
	return w
}

// Run lists the runtime's pods and containers at start, on misses (at most
// every MinRefresh) and every Resync, until ctx ends. Failures back off
// exponentially up to Resync and are logged once per change of state.
func (r *Resolver) Run(ctx context.Context) {
	if r.runtime == nil {
		r.cfg.Logger.Info("Kubernetes names from the CRI runtime are off; container_id and pod_uid come from cgroup paths")
		return
	}
	defer r.runtime.close()
	backoff := time.Duration(0)
	for {
		start := time.Now()
		err := r.list(ctx)
		wait := r.cfg.Resync
		if err != nil {
			backoff = min(max(2*backoff, r.cfg.MinRefresh), r.cfg.Resync)
			wait = backoff
		} else {
			backoff = 0
		}
		if !r.sleep(ctx, start, wait, err == nil) {
			return
		}
	}
}

// sleep waits until the next listing is due: after wait, or after a miss
// once MinRefresh has passed (only when the runtime answers; a failing one
// waits out its backoff). It reports false when ctx ended.
func (r *Resolver) sleep(ctx context.Context, since time.Time, wait time.Duration, healthy bool) bool {
	full := time.NewTimer(time.Until(since.Add(wait)))
	defer full.Stop()
	misses := r.refresh
	if !healthy {
		misses = nil
	}
	for {
		select {
		case <-ctx.Done():
			return false
		case <-full.C:
			return true
		case <-misses:
			if d := time.Until(since.Add(r.cfg.MinRefresh)); d > 0 {
				select {
				case <-ctx.Done():
					return false
				case <-time.After(d):
				}
			}
			return true
		}
	}
}

// list asks the runtime for all pods and containers and publishes them.
func (r *Resolver) list(ctx context.Context) error {
	pods, containers, err := r.runtime.list(ctx)
	r.stats.record(err)
	if err != nil {
		return err
	}
	now := time.Now()
	next := r.merge(r.names.Load(), pods, containers, now)
	r.names.Store(next)
	r.mu.Lock()
	clear(r.unresolved) // ids the listing named now resolve through it
	r.mu.Unlock()
	return nil
}
