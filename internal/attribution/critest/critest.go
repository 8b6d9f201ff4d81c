// Package critest serves the CRI runtime API on a real unix socket for
// tests: the Kubernetes project's own fake runtime (k8s.io/cri-client's
// fake.RemoteRuntime) behind a gRPC server, with helpers to declare the pods
// and containers it lists. It stands in for containerd or CRI-O, which
// cannot run pods on a test machine without images and a registry.
package critest

import (
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	apitest "k8s.io/cri-api/pkg/apis/testing"
	"k8s.io/cri-client/pkg/fake"
)

// Server is a CRI runtime listening on Endpoint until the test ends.
type Server struct {
	Endpoint string // unix:///...

	remote *fake.RemoteRuntime
	mu     sync.Mutex
	pods   []*apitest.FakePodSandbox
	ctrs   []*apitest.FakeContainer
}

// Pod is a pod sandbox as the kubelet creates it.
type Pod struct {
	SandboxID, UID, Namespace, Name string
}

// Container is a container of a pod, with the kubelet's labels.
type Container struct {
	ID, Name string
	Pod      Pod
}

// Start serves a CRI runtime on a socket in the test's temp dir.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartAt(t, "unix://"+filepath.Join(t.TempDir(), "cri.sock"))
}

// StartAt serves a CRI runtime on the given unix:// endpoint, replacing a
// stale socket file there (as a restarted runtime does).
func StartAt(t testing.TB, endpoint string) *Server {
	t.Helper()
	s := &Server{Endpoint: endpoint, remote: fake.NewFakeRemoteRuntime()}
	if err := s.remote.Start(endpoint); err != nil {
		t.Fatalf("start CRI test server: %v", err)
	}
	t.Cleanup(s.remote.Stop)
	return s
}

// Stop stops serving; the socket stays, so clients see a refused runtime.
func (s *Server) Stop() { s.remote.Stop() }

// AddPod makes the runtime list a ready pod sandbox.
func (s *Server) AddPod(p Pod) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pods = append(s.pods, &apitest.FakePodSandbox{PodSandboxStatus: runtimeapi.PodSandboxStatus{
		Id:       p.SandboxID,
		Metadata: &runtimeapi.PodSandboxMetadata{Name: p.Name, Namespace: p.Namespace, Uid: p.UID},
		State:    runtimeapi.PodSandboxState_SANDBOX_READY,
		Labels: map[string]string{
			"io.kubernetes.pod.name": p.Name, "io.kubernetes.pod.namespace": p.Namespace, "io.kubernetes.pod.uid": p.UID,
		},
	}})
	s.remote.RuntimeService.SetFakeSandboxes(s.pods)
}

// AddContainer makes the runtime list a running container of a pod.
func (s *Server) AddContainer(c Container) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ctrs = append(s.ctrs, &apitest.FakeContainer{
		SandboxID: c.Pod.SandboxID,
		ContainerStatus: runtimeapi.ContainerStatus{
			Id:       c.ID,
			Metadata: &runtimeapi.ContainerMetadata{Name: c.Name},
			State:    runtimeapi.ContainerState_CONTAINER_RUNNING,
			Labels: map[string]string{
				"io.kubernetes.pod.name": c.Pod.Name, "io.kubernetes.pod.namespace": c.Pod.Namespace,
				"io.kubernetes.pod.uid": c.Pod.UID, "io.kubernetes.container.name": c.Name,
			},
		},
	})
	s.remote.RuntimeService.SetFakeContainers(s.ctrs)
}

// RemoveContainer makes the runtime stop listing a container.
func (s *Server) RemoveContainer(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, c := range s.ctrs {
		if c.Id == id {
			s.ctrs = append(s.ctrs[:i], s.ctrs[i+1:]...)
			break
		}
	}
	s.remote.RuntimeService.SetFakeContainers(s.ctrs)
}

// Listings returns how many times the runtime was asked for its containers.
func (s *Server) Listings() int {
	n := 0
	s.remote.RuntimeService.Lock()
	defer s.remote.RuntimeService.Unlock()
	for _, c := range s.remote.RuntimeService.Called {
		if c == "ListContainers" {
			n++
		}
	}
	return n
}

// HexID returns a 64-hex container id derived from n, as runtimes make them.
func HexID(n int) string { return fmt.Sprintf("%064x", 0xc0ffee0000+n) }

// UID returns a pod UID derived from n.
func UID(n int) string { return fmt.Sprintf("%08x-0000-4000-8000-%012x", n, n) }

// Hanging listens on a unix socket that accepts connections and never
// answers: the worst runtime for a caller that would wait on it. accepted
// receives (without blocking the listener) each time a client connects.
// Everything is closed when the test ends.
func Hanging(t testing.TB) (endpoint string, accepted <-chan struct{}) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hang.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan struct{}, 1)
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // held open, never answered
			mu.Unlock()
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "unix://" + path, ch
}
