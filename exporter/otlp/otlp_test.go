package otlp

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/pdata/pmetric/pmetricotlp"
	"go.opentelemetry.io/collector/pdata/pprofile"
	"go.opentelemetry.io/collector/pdata/pprofile/pprofileotlp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	_ "google.golang.org/grpc/encoding/gzip" // the server decodes gzip
	"google.golang.org/grpc/status"

	"github.com/cgscope/cgscope/exporter/queue"
	"github.com/cgscope/cgscope/internal/attribution"
	"github.com/cgscope/cgscope/internal/pipeline"
	"github.com/cgscope/cgscope/symbolizer"
)

// synthWindow makes a window of procs processes with stacks unique stacks
// in all, depth frames each, drawn from a pool of named functions in a few
// shared objects, as a busy host looks.
func synthWindow(procs, stacks, depth int, seed uint64) *pipeline.Window {
	r := rand.New(rand.NewPCG(seed, 1))
	objs := make([]*symbolizer.Mapping, 20)
	for i := range objs {
		objs[i] = &symbolizer.Mapping{Path: fmt.Sprintf("/usr/lib/obj%d.so", i), BuildID: fmt.Sprintf("%040x", i+1)}
	}
	const funcs = 4000
	frame := func(f int) symbolizer.Frame {
		return symbolizer.Frame{ObjAddress: uint64(0x1000 + 16*f), Function: fmt.Sprintf("pkg%d.Function%d", f%50, f),
			File: fmt.Sprintf("/src/pkg%d/file.go", f%50), Line: f % 300, Mapping: objs[f%len(objs)]}
	}
	now := time.Now()
	w := &pipeline.Window{Start: now.Add(-10 * time.Second), End: now, Period: time.Second / 19}
	for s := 0; s < stacks; s++ {
		pid := uint32(1000 + s%procs)
		fr := make([]symbolizer.Frame, depth)
		for d := range fr {
			fr[d] = frame(r.IntN(funcs))
		}
		w.Samples = append(w.Samples, pipeline.Sample{PID: pid, TID: pid, Comm: fmt.Sprintf("proc%d", pid),
			Cgroup: "/system.slice/docker-" + strings.Repeat("ab", 32) + ".scope", Frames: fr, Count: uint64(1 + r.IntN(5))})
	}
	return w
}

