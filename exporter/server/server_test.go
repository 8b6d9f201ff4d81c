package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/pprof/profile"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cgscope/cgscope/exporter/history"
	"github.com/cgscope/cgscope/exporter/pprof"
	"github.com/cgscope/cgscope/exporter/ui"
	"github.com/cgscope/cgscope/internal/pipeline"
	"github.com/cgscope/cgscope/internal/store"
	"github.com/cgscope/cgscope/symbolizer"
)

// A window where one thread ran in compute and two waited: one in
// read_disk (io_wait), one in wait_lock (sleeping, twice).
var (
	testStart = time.Now().Add(-2 * time.Minute).Truncate(time.Second)
	bin       = &symbolizer.Mapping{Path: "/usr/bin/app", BuildID: "feed"}
)

func frames(fns ...string) []symbolizer.Frame {
	fs := make([]symbolizer.Frame, len(fns))
	for i, fn := range fns {
		fs[i] = symbolizer.Frame{ObjAddress: uint64(0x1000 * (i + 1)), Function: fn, Mapping: bin}
	}
	return fs
}

func testWindow() *pipeline.Window {
	waiter := func(pid uint32, fn, reason string, n uint64, away time.Duration) pipeline.Sample {
		return pipeline.Sample{PID: pid, TID: pid, Comm: "app", Cgroup: "/app.slice", Frames: frames(fn, "main"),
			Count: n, OffCPU: away, Reason: reason}
	}
	return &pipeline.Window{Start: testStart, End: testStart.Add(10 * time.Second), Period: 10 * time.Millisecond,
		Samples: []pipeline.Sample{{PID: 7, TID: 7, Comm: "app", Cgroup: "/app.slice", Frames: frames("compute", "main"), Count: 9}},
		OffCPU: []pipeline.Sample{
			waiter(7, "read_disk", "io_wait", 4, 3*time.Second),
			waiter(8, "wait_lock", "sleeping", 2, 500*time.Millisecond),
		},
	}
}

// fakeCapturer hands out testWindow and counts the captures.
type fakeCapturer struct{ calls atomic.Int32 }

func (c *fakeCapturer) Capture(context.Context, time.Duration) ([]*pipeline.Window, error) {
	c.calls.Add(1)
	return []*pipeline.Window{testWindow()}, nil
}

// newTestServer serves testWindow live and from a history that stored it.
func newTestServer(t *testing.T) (http.Handler, *fakeCapturer) {
	t.Helper()
	h := history.New(history.Options{Store: store.NewMemory(16 << 20)})
	h.Start()
	h.Offer(testWindow())
	h.Stop()
	c := &fakeCapturer{}
	handler, err := New(Options{Capturer: c, Gatherer: prometheus.NewRegistry(), DefaultCaptureSeconds: 1,
		MaxCaptureSeconds: 10, History: h})
	if err != nil {
		t.Fatal(err)
	}
	return handler, c
}

// get has srv answer a GET of target (a path and query).
func get(srv http.Handler, target string) (*http.Response, []byte) {
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
	return rec.Result(), rec.Body.Bytes()
}

// offCPUTotals parses a gzip pprof answer and sums it by leaf function:
// "function reason count nanos".
func offCPUTotals(t *testing.T, body []byte) (*profile.Profile, map[string]string) {
	t.Helper()
	p, err := profile.ParseData(body)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, s := range p.Sample {
		fn := s.Location[0].Line[0].Function.Name
		got[fn] = fmt.Sprintf("%s %d %d", strings.Join(s.Label[pprof.ReasonLabel], ","), s.Value[0], s.Value[1])
	}
	return p, got
}

var wantOffCPU = map[string]string{"read_disk": "io_wait 4 3000000000", "wait_lock": "sleeping 2 500000000"}

func checkOffCPUAnswer(t *testing.T, resp *http.Response, body []byte, filePrefix string) {
	t.Helper()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %s: %s", resp.Status, body)
	}
	if cd := resp.Header.Get("Content-Disposition"); !strings.Contains(cd, `filename="`+filePrefix) {
		t.Errorf("Content-Disposition %q, want a file named %s...", cd, filePrefix)
	}
	p, got := offCPUTotals(t, body)
	if p.DefaultSampleType != "off_cpu" || p.SampleType[1].Type != "off_cpu" || p.SampleType[1].Unit != "nanoseconds" {
		t.Errorf("sample types %s/%s, default %q", p.SampleType[1].Type, p.SampleType[1].Unit, p.DefaultSampleType)
	}
	if fmt.Sprint(got) != fmt.Sprint(wantOffCPU) {
		t.Errorf("off-CPU samples %v, want %v", got, wantOffCPU)
	}
}

