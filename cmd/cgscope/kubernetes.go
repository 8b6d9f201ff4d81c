package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/alecthomas/kingpin/v2"

	"github.com/cgscope/cgscope/internal/attribution"
)

// kubernetesFlags configure how cgroups get pod and container names.
type kubernetesFlags struct {
	endpoint      string
	resync        time.Duration
	maxContainers int
}

func addKubernetesFlags(app *kingpin.Application) *kubernetesFlags {
	f := &kubernetesFlags{}
	app.Flag("kubernetes.cri-endpoint", "CRI runtime socket for namespace/pod/container names (unix:///path or /path); empty probes containerd, CRI-O, cri-dockerd and k3s sockets; \"none\" uses cgroup paths only.").
		StringVar(&f.endpoint)
	app.Flag("kubernetes.cri-resync-interval", "How often the CRI runtime's pods and containers are listed (also on an unknown container, at most every 2s).").
		Default("1m").DurationVar(&f.resync)
	app.Flag("kubernetes.max-containers", "Containers and pod sandboxes whose names are cached.").
		Default("16384").IntVar(&f.maxContainers)
	return f
}

func (f *kubernetesFlags) validate() error {
	if _, err := attribution.NormalizeEndpoint(f.endpoint); err != nil {
		return fmt.Errorf("--kubernetes.cri-endpoint: %w", err)
	}
	if f.resync < time.Second || f.resync > time.Hour {
		return fmt.Errorf("--kubernetes.cri-resync-interval=%s: want 1s..1h", f.resync)
	}
	if f.maxContainers < 1 {
		return fmt.Errorf("--kubernetes.max-containers=%d: want at least 1", f.maxContainers)
	}
	return nil
}

// startWorkloads builds the resolver and keeps it fresh until the returned
// stop is called.
func (f *kubernetesFlags) startWorkloads() (*attribution.Resolver, func() error, error) {
	r, err := attribution.NewResolver(attribution.Config{
		Endpoint:      f.endpoint,
		Resync:        f.resync,
		MaxContainers: f.maxContainers,
		Logger:        slog.Default().With("component", "kubernetes"),
	})
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	return r, func() error { cancel(); <-done; return nil }, nil
}