// Every field the request sets, read back by pdata, says what the windows
// say: one resource per process in pid order with its attributes, the
// scope, the profile's types, times and id, and each thread's samples of
// each stack, merged, with their frames (kernel frames, frames without a
// function or a mapping, build IDs of both kinds).
func TestConvertStructure(t *testing.T) {
	w := synthWindow(3, 30, 5, 1)
	w.Samples = append(w.Samples, w.Samples[0]) // the same stack twice: merged
	w.Samples[0].Frames = append(w.Samples[0].Frames, symbolizer.Frame{Address: 0xffffffff81000000, ObjAddress: 0xffffffff81000000, Function: "do_syscall_64", Kernel: true})
	w.Samples[len(w.Samples)-1].Frames = w.Samples[0].Frames
	windows := []*pipeline.Window{oddWindow(4), w}
	c := NewConverter("test")
	c.HostName = "host1"
	c.procRoot = t.TempDir()
	if err := os.MkdirAll(filepath.Join(c.procRoot, "1001"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/opt/app/server (deleted)", filepath.Join(c.procRoot, "1001", "exe")); err != nil {
		t.Fatal(err)
	}
	pd := convert(t, c, windows)
	checkDictionary(t, pd.Dictionary())
	if got, want := gotSamples(t, pd), wantSamples(windows); !maps.Equal(got, want) {
		t.Errorf("samples differ from the windows':\n got %v\nwant %v", got, want)
	}

	first := map[uint32]pipeline.Sample{} // each process's first sample
	var start, end time.Time
	for _, w := range windows {
		for _, s := range w.Samples {
			if _, ok := first[s.PID]; !ok {
				first[s.PID] = s
			}
		}
		if start.IsZero() || w.Start.Before(start) {
			start = w.Start
		}
		if w.End.After(end) {
			end = w.End
		}
	}
	if got := pd.ResourceProfiles().Len(); got != len(first) {
		t.Fatalf("%d resource profiles, want one per process (%d)", got, len(first))
	}
	d := pd.Dictionary()
	str := func(i int32) string { return d.StringTable().At(int(i)) }
	ids := map[pprofile.ProfileID]bool{}
	lastPID := int64(0)
	for i := 0; i < pd.ResourceProfiles().Len(); i++ {
		rp := pd.ResourceProfiles().At(i)
		attrs := rp.Resource().Attributes().AsRaw()
		pid, _ := attrs[attrPID].(int64)
		if pid <= lastPID {
			t.Errorf("process %d after %d: not in pid order", pid, lastPID)
		}
		lastPID = pid
		want := map[string]any{attrPID: pid, attrHostName: "host1", attrExeName: first[uint32(pid)].Comm,
			attrContainerID: strings.Repeat("ab", 32)}
		if pid == 1001 { // its first sample is in a pod; its executable was replaced
			want[attrExePath], want[attrExeName] = "/opt/app/server", "server"
			want[attrContainerID], want[attrPodUID], want[attrNamespace] = strings.Repeat("cd", 32), "01234567-89ab-cdef-0123-456789abcdef", "shop"
			want[attrPodName], want[attrContainerName] = "cart-7d9f", "app"
		}
		if fmt.Sprint(attrs) != fmt.Sprint(want) {
			t.Errorf("process %d: resource attributes %v, want %v", pid, attrs, want)
		}
		if rp.ScopeProfiles().Len() != 1 || rp.ScopeProfiles().At(0).Profiles().Len() != 1 {
			t.Fatalf("process %d: %d scopes, want one with one profile", pid, rp.ScopeProfiles().Len())
		}
		sp := rp.ScopeProfiles().At(0)
		if sp.Scope().Name() != scopeName || sp.Scope().Version() != "test" {
			t.Errorf("scope %q %q", sp.Scope().Name(), sp.Scope().Version())
		}
		prof := sp.Profiles().At(0)
		if st, pt := prof.SampleType(), prof.PeriodType(); str(st.TypeStrindex()) != "samples" || str(st.UnitStrindex()) != "count" ||
			str(pt.TypeStrindex()) != "cpu" || str(pt.UnitStrindex()) != "nanoseconds" {
			t.Errorf("sample type %s/%s, period type %s/%s", str(st.TypeStrindex()), str(st.UnitStrindex()), str(pt.TypeStrindex()), str(pt.UnitStrindex()))
		}
		if prof.Period() != int64(w.Period) || prof.Time().AsTime() != start.UTC() || prof.DurationNano() != uint64(end.Sub(start)) {
			t.Errorf("period %d, time %v, duration %d; want %d, %v, %d", prof.Period(), prof.Time(), prof.DurationNano(), w.Period, start, end.Sub(start))
		}
		if prof.ProfileID().IsEmpty() || ids[prof.ProfileID()] {
			t.Errorf("process %d: profile id %v empty or not unique", pid, prof.ProfileID())
		}
		ids[prof.ProfileID()] = true
	}
}

func TestBuildIDKinds(t *testing.T) {
	if k, _ := buildIDAttr(strings.Repeat("a1", 20)); k != attrBuildIDGNU {
		t.Errorf("GNU build id taken for %s", k)
	}
	goID := "abcdefghijklmnopqrst/abcdefghijklmnopqrst/abcdefghijklmnopqrst/abcdefghijklmnopqrst"
	if k, v := buildIDAttr(fmt.Sprintf("%x", goID)); k != attrBuildIDGo || v != goID {
		t.Errorf("Go build id: %s=%q", k, v)
	}
}

// receiver is the OpenTelemetry Collector's pdata gRPC servers for
// profiles and metrics on loopback.
type receiver struct {
	addr     string
	srv      *grpc.Server
	mu       sync.Mutex
	profiles []pprofile.Profiles
	metrics  []pmetric.Metrics
	reject   error // returned by every Export when set
	calls    atomic.Int32
}

type profilesServer struct {
	pprofileotlp.UnimplementedGRPCServer
	r *receiver
}

func (s profilesServer) Export(_ context.Context, req pprofileotlp.ExportRequest) (pprofileotlp.ExportResponse, error) {
	s.r.calls.Add(1)
	if s.r.reject != nil {
		return pprofileotlp.NewExportResponse(), s.r.reject
	}
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	s.r.profiles = append(s.r.profiles, req.Profiles())
	return pprofileotlp.NewExportResponse(), nil
}

type metricsServer struct {
	pmetricotlp.UnimplementedGRPCServer
	r *receiver
}

func (s metricsServer) Export(_ context.Context, req pmetricotlp.ExportRequest) (pmetricotlp.ExportResponse, error) {
	s.r.calls.Add(1)
	if s.r.reject != nil {
		return pmetricotlp.NewExportResponse(), s.r.reject
	}
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	s.r.metrics = append(s.r.metrics, req.Metrics())
	return pmetricotlp.NewExportResponse(), nil
}

func startReceiver(t testing.TB, reject error) *receiver {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &receiver{addr: l.Addr().String(), srv: grpc.NewServer(), reject: reject}
	pprofileotlp.RegisterGRPCServer(r.srv, &profilesServer{r: r})
	pmetricotlp.RegisterGRPCServer(r.srv, &metricsServer{r: r})
	go r.srv.Serve(l)
	t.Cleanup(r.srv.Stop)
	return r
}

// feed is a stand-in for the pipeline's Subscribe.
type feed struct {
	mu sync.Mutex
	fn func(*pipeline.Window)
}

func (f *feed) subscribe(fn func(*pipeline.Window)) func() {
	f.mu.Lock()
	f.fn = fn
	f.mu.Unlock()
	return func() {}
}

func (f *feed) send(w *pipeline.Window) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fn(w)
}

