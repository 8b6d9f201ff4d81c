package otlp

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/collector/pdata/pprofile"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cgscope/cgscope/exporter/queue"
	"github.com/cgscope/cgscope/internal/pipeline"
	"github.com/cgscope/cgscope/symbolizer"
)

// requests runs Requests and decodes what it pushed.
func requests(t *testing.T, c *Converter, windows []*pipeline.Window, limit int) ([]pprofile.Profiles, error) {
	t.Helper()
	var out []pprofile.Profiles
	err := c.Requests(windows, limit, func(body []byte) {
		if len(body) > limit {
			t.Errorf("request of %d bytes, over the limit of %d", len(body), limit)
		}
		out = append(out, decode(t, body))
	})
	return out, err
}

// sumSamples adds up the CPU samples of several requests.
func sumSamples(t *testing.T, requests []pprofile.Profiles) map[sampleKey]int64 {
	return sumByType(t, requests)[cpuType]
}

// sumByType adds up the samples of several requests, by profile type.
func sumByType(t *testing.T, requests []pprofile.Profiles) byType {
	sum := byType{}
	for _, pd := range requests {
		checkDictionary(t, pd.Dictionary())
		for typ, samples := range gotByType(t, pd) {
			for k, v := range samples {
				sum.add(typ, k, v)
			}
		}
	}
	return sum
}

// An interval larger than the limit arrives as several requests under it,
// which together carry every sample, CPU and off-CPU. With many processes
// each process is in one request, all its profiles with it; one process
// alone larger than the limit is split too.
func TestRequestsSplit(t *testing.T) {
	for _, tc := range []struct {
		name      string
		windows   []*pipeline.Window
		wholeProc bool
	}{
		{"processes", []*pipeline.Window{synthWindow(40, 2000, 16, 3), synthWindow(40, 1000, 12, 4)}, true},
		{"one process", []*pipeline.Window{synthWindow(1, 3000, 16, 5)}, false},
		{"processes off-CPU", []*pipeline.Window{addOffCPU(synthWindow(40, 1000, 16, 13), 2000, 13), synthWindow(40, 500, 12, 14)}, true},
		{"one process off-CPU", []*pipeline.Window{addOffCPU(synthWindow(1, 1500, 16, 15), 3000, 15)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			whole, err := NewConverter("test").Encode(tc.windows)
			if err != nil {
				t.Fatal(err)
			}
			limit := len(whole) / 4
			got, err := requests(t, NewConverter("test"), tc.windows, limit)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) < 4 {
				t.Errorf("%d requests for %d bytes under a limit of %d", len(got), len(whole), limit)
			}
			sum, want := sumByType(t, got), wantByType(tc.windows)
			for _, typ := range []string{cpuType, offCPUType, switchesType} {
				if !maps.Equal(sum[typ], want[typ]) {
					t.Errorf("%s: the requests carry %d samples, the windows %d, or values differ", typ, len(sum[typ]), len(want[typ]))
				}
			}
			if len(sum) != len(want) {
				t.Errorf("the requests carry profiles of %d types, the windows %d", len(sum), len(want))
			}
			if !tc.wholeProc {
				return
			}
			inRequest := map[int64]int{} // pid → requests it is in
			for _, pd := range got {
				for i := range pd.ResourceProfiles().Len() {
					pid, _ := pd.ResourceProfiles().At(i).Resource().Attributes().Get(attrPID)
					inRequest[pid.Int()]++
				}
			}
			for pid, n := range inRequest {
				if n != 1 {
					t.Errorf("pid %d in %d requests", pid, n)
				}
			}
		})
	}
}

// Under the limit nothing changes: one request, the bytes Encode makes.
func TestRequestsUnderLimit(t *testing.T) {
	windows := []*pipeline.Window{synthWindow(5, 100, 8, 6)}
	whole, err := NewConverter("test").Encode(windows)
	if err != nil {
		t.Fatal(err)
	}
	got, err := requests(t, NewConverter("test"), windows, len(whole))
	if err != nil || len(got) != 1 {
		t.Fatalf("%d requests, %v", len(got), err)
	}
	if !maps.Equal(gotSamples(t, got[0]), wantSamples(windows)) {
		t.Error("samples differ")
	}
}

