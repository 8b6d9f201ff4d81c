package attribution

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cgscope/cgscope/internal/attribution/critest"
)

// Pods and containers as containerd, CRI-O and cri-dockerd name their
// cgroups under the kubelet's systemd and cgroupfs drivers.
var (
	podA = critest.Pod{SandboxID: critest.HexID(100), UID: critest.UID(1), Namespace: "shop", Name: "cart-7d9f"}
	podB = critest.Pod{SandboxID: critest.HexID(200), UID: critest.UID(2), Namespace: "kube-system", Name: "coredns-5d78"}
	podC = critest.Pod{SandboxID: critest.HexID(300), UID: critest.UID(3), Namespace: "batch", Name: "etl-29"}

	ctrA = critest.Container{ID: critest.HexID(101), Name: "app", Pod: podA}
	ctrB = critest.Container{ID: critest.HexID(201), Name: "coredns", Pod: podB}
	ctrC = critest.Container{ID: critest.HexID(301), Name: "worker", Pod: podC}
)

func slice(uid string) string { return strings.ReplaceAll(uid, "-", "_") }

var layouts = []struct {
	name, path string
	want       Workload
}{
	{"containerd systemd", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + slice(podA.UID) + ".slice/cri-containerd-" + ctrA.ID + ".scope",
		Workload{ContainerID: ctrA.ID, PodUID: podA.UID, Namespace: "shop", Pod: "cart-7d9f", Container: "app"}},
	{"containerd cgroupfs", "/kubepods/burstable/pod" + podA.UID + "/" + ctrA.ID,
		Workload{ContainerID: ctrA.ID, PodUID: podA.UID, Namespace: "shop", Pod: "cart-7d9f", Container: "app"}},
	{"cri-o systemd", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + slice(podB.UID) + ".slice/crio-" + ctrB.ID + ".scope",
		Workload{ContainerID: ctrB.ID, PodUID: podB.UID, Namespace: "kube-system", Pod: "coredns-5d78", Container: "coredns"}},
	{"cri-dockerd systemd", "/kubepods.slice/kubepods-pod" + slice(podC.UID) + ".slice/docker-" + ctrC.ID + ".scope",
		Workload{ContainerID: ctrC.ID, PodUID: podC.UID, Namespace: "batch", Pod: "etl-29", Container: "worker"}},
	{"cri-dockerd cgroupfs", "/kubepods/pod" + podC.UID + "/" + ctrC.ID,
		Workload{ContainerID: ctrC.ID, PodUID: podC.UID, Namespace: "batch", Pod: "etl-29", Container: "worker"}},
	{"pause container", "/kubepods/burstable/pod" + podA.UID + "/" + podA.SandboxID,
		Workload{ContainerID: podA.SandboxID, PodUID: podA.UID, Namespace: "shop", Pod: "cart-7d9f"}},
	{"pod cgroup", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + slice(podA.UID) + ".slice",
		Workload{ContainerID: podA.SandboxID, PodUID: podA.UID, Namespace: "shop", Pod: "cart-7d9f"}},
}

func startRuntime(t *testing.T) *critest.Server {
	s := critest.Start(t)
	for _, p := range []critest.Pod{podA, podB, podC} {
		s.AddPod(p)
	}
	for _, c := range []critest.Container{ctrA, ctrB, ctrC} {
		s.AddContainer(c)
	}
	return s
}