func testConfig(addr string) Config {
	return Config{Endpoint: addr, Insecure: true, Profiles: true, Metrics: true,
		Interval: time.Second, QueueSize: 4, Timeout: 5 * time.Second}
}

// Profiles, CPU and off-CPU, and metrics reach the collector's receiver
// code and decode to what was sent.
func TestExportToReceiver(t *testing.T) {
	r := startReceiver(t, nil)
	reg := prometheus.NewRegistry()
	labels := []string{"cgroup", "container_id", "pod_uid", "namespace", "pod", "container"}
	cpu := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cgscope_cgroup_cpu_seconds_total", Help: "cpu"}, labels)
	cpu.WithLabelValues("/docker/abc", "abc", "", "", "", "").Add(1.5)
	cpu.WithLabelValues("/kubepods/pod1/def", "def", "uid-1", "shop", "cart-7d9", "app").Add(2)
	runq := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "cgscope_cgroup_cpu_runqueue_latency_seconds", Help: "runq",
		Buckets: []float64{0.001, 0.002, 0.004}}, labels)
	for _, v := range []float64{0.0005, 0.0015, 0.0015, 0.003, 0.5} {
		runq.WithLabelValues("/docker/abc", "abc", "", "", "", "").Observe(v)
	}
	reg.MustRegister(cpu, runq)
	f := &feed{}
	e, err := New(testConfig(r.addr), Sources{Subscribe: f.subscribe, Gatherer: reg}, queue.NewMetrics(nil), "test")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.Start(ctx)
	sent := addOffCPU(synthWindow(2, 10, 4, 2), 12, 2) // 2 processes, and 2 more with off-CPU samples only
	f.send(sent)
	waitFor(t, func() bool { r.mu.Lock(); defer r.mu.Unlock(); return len(r.profiles) > 0 && len(r.metrics) > 0 })
	cancel()
	e.Stop(time.Second)

	r.mu.Lock()
	defer r.mu.Unlock()
	pd := r.profiles[0]
	if pd.SampleCount() == 0 || pd.ResourceProfiles().Len() != 4 {
		t.Errorf("received %d samples in %d resources, want 4", pd.SampleCount(), pd.ResourceProfiles().Len())
	}
	if got, want := gotByType(t, pd), wantByType([]*pipeline.Window{sent}); !equalByType(got, want) || len(want[offCPUType]) == 0 {
		t.Errorf("received samples differ from the window's:\n got %v\nwant %v", got, want)
	}
	found := false
	strs := pd.Dictionary().StringTable()
	for i := 0; i < strs.Len(); i++ {
		found = found || strings.HasPrefix(strs.At(i), "pkg")
	}
	if !found {
		t.Error("no function names in the received dictionary")
	}
	m := findMetric(r.metrics[0], "container.cpu.time")
	if m == nil {
		t.Fatal("no container.cpu.time")
	}
	if m.Unit() != "s" || !m.Sum().IsMonotonic() || m.Sum().AggregationTemporality() != pmetric.AggregationTemporalityCumulative {
		t.Errorf("container.cpu.time: unit %q monotonic %v temporality %v", m.Unit(), m.Sum().IsMonotonic(), m.Sum().AggregationTemporality())
	}
	for i := 0; i < m.Sum().DataPoints().Len(); i++ {
		dp := m.Sum().DataPoints().At(i)
		got := dp.Attributes().AsRaw()
		switch got["container.id"] {
		case "abc":
			if dp.DoubleValue() != 1.5 || len(got) != 2 { // cgroup path, container.id: empty labels left out
				t.Errorf("container abc: %v %v", dp.DoubleValue(), got)
			}
		case "def":
			want := map[string]any{"cgscope.cgroup.path": "/kubepods/pod1/def", "container.id": "def", "k8s.pod.uid": "uid-1",
				"k8s.namespace.name": "shop", "k8s.pod.name": "cart-7d9", "k8s.container.name": "app"}
			if dp.DoubleValue() != 2 || fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("container def: %v %v, want %v", dp.DoubleValue(), got, want)
			}
		default:
			t.Errorf("unexpected data point %v", got)
		}
	}
	checkRunqueueHistogram(t, r.metrics[0])
}