func TestCaptureOffCPU(t *testing.T) {
	srv, _ := newTestServer(t)
	resp, body := get(srv, "/debug/pprof/profile?type=off_cpu&seconds=1")
	checkOffCPUAnswer(t, resp, body, "off_cpu.pb.gz")

	// Without type=, the CPU profile it always was.
	resp, body = get(srv, "/debug/pprof/profile?seconds=1")
	p, got := offCPUTotals(t, body)
	if resp.Header.Get("Content-Disposition") != `attachment; filename="cpu.pb.gz"` || p.DefaultSampleType != "cpu" ||
		fmt.Sprint(got) != "map[compute: 9 90000000]" {
		t.Errorf("default capture: %q, type %q, samples %v", resp.Header.Get("Content-Disposition"), p.DefaultSampleType, got)
	}
}

func TestHistoryProfileOffCPU(t *testing.T) {
	srv, _ := newTestServer(t)
	rng := fmt.Sprintf("from=%d&to=%d", testStart.Unix(), testStart.Add(time.Minute).Unix())
	resp, body := get(srv, "/api/v1/profile?type=off_cpu&"+rng)
	checkOffCPUAnswer(t, resp, body, "off_cpu-")

	resp, body = get(srv, "/api/v1/targets?type=off_cpu&"+rng)
	var tg history.Targets
	if err := json.Unmarshal(body, &tg); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	if resp.StatusCode != http.StatusOK || tg.Type != "off_cpu" || tg.TotalSamples != 6 || tg.TotalOffCPU != 3.5 ||
		len(tg.Processes) != 2 || tg.Processes[0].PID != 7 || tg.Processes[0].OffCPU != 3 {
		t.Errorf("targets %s", body)
	}
}

// A bad type is a 400 that says which types there are, from every
// endpoint, and nothing is captured.
func TestBadTypeIs400(t *testing.T) {
	srv, c := newTestServer(t)
	for _, path := range []string{"/debug/pprof/profile?seconds=1&type=bogus", "/api/v1/profile?type=bogus",
		"/api/v1/targets?type=bogus", "/ui/pprof/" + ui.EncodeSpec("type=bogus") + "/top"} {
		resp, body := get(srv, path)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), `type="bogus": want one of cpu, off_cpu`) {
			t.Errorf("%s: %s %q", path, resp.Status, body)
		}
	}
	if resp, body := get(srv, "/?type=bogus"); resp.StatusCode != http.StatusBadRequest ||
		!strings.Contains(string(body), `unknown profile type "bogus": want one of cpu, off_cpu`) {
		t.Errorf("/?type=bogus: %s %q", resp.Status, body)
	}
	if n := c.calls.Load(); n != 0 {
		t.Errorf("%d captures for bad requests", n)
	}
}

// The web UI's switch shows the type of the page's URL, and pprof's views
// of an off-CPU query show the off-CPU stacks and time, not the CPU's.
func TestUIOffCPU(t *testing.T) {
	srv, _ := newTestServer(t)
	resp, body := get(srv, "/?type=off_cpu")
	page := string(body)
	for _, want := range []string{`data-type="off_cpu" title="where threads waited off the CPU (preempted, sleeping, in I/O)" class="on"`,
		`<th>off-CPU s</th>`, `data-seconds-field="off_cpu_seconds"`, `href="/?type=cpu"`} {
		if resp.StatusCode != http.StatusOK || !strings.Contains(page, want) {
			t.Errorf("/?type=off_cpu: %s, no %s in the page", resp.Status, want)
		}
	}
	if _, body := get(srv, "/"); !strings.Contains(string(body), `data-type="cpu" title="where threads ran on a CPU" class="on"`) {
		t.Error("/ does not show the CPU profile")
	}
	spec := ui.EncodeSpec(fmt.Sprintf("type=off_cpu&from=%d&to=%d", testStart.Unix(), testStart.Add(time.Minute).Unix()))
	resp, body = get(srv, "/ui/pprof/"+spec+"/top")
	top := string(body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(top, "read_disk") || strings.Contains(top, "compute") ||
		!strings.Contains(top, "off_cpu") {
		t.Errorf("off-CPU top view: %s\n%.2000s", resp.Status, top)
	}
}