// run starts the resolver's refresher for the test's lifetime.
func run(t *testing.T, r *Resolver) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// eventually polls until ok or fails after a generous deadline (a watchdog,
// not a timing assertion).
func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if ok() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestLookupNamesEveryRuntimeLayout(t *testing.T) {
	srv := startRuntime(t)
	r, err := NewResolver(Config{Endpoint: srv.Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)
	eventually(t, "the first listing", func() bool { return r.Lookup(layouts[0].path).Named() })
	for _, l := range layouts {
		t.Run(l.name, func(t *testing.T) {
			got := r.Lookup(l.path)
			if got == nil || *got != l.want {
				t.Fatalf("Lookup(%s)\n got %+v\nwant %+v", l.path, got, l.want)
			}
		})
	}
	for _, p := range []string{"/", "/system.slice/ssh.service", "/user.slice/user-0.slice/session-1.scope"} {
		if w := r.Lookup(p); w != nil {
			t.Errorf("Lookup(%q) = %+v, want nil (no container)", p, w)
		}
	}
	if got := metricValue(t, r, "cgscope_kubernetes_cri_up"); got != 1 {
		t.Errorf("cgscope_kubernetes_cri_up = %v, want 1", got)
	}
}

func TestNewContainerIsNamedAfterAMiss(t *testing.T) {
	srv := startRuntime(t)
	r, _ := NewResolver(Config{Endpoint: srv.Endpoint, MinRefresh: 50 * time.Millisecond, Resync: time.Hour})
	run(t, r)
	eventually(t, "the first listing", func() bool { return r.Lookup(layouts[0].path).Named() })

	late := critest.Container{ID: critest.HexID(102), Name: "sidecar", Pod: podA}
	path := "/kubepods/burstable/pod" + podA.UID + "/" + late.ID
	srv.AddContainer(late) // the runtime knows a container before its cgroup runs anything
	before := r.Lookup(path)
	if before == nil || before.Named() || before.ContainerID != late.ID || before.PodUID != podA.UID {
		t.Fatalf("unknown container: got %+v, want the path's ids without names", before)
	}
	eventually(t, "the new container's names", func() bool {
		w := r.Lookup(path)
		return w.Named() && w.Container == "sidecar"
	})

	// An id the runtime never lists asks once, not on every lookup.
	stranger := "/docker/" + critest.HexID(999)
	r.Lookup(stranger)
	time.Sleep(300 * time.Millisecond) // several MinRefresh periods
	n := srv.Listings()
	for range 100 {
		if w := r.Lookup(stranger); w.Named() {
			t.Fatalf("a container the runtime does not list got names: %+v", w)
		}
	}
	time.Sleep(300 * time.Millisecond)
	if m := srv.Listings(); m != n {
		t.Errorf("100 lookups of an id the runtime does not know made %d listings, want 0", m-n)
	}
}

func TestRemovedContainerKeptForRetainThenForgotten(t *testing.T) {
	srv := startRuntime(t)
	r, _ := NewResolver(Config{Endpoint: srv.Endpoint, MinRefresh: 20 * time.Millisecond, Resync: 50 * time.Millisecond, Retain: 400 * time.Millisecond})
	run(t, r)
	path := layouts[0].path
	eventually(t, "the first listing", func() bool { return r.Lookup(path).Named() })
	srv.RemoveContainer(ctrA.ID)
	listings := srv.Listings()
	eventually(t, "two more listings", func() bool { return srv.Listings() >= listings+2 })
	if w := r.Lookup(path); !w.Named() {
		t.Fatalf("a container removed moments ago lost its names: %+v", w)
	}
	eventually(t, "the removed container to be forgotten", func() bool { return !r.Lookup(path).Named() })
}

func TestCacheIsBounded(t *testing.T) {
	srv := critest.Start(t)
	pod := critest.Pod{SandboxID: critest.HexID(1000), UID: critest.UID(1000), Namespace: "ns", Name: "big"}
	srv.AddPod(pod)
	for i := range 50 {
		srv.AddContainer(critest.Container{ID: critest.HexID(2000 + i), Name: "c", Pod: pod})
	}
	r, _ := NewResolver(Config{Endpoint: srv.Endpoint, MaxContainers: 10, MaxPaths: 5})
	run(t, r)
	eventually(t, "the first listing", func() bool { return srv.Listings() > 0 && r.stats.evicted.Load() > 0 })
	if n := len(r.names.Load().containers); n > 10 {
		t.Errorf("%d containers cached, want at most 10", n)
	}
	for i := range 50 {
		r.Lookup("/kubepods/pod" + pod.UID + "/" + critest.HexID(5000+i))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.paths) > 5 || len(r.unresolved) > 10 || len(r.asked) > 10 {
		t.Errorf("caches grew past their bounds: %d paths, %d unresolved, %d asked", len(r.paths), len(r.unresolved), len(r.asked))
	}
}

func TestUnreachableRuntimeNeverBlocksAndIsReportedOnce(t *testing.T) {
	endpoint, accepted := critest.Hanging(t)
	var logs syncBuffer
	r, _ := NewResolver(Config{Endpoint: endpoint, Timeout: 100 * time.Millisecond, MinRefresh: 20 * time.Millisecond,
		Resync: 60 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	run(t, r)
	<-accepted // the refresher is now waiting on a runtime that never answers

	done := make(chan *Workload)
	go func() { done <- r.Lookup(layouts[0].path) }()
	select {
	case w := <-done:
		if w == nil || w.ContainerID != ctrA.ID || w.PodUID != podA.UID || w.Named() {
			t.Fatalf("got %+v, want the ids from the path and no names", w)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Lookup waited for the runtime")
	}
	eventually(t, "several failed listings", func() bool { return r.stats.listErrors.Load() >= 4 })
	if got := metricValue(t, r, "cgscope_kubernetes_cri_up"); got != 0 {
		t.Errorf("cgscope_kubernetes_cri_up = %v, want 0", got)
	}
	if n := strings.Count(logs.String(), "CRI runtime unreachable"); n != 1 {
		t.Errorf("an unreachable runtime was logged %d times over %d attempts, want once:\n%s", n, r.stats.listErrors.Load(), logs.String())
	}
}

func TestRuntimeComingBackIsUsed(t *testing.T) {
	srv := startRuntime(t)
	var logs syncBuffer
	r, _ := NewResolver(Config{Endpoint: srv.Endpoint, Timeout: 200 * time.Millisecond, MinRefresh: 20 * time.Millisecond,
		Resync: 50 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	run(t, r)
	eventually(t, "the first listing", func() bool { return r.Lookup(layouts[0].path).Named() })
	srv.Stop()
	eventually(t, "a failed listing", func() bool { return r.stats.listErrors.Load() > 0 })
	if !r.Lookup(layouts[0].path).Named() {
		t.Error("names were lost when the runtime went away")
	}
	// A new runtime on the same socket path (a restarted containerd).
	srv2 := critest.StartAt(t, srv.Endpoint)
	srv2.AddPod(podA)
	srv2.AddContainer(critest.Container{ID: critest.HexID(103), Name: "after-restart", Pod: podA})
	path := "/kubepods/burstable/pod" + podA.UID + "/" + critest.HexID(103)
	eventually(t, "names from the restarted runtime", func() bool { return r.Lookup(path).Named() })
	if n := strings.Count(logs.String(), "CRI runtime connected"); n != 2 {
		t.Errorf("logged %d connects, want 2 (start and recovery):\n%s", n, logs.String())
	}
}

func TestNoRuntimeSocket(t *testing.T) {
	r, err := NewResolver(Config{Endpoint: "none"})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)
	w := r.Lookup(layouts[1].path)
	if w == nil || w.ContainerID != ctrA.ID || w.PodUID != podA.UID || w.Named() {
		t.Fatalf("got %+v, want ids from the path only", w)
	}
	if got := probeEndpoints([]string{"unix://" + filepath.Join(t.TempDir(), "absent.sock")}); got != "" {
		t.Errorf("probe found %q in an empty dir", got)
	}
}

func TestBadEndpoints(t *testing.T) {
	for _, e := range []string{"tcp://127.0.0.1:1234", "relative/path.sock", "unix://relative", "http://x"} {
		if _, err := NewResolver(Config{Endpoint: e}); err == nil {
			t.Errorf("NewResolver(%q) accepted a bad endpoint", e)
		} else if !strings.Contains(err.Error(), e) {
			t.Errorf("error %q does not name the endpoint %q", err, e)
		}
	}
	for in, want := range map[string]string{"/run/x.sock": "unix:///run/x.sock", "unix:///run/x.sock": "unix:///run/x.sock", "": "", "none": "none"} {
		if got, err := NormalizeEndpoint(in); err != nil || got != want {
			t.Errorf("NormalizeEndpoint(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// metricValue gathers the resolver's self-metrics through a pedantic
// registry (which also checks them) and returns one unlabelled value.
func metricValue(t *testing.T, r *Resolver, name string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(r)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}