// The run-queue latency histogram arrives as a cumulative explicit-bucket
// histogram with per-bucket counts.
func checkRunqueueHistogram(t *testing.T, md pmetric.Metrics) {
	t.Helper()
	m := findMetric(md, "cgscope.cgroup.schedule.duration")
	if m == nil {
		t.Fatal("no cgscope.cgroup.schedule.duration")
	}
	if m.Type() != pmetric.MetricTypeHistogram || m.Unit() != "s" || m.Histogram().AggregationTemporality() != pmetric.AggregationTemporalityCumulative {
		t.Fatalf("%s: type %v unit %q", m.Name(), m.Type(), m.Unit())
	}
	dp := m.Histogram().DataPoints().At(0)
	if v, _ := dp.Attributes().Get("container.id"); v.Str() != "abc" {
		t.Errorf("container.id %q", v.Str())
	}
	if got := dp.ExplicitBounds().AsRaw(); fmt.Sprint(got) != "[0.001 0.002 0.004]" {
		t.Errorf("bounds %v", got)
	}
	if got := dp.BucketCounts().AsRaw(); fmt.Sprint(got) != "[1 2 1 1]" {
		t.Errorf("bucket counts %v, want [1 2 1 1]", got)
	}
	if dp.Count() != 5 || dp.Sum() < 0.5064 || dp.Sum() > 0.5066 || dp.StartTimestamp() == 0 || dp.StartTimestamp() >= dp.Timestamp() {
		t.Errorf("count %d sum %v start %v time %v", dp.Count(), dp.Sum(), dp.StartTimestamp(), dp.Timestamp())
	}
}