// A sample that alone exceeds the limit is left out and said to be; the
// others are sent.
func TestRequestsSampleOverLimit(t *testing.T) {
	w := synthWindow(3, 30, 4, 7)
	huge := make([]symbolizer.Frame, 1500)
	for i := range huge {
		huge[i] = symbolizer.Frame{ObjAddress: uint64(0x9000 + i), Function: fmt.Sprintf("huge.Function%04d%s", i, strings.Repeat("x", 40)),
			Mapping: &symbolizer.Mapping{Path: "/huge"}}
	}
	w.Samples = append(w.Samples, pipeline.Sample{PID: 99, TID: 99, Comm: "huge", Frames: huge, Count: 1})
	got, err := requests(t, NewConverter("test"), []*pipeline.Window{w}, 32<<10)
	if err == nil || !strings.Contains(err.Error(), "1 (thread, stack) sample rows left out") {
		t.Errorf("error %v, want 1 sample left out", err)
	}
	want := wantSamples([]*pipeline.Window{{Samples: w.Samples[:len(w.Samples)-1]}})
	if sum := sumSamples(t, got); !maps.Equal(sum, want) {
		t.Errorf("sent %d samples, want the %d others", len(sum), len(want))
	}
}

// A split interval keeps the executable paths of every process it sent:
// they are read once and kept while the process has samples, whichever
// request it was in.
func TestRequestsKeepExecutables(t *testing.T) {
	c := NewConverter("test")
	c.procRoot = t.TempDir()
	windows := []*pipeline.Window{synthWindow(20, 400, 8, 8)}
	for pid := 1000; pid < 1020; pid++ {
		dir := filepath.Join(c.procRoot, fmt.Sprint(pid))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(fmt.Sprintf("/bin/app%d", pid), filepath.Join(dir, "exe")); err != nil {
			t.Fatal(err)
		}
	}
	whole, err := NewConverter("test").Encode(windows)
	if err != nil {
		t.Fatal(err)
	}
	got, err := requests(t, c, windows, len(whole)/3)
	if err != nil || len(got) < 3 {
		t.Fatalf("%d requests, %v", len(got), err)
	}
	if len(c.exes) != 20 {
		t.Errorf("%d executables kept after a split interval, want 20", len(c.exes))
	}
	for _, pd := range got {
		for i := range pd.ResourceProfiles().Len() {
			attrs := pd.ResourceProfiles().At(i).Resource().Attributes()
			pid, _ := attrs.Get(attrPID)
			exe, _ := attrs.Get(attrExePath)
			if want := fmt.Sprintf("/bin/app%d", pid.Int()); exe.Str() != want {
				t.Errorf("pid %d: %s %q, want %q", pid.Int(), attrExePath, exe.Str(), want)
			}
		}
	}
}

// A real gRPC server refuses messages over 4 MiB, its default: an interval
// larger than that is refused for good (dropped and counted, not retried)
// when sent whole, and arrives complete in several requests at the default
// limit.
func TestOversizedIntervalToReceiver(t *testing.T) {
	w := synthWindow(300, 64000, 24, 9)
	if whole, _ := NewConverter("test").Encode([]*pipeline.Window{w}); len(whole) <= 4<<20 {
		t.Fatalf("the test interval is %d bytes: not over the receiver's 4 MiB", len(whole))
	}
	for _, tc := range []struct {
		name  string
		limit int
	}{{"whole", maxRequestBytes}, {"default limit", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			r := startReceiver(t, nil)
			f := &feed{}
			cfg := testConfig(r.addr)
			cfg.Metrics, cfg.MaxRequestSize = false, tc.limit
			reg := prometheus.NewRegistry()
			m := queue.NewMetrics(reg)
			e, err := New(cfg, Sources{Subscribe: f.subscribe}, m, "test")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			e.Start(ctx)
			f.send(w)
			counter := func(name string) float64 { return counterValue(t, reg, name, SignalProfiles) }
			waitFor(t, func() bool {
				return counter("cgscope_exporter_sent_total")+counter("cgscope_exporter_dropped_total") >= 1
			})
			time.Sleep(2 * time.Second) // any retry or further request
			cancel()
			e.Stop(5 * time.Second)
			r.mu.Lock()
			defer r.mu.Unlock()
			sent, dropped := counter("cgscope_exporter_sent_total"), counter("cgscope_exporter_dropped_total")
			if tc.limit == maxRequestBytes {
				if dropped != 1 || sent != 0 || len(r.profiles) != 0 {
					t.Errorf("whole: %v sent, %v dropped, %d received; want the one request refused and dropped", sent, dropped, len(r.profiles))
				}
				return
			}
			if dropped != 0 || sent != 1 || len(r.profiles) < 2 {
				t.Errorf("split: %v batches sent, %v dropped, %d requests received; want one batch of several", sent, dropped, len(r.profiles))
			}
			if sum, want := sumSamples(t, r.profiles), wantSamples([]*pipeline.Window{w}); !maps.Equal(sum, want) {
				t.Errorf("received %d (thread, stack) samples, sent %d, or counts differ", len(sum), len(want))
			}
		})
	}
}

// counterValue reads a queue counter of one signal from reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name, signal string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range families {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "signal" && l.GetValue() == signal {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// More windows than an interval holds (a long --otlp.interval over a short
// --profiling.interval) are sent early, none left out.
func TestPendingWindowsSentEarly(t *testing.T) {
	r := startReceiver(t, nil)
	f := &feed{}
	cfg := testConfig(r.addr)
	cfg.Metrics, cfg.Interval, cfg.QueueSize = false, time.Hour, 16
	e, err := New(cfg, Sources{Subscribe: f.subscribe}, queue.NewMetrics(nil), "test")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.Start(ctx)
	var windows []*pipeline.Window
	received := func() int { r.mu.Lock(); defer r.mu.Unlock(); return len(r.profiles) }
	for round, n := range []int{maxPendingWindows, maxPendingWindows, 10} {
		for i := range n {
			w := synthWindow(3, 2, 3, uint64(100*round+i))
			windows = append(windows, w)
			f.send(w)
		}
		if n == maxPendingWindows {
			waitFor(t, func() bool { return received() == round+1 }) // long before the hour
		}
	}
	cancel()
	e.Stop(5 * time.Second) // sends the last 10
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.profiles) != 3 {
		t.Errorf("%d requests, want 3: two sent early, one at the end", len(r.profiles))
	}
	if sum, want := sumSamples(t, r.profiles), wantSamples(windows); !maps.Equal(sum, want) {
		t.Errorf("received %d (thread, stack) samples, sent %d, or counts differ", len(sum), len(want))
	}
}

// When the exporter falls behind, the windows held stay bounded: beyond
// twice maxPendingWindows the oldest are left out, and that is counted as a
// dropped batch; the newest are sent.
func TestPendingWindowsBounded(t *testing.T) {
	r := startReceiver(t, nil)
	f := &feed{}
	cfg := testConfig(r.addr)
	cfg.Metrics, cfg.Interval = false, time.Hour
	reg := prometheus.NewRegistry()
	e, err := New(cfg, Sources{Subscribe: f.subscribe}, queue.NewMetrics(reg), "test")
	if err != nil {
		t.Fatal(err)
	}
	// Not started: nothing converts until Stop.
	var windows []*pipeline.Window
	for i := range 2*maxPendingWindows + 5 {
		w := synthWindow(3, 2, 3, uint64(i))
		windows = append(windows, w)
		f.send(w)
	}
	if n := len(e.profiles.pending); n != 2*maxPendingWindows {
		t.Errorf("%d windows held, want %d", n, 2*maxPendingWindows)
	}
	e.Stop(5 * time.Second)
	r.mu.Lock()
	defer r.mu.Unlock()
	if dropped := counterValue(t, reg, "cgscope_exporter_dropped_total", SignalProfiles); dropped != 1 {
		t.Errorf("%v dropped, want 1 for the windows left out", dropped)
	}
	if sum, want := sumSamples(t, r.profiles), wantSamples(windows[5:]); !maps.Equal(sum, want) {
		t.Errorf("received %d (thread, stack) samples, want the %d of the newest windows", len(sum), len(want))
	}
}

// A split interval notes each process once, however many samples it has
// (noting every sample made a one-process interval quadratic).
func TestSplitterNotesEachProcessOnce(t *testing.T) {
	var s splitter
	s.notePIDs([]*pipeline.Window{synthWindow(1, 2000, 4, 1), synthWindow(7, 500, 4, 2)})
	if s.seen.n != 7 { // pid 1000 in both, 1001..1006
		t.Errorf("%d entries for 7 processes", s.seen.n)
	}
}

// A server's refusal of a message's size is permanent, whichever gRPC
// wrote it; other RESOURCE_EXHAUSTEDs (overload) are retried, as are the
// codes the OTLP specification calls retryable.
func TestClassifyGRPCSizeRefusal(t *testing.T) {
	for _, c := range []struct {
		err       error
		permanent bool
	}{
		{status.Error(codes.ResourceExhausted, "grpc: received message after decompression larger than max 4194304"), true},
		{status.Error(codes.ResourceExhausted, "grpc: received message larger than max (5000000 vs. 4194304)"), true},
		{status.Error(codes.ResourceExhausted, "gRPC message exceeds maximum size 4194304: 5000000"), true},
		{status.Error(codes.ResourceExhausted, "memory limiter: data refused due to high memory usage"), false},
		{status.Error(codes.Unavailable, "connection refused"), false},
		{status.Error(codes.InvalidArgument, "bad profile"), true},
	} {
		if got := queue.IsPermanent(classifyGRPC(c.err)); got != c.permanent {
			t.Errorf("%v: permanent %v, want %v", c.err, got, c.permanent)
		}
	}
}