func findMetric(md pmetric.Metrics, name string) *pmetric.Metric {
	for i := 0; i < md.ResourceMetrics().Len(); i++ {
		sms := md.ResourceMetrics().At(i).ScopeMetrics()
		for j := 0; j < sms.Len(); j++ {
			ms := sms.At(j).Metrics()
			for k := 0; k < ms.Len(); k++ {
				if m := ms.At(k); m.Name() == name {
					return &m
				}
			}
		}
	}
	return nil
}

// A receiver that answers InvalidArgument gets each batch once.
func TestPermanentRejectionNotRetried(t *testing.T) {
	r := startReceiver(t, status.Error(codes.InvalidArgument, "bad profile"))
	f := &feed{}
	cfg := testConfig(r.addr)
	cfg.Metrics = false
	e, err := New(cfg, Sources{Subscribe: f.subscribe}, queue.NewMetrics(nil), "test")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.Start(ctx)
	f.send(synthWindow(1, 5, 3, 3))
	waitFor(t, func() bool { return r.calls.Load() >= 1 })
	time.Sleep(3 * time.Second) // several backoff periods
	cancel()
	e.Stop(time.Second)
	if n := r.calls.Load(); n != 1 {
		t.Errorf("%d attempts at one rejected batch, want 1", n)
	}
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 15 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A process in a named Kubernetes container carries the workload's ids and
// names as resource attributes, the same values /metrics and pprof labels
// carry; one outside any container carries none of them.
func TestConvertKubernetesAttributes(t *testing.T) {
	w := synthWindow(2, 10, 3, 7)
	pod := &attribution.Workload{ContainerID: strings.Repeat("cd", 32), PodUID: "01234567-89ab-cdef-0123-456789abcdef",
		Namespace: "shop", Pod: "cart-7d9f", Container: "app"}
	for i := range w.Samples {
		if w.Samples[i].PID == 1000 {
			w.Samples[i].Cgroup = "/kubepods/burstable/pod" + pod.PodUID + "/" + pod.ContainerID
			w.Samples[i].Workload = pod
		} else {
			w.Samples[i].Cgroup = "/system.slice/cron.service"
		}
	}
	pd := convert(t, NewConverter("test"), []*pipeline.Window{w})
	want := map[string]string{attrContainerID: pod.ContainerID, attrPodUID: pod.PodUID,
		attrNamespace: "shop", attrPodName: "cart-7d9f", attrContainerName: "app"}
	for i := 0; i < pd.ResourceProfiles().Len(); i++ {
		attrs := pd.ResourceProfiles().At(i).Resource().Attributes()
		pid, _ := attrs.Get(attrPID)
		for k, v := range want {
			got, ok := attrs.Get(k)
			switch {
			case pid.Int() == 1000 && got.Str() != v:
				t.Errorf("pid 1000: %s = %q, want %q", k, got.Str(), v)
			case pid.Int() != 1000 && ok:
				t.Errorf("pid %d outside containers has %s = %q", pid.Int(), k, got.Str())
			}
		}
	}
}

// In a pod the hostname is the pod's name: the node's name comes from
// NODE_NAME, which the Helm chart sets from the downward API.
func TestHostNameFromNodeName(t *testing.T) {
	t.Setenv("NODE_NAME", "node-a7")
	if got := NewConverter("test").HostName; got != "node-a7" {
		t.Errorf("host.name = %q with NODE_NAME=node-a7", got)
	}
	t.Setenv("NODE_NAME", "")
	if h, _ := os.Hostname(); HostName() != h {
		t.Errorf("without NODE_NAME host.name = %q, want the hostname %q", HostName(), h)
	}
}
