package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/pprof/profile"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/pdata/pmetric/pmetricotlp"
	"go.opentelemetry.io/collector/pdata/pprofile"
	"go.opentelemetry.io/collector/pdata/pprofile/pprofileotlp"
	"google.golang.org/grpc"
	_ "google.golang.org/grpc/encoding/gzip" // cgscope sends gzip
	"google.golang.org/grpc/metadata"
)

// --- a workload that burns CPU and sends bytes, from this test binary ---

// runPushWorkload is the workload the push tests run (this test binary
// re-executed; TestMain dispatches here when CGSCOPE_PUSH_HELPER_SINK is
// set), so that one process of a known cgroup both burns CPU and moves
// bytes over TCP. It waits for a line on stdin (sent once it is in its
// cgroup) before starting.
func runPushWorkload(sink string) int {
	d, _ := time.ParseDuration(os.Getenv("CGSCOPE_PUSH_HELPER_DURATION"))
	bufio.NewReader(os.Stdin).ReadString('\n')
	conn, err := net.Dial("tcp", sink)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer conn.Close()
	chunk := make([]byte, 64<<10)
	var x uint64
	for deadline := time.Now().Add(d); time.Now().Before(deadline); {
		for i := 0; i < 2_000_000; i++ {
			x = x*6364136223846793005 + uint64(i)
		}
		conn.Write(chunk)
	}
	fmt.Fprintln(io.Discard, x)
	return 0
}

// startNetWorkload runs the helper for d in the cgroup abs and returns it
// started; the bytes it sends go to a discarding listener.
func startNetWorkload(t *testing.T, abs string, d time.Duration) *exec.Cmd {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "CGSCOPE_PUSH_HELPER_SINK="+l.Addr().String(), "CGSCOPE_PUSH_HELPER_DURATION="+d.String())
	startHeld(t, cmd, func(pid int) { joinCgroup(t, abs, pid) })
	return cmd
}

// --- Prometheus remote write ---

// startPrometheus runs Debian's prometheus on a free loopback port with
// the remote-write receiver on and a temporary data directory, and stops
// it and removes the directory afterwards.
func startPrometheus(t *testing.T) string {
	t.Helper()
	return startPrometheusWithConfig(t, "global:\n  scrape_interval: 1m\n")
}

// startPrometheusWithConfig is startPrometheus with the given prometheus.yml.
func startPrometheusWithConfig(t *testing.T, promConfig string) string {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("prometheus not installed (scripts/install-deps.sh test installs it)")
		}
		t.Skip("SKIPPING: prometheus not installed; run scripts/install-deps.sh test")
	}
	dir, err := os.MkdirTemp("", "cgscope-prom-")
	if err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(dir, "prometheus.yml")
	os.WriteFile(config, []byte(promConfig), 0o644)
	addr := freeAddr(t)
	var log lockedWriter
	log.w = &strings.Builder{}
	cmd := exec.Command(bin, "--config.file="+config, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--web.enable-remote-write-receiver")
	cmd.Stderr = &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		os.RemoveAll(dir)
	})
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := httpClient.Get("http://" + addr + "/-/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return addr
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("prometheus did not become ready:\n%s", log.w)
	return ""
}

// httpClient bounds every request to a backend the test runs.
var httpClient = &http.Client{Timeout: 5 * time.Second}

// promQuery returns the value of an instant query's single result.
func promQuery(t *testing.T, addr, query string) (float64, bool) {
	t.Helper()
	body, status := httpGet(t, "http://"+addr+"/api/v1/query?query="+url.QueryEscape(query))
	if status != 200 {
		t.Fatalf("query %s: %d %s", query, status, body)
	}
	var r struct {
		Data struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Data.Result) != 1 {
		return 0, false
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	v, err := strconv.ParseFloat(s, 64)
	return v, err == nil
}

// cgscope pushes the /metrics series to a real Prometheus: a workload's
// CPU seconds and network bytes arrive and match /metrics within 10%.
func TestRemoteWriteToPrometheus(t *testing.T) {
	prom := startPrometheus(t)
	d := startCgscope(t, t.Cleanup, "--remote-write.url=http://"+prom+"/api/v1/write", "--remote-write.interval=1s")
	rel, abs := cgroup2(t)
	w := startNetWorkload(t, abs, 2*time.Second)
	w.Wait()

	for _, name := range []string{"cgscope_cgroup_cpu_seconds_total", "cgscope_cgroup_network_transmit_bytes_total"} {
		series := cgroupSeries(name, rel)
		var pushed, scraped float64
		deadline := time.Now().Add(30 * time.Second)
		for {
			body, _ := httpGet(t, d.url("/metrics"))
			scraped = parseMetrics(t, string(body))[series]
			var ok bool
			pushed, ok = promQuery(t, prom, name+`{cgroup="`+rel+`"}`)
			if ok && scraped > 0 && pushed >= scraped*0.9 && pushed <= scraped*1.1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: prometheus has %v, /metrics %v: want within 10%%\n%s", name, pushed, scraped, d.stderr)
			}
			time.Sleep(500 * time.Millisecond)
		}
		t.Logf("%s: prometheus %v, /metrics %v", name, pushed, scraped)
	}
	if strings.Contains(strings.ToLower(d.stderr.String()), "level=error") {
		t.Errorf("errors logged:\n%s", d.stderr)
	}
}

// --- OTLP: the collector's own pdata gRPC receivers on loopback ---

// otlpReceiver serves the OTLP profiles and metrics services with the
// OpenTelemetry Collector's pdata server code and keeps what it decodes.
type otlpReceiver struct {
	addr     string
	srv      *grpc.Server // nil for OTLP/HTTP
	mu       sync.Mutex
	profiles []pprofile.Profiles
	metrics  []pmetric.Metrics
	headers  map[string]map[string][]string // signal → the last request's headers (lower-case names)
}

// received keeps a decoded request and its headers.
func (r *otlpReceiver) received(signal string, headers map[string][]string, add func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	add()
	if r.headers == nil {
		r.headers = map[string]map[string][]string{}
	}
	r.headers[signal] = headers
}

// header is a header of the last request of signal.
func (r *otlpReceiver) header(signal, name string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.headers[signal][strings.ToLower(name)], ",")
}

type profilesService struct {
	pprofileotlp.UnimplementedGRPCServer
	r *otlpReceiver
}

func (s *profilesService) Export(ctx context.Context, req pprofileotlp.ExportRequest) (pprofileotlp.ExportResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	s.r.received("profiles", md, func() { s.r.profiles = append(s.r.profiles, req.Profiles()) })
	return pprofileotlp.NewExportResponse(), nil
}

type metricsService struct {
	pmetricotlp.UnimplementedGRPCServer
	r *otlpReceiver
}

func (s *metricsService) Export(ctx context.Context, req pmetricotlp.ExportRequest) (pmetricotlp.ExportResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	s.r.received("metrics", md, func() { s.r.metrics = append(s.r.metrics, req.Metrics()) })
	return pmetricotlp.NewExportResponse(), nil
}

// startOTLPReceiver listens on addr ("" for a free port).
func startOTLPReceiver(t *testing.T, addr string) *otlpReceiver {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	r := &otlpReceiver{addr: l.Addr().String(), srv: grpc.NewServer()}
	pprofileotlp.RegisterGRPCServer(r.srv, &profilesService{r: r})
	pmetricotlp.RegisterGRPCServer(r.srv, &metricsService{r: r})
	go r.srv.Serve(l)
	t.Cleanup(r.srv.Stop)
	return r
}

func (r *otlpReceiver) counts() (profiles, metrics int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.profiles), len(r.metrics)
}

// pidSamples sums, over every received CPU profile (sample type
// samples/count), the samples of pid whose stack holds fn ("" = any
// stack). The off-CPU profiles of the same requests (off_cpu/nanoseconds,
// context_switch/count) are left out: a CPU-bound thread is preempted too.
func (r *otlpReceiver) pidSamples(pid int, fn string) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var n int64
	for _, pd := range r.profiles {
		d := pd.Dictionary()
		for i := 0; i < pd.ResourceProfiles().Len(); i++ {
			rp := pd.ResourceProfiles().At(i)
			if v, ok := rp.Resource().Attributes().Get("process.pid"); !ok || v.Int() != int64(pid) {
				continue
			}
			profs := rp.ScopeProfiles().At(0).Profiles()
			for j := 0; j < profs.Len(); j++ {
				st := profs.At(j).SampleType()
				if d.StringTable().At(int(st.TypeStrindex())) != "samples" {
					continue
				}
				samples := profs.At(j).Samples()
				for k := 0; k < samples.Len(); k++ {
					s := samples.At(k)
					if fn == "" || otlpStackHas(d, s.StackIndex(), fn) {
						n += s.Values().At(0)
					}
				}
			}
		}
	}
	return n
}

func otlpStackHas(d pprofile.ProfilesDictionary, stack int32, fn string) bool {
	locs := d.StackTable().At(int(stack)).LocationIndices()
	for i := 0; i < locs.Len(); i++ {
		lines := d.LocationTable().At(int(locs.At(i))).Lines()
		for j := 0; j < lines.Len(); j++ {
			f := d.FunctionTable().At(int(lines.At(j).FunctionIndex()))
			if d.StringTable().At(int(f.NameStrindex())) == fn {
				return true
			}
		}
	}
	return false
}

// metric finds the newest received metric of that name.
func (r *otlpReceiver) metric(name string) (pmetric.Metric, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.metrics) - 1; i >= 0; i-- {
		rms := r.metrics[i].ResourceMetrics()
		for a := 0; a < rms.Len(); a++ {
			sms := rms.At(a).ScopeMetrics()
			for b := 0; b < sms.Len(); b++ {
				ms := sms.At(b).Metrics()
				for c := 0; c < ms.Len(); c++ {
					if ms.At(c).Name() == name {
						return ms.At(c), true
					}
				}
			}
		}
	}
	return pmetric.Metric{}, false
}

// containerCgroup makes a docker-style child of a test cgroup, so that
// container.id is known.
func containerCgroup(t *testing.T) (rel, abs, id string) {
	parentRel, parentAbs := cgroup2(t)
	id = fmt.Sprintf("%064x", time.Now().UnixNano())
	name := "docker-" + id + ".scope"
	abs = filepath.Join(parentAbs, name)
	if err := os.Mkdir(abs, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // before cgroup2's own clean-up of the parent
		for i := 0; i < 50 && os.Remove(abs) != nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
	})
	return parentRel + "/" + name, abs, id
}

// The Go workload's profile arrives over OTLP with the same sample counts
// as /debug/pprof/profile shows for the same window (within 5%), and the
// per-cgroup metrics carry semantic-convention names, units and
// container.id.
func TestOTLPProfilesAndMetrics(t *testing.T) {
	r := startOTLPReceiver(t, "")
	checkOTLPExport(t, r, "--otlp.endpoint="+r.addr, "--otlp.insecure")
}

// checkOTLPExport runs cgscope with the OTLP flags given (pointing at r),
// a Go workload in a container cgroup, and checks what r received: the
// workload's function names with the sample counts of a pprof capture of
// the same window, and the per-cgroup metrics.
func checkOTLPExport(t *testing.T, r *otlpReceiver, otlpArgs ...string) {
	t.Helper()
	// The run-queue program stays attached throughout (the largest
	// budget): the container's 2 s workload must meet one of its windows,
	// which on a host busy with other tests, at the default budget, can be
	// a quarter-second one every few seconds. Sampling has its own test
	// (collector.TestRunqHistogramSampled); this one checks the export.
	args := append([]string{fmt.Sprintf("--profiling.frequency=%d", testFrequency), "--profiling.interval=1s", "--otlp.interval=1s",
		"--scheduler.bpf-budget=100ms"}, otlpArgs...)
	d := startCgscope(t, t.Cleanup, args...)
	_, abs, containerID := containerCgroup(t)

	// The capture spans the workload's whole life, so both sides hold all
	// of its samples.
	captured := make(chan *profile.Profile, 1)
	go func() { captured <- d.capture(t, "seconds=5") }()
	time.Sleep(500 * time.Millisecond)
	w := workload(t, filepath.Join(artifacts(t), "gosplit"), "-duration=2s")
	joinCgroup(t, abs, w.Process.Pid)
	w.Wait()
	p := <-captured
	time.Sleep(3 * time.Second) // two reporting intervals after the capture's last window

	for _, fn := range []string{"main.hotSeventyFive", "main.hotTwentyFive"} {
		want := samplesWhere(p, func(s *profile.Sample) bool { return pidIs(w.Process.Pid)(s) && stackHas(s, fn) })
		got := r.pidSamples(w.Process.Pid, fn)
		t.Logf("%s: OTLP %d samples, pprof %d", fn, got, want)
		// Enough samples that the 5% comparison means something; a busy
		// host gives the 2 s workload much less than its two seconds.
		if want < 40 {
			t.Fatalf("%s: only %d samples in the pprof capture", fn, want)
		}
		if diff := float64(got-want) / float64(want); diff < -0.05 || diff > 0.05 {
			t.Errorf("%s: OTLP %d samples, pprof %d: want within 5%%", fn, got, want)
		}
	}
	checkOTLPMetrics(t, r, containerID)
	if strings.Contains(strings.ToLower(d.stderr.String()), "level=error") {
		t.Errorf("errors logged:\n%s", d.stderr)
	}
}

func checkOTLPMetrics(t *testing.T, r *otlpReceiver, containerID string) {
	t.Helper()
	for _, want := range []struct{ name, unit string }{
		{"container.cpu.time", "s"},
		{"container.network.io", "By"},
		{"container.memory.usage", "By"},
		{"container.memory.working_set", "By"},
		{"cgscope.cgroup.context_switches", "{switch}"},
		{"cgscope.cgroup.schedule.duration", "s"},
	} {
		m, ok := r.metric(want.name)
		if !ok {
			t.Errorf("no %s received", want.name)
			continue
		}
		if m.Unit() != want.unit {
			t.Errorf("%s: unit %q, want %q", want.name, m.Unit(), want.unit)
		}
		switch want.name {
		case "container.cpu.time":
			checkContainerPoint(t, m, containerID)
		case "cgscope.cgroup.schedule.duration":
			checkContainerHistogram(t, m, containerID)
		}
	}
}

// checkContainerHistogram: the container's run-queue waits arrive as a
// cumulative histogram whose buckets add up to its count.
func checkContainerHistogram(t *testing.T, m pmetric.Metric, containerID string) {
	t.Helper()
	if m.Type() != pmetric.MetricTypeHistogram || m.Histogram().AggregationTemporality() != pmetric.AggregationTemporalityCumulative {
		t.Errorf("%s: %v, want a cumulative histogram", m.Name(), m.Type())
		return
	}
	dps := m.Histogram().DataPoints()
	for i := 0; i < dps.Len(); i++ {
		dp := dps.At(i)
		if v, ok := dp.Attributes().Get("container.id"); !ok || v.Str() != containerID {
			continue
		}
		var sum uint64
		for _, c := range dp.BucketCounts().AsRaw() {
			sum += c
		}
		t.Logf("%s of the container: %d waits, %.6f s, bounds %v, counts %v", m.Name(), dp.Count(), dp.Sum(), dp.ExplicitBounds().AsRaw(), dp.BucketCounts().AsRaw())
		if dp.Count() == 0 || sum != dp.Count() || dp.BucketCounts().Len() != dp.ExplicitBounds().Len()+1 || dp.Sum() <= 0 {
			t.Errorf("%s of the container: count %d, buckets sum to %d (%d buckets, %d bounds), sum %v",
				m.Name(), dp.Count(), sum, dp.BucketCounts().Len(), dp.ExplicitBounds().Len(), dp.Sum())
		}
		return
	}
	t.Errorf("%s: no data point with container.id=%s", m.Name(), containerID)
}

func checkContainerPoint(t *testing.T, m pmetric.Metric, containerID string) {
	t.Helper()
	if m.Type() != pmetric.MetricTypeSum || m.Sum().AggregationTemporality() != pmetric.AggregationTemporalityCumulative {
		t.Errorf("%s: %v, want a cumulative sum", m.Name(), m.Type())
		return
	}
	dps := m.Sum().DataPoints()
	for i := 0; i < dps.Len(); i++ {
		if v, ok := dps.At(i).Attributes().Get("container.id"); ok && v.Str() == containerID {
			if dps.At(i).DoubleValue() <= 0 {
				t.Errorf("%s of the container: %v", m.Name(), dps.At(i).DoubleValue())
			}
			return
		}
	}
	t.Errorf("%s: no data point with container.id=%s", m.Name(), containerID)
}

// The receiver is down for 20 s and comes back: cgscope keeps profiling,
// its memory stays bounded, every batch is either sent or counted as
// dropped, and data sent after the recovery arrives.
func TestOTLPOutage(t *testing.T) {
	r := startOTLPReceiver(t, "")
	addr := r.addr
	// A small history keeps its growth out of the memory figure: what is
	// checked is that the exporters' queues do not grow.
	d := startCgscope(t, t.Cleanup, "--profiling.interval=1s", "--otlp.endpoint="+addr, "--otlp.insecure",
		"--otlp.interval=1s", "--otlp.queue-size=3", "--storage.memory-limit=4MiB")
	workload(t, filepath.Join(artifacts(t), "gosplit"), "-duration=60s")
	waitUntil(t, 15*time.Second, func() bool { p, m := r.counts(); return p > 0 && m > 0 })

	r.srv.Stop()
	rssBefore := selfMetric(t, d, "process_resident_memory_bytes")
	time.Sleep(10 * time.Second)
	if p := d.capture(t, "seconds=2"); len(p.Sample) == 0 {
		t.Error("no samples captured during the outage")
	}
	time.Sleep(8 * time.Second)
	rssDuring := selfMetric(t, d, "process_resident_memory_bytes")

	r2 := startOTLPReceiver(t, addr)
	waitUntil(t, 30*time.Second, func() bool { p, m := r2.counts(); return p > 0 && m > 0 })
	time.Sleep(3 * time.Second)
	t.Logf("RSS %.1f MiB before the outage, %.1f MiB 18 s into it", rssBefore/(1<<20), rssDuring/(1<<20))
	if growth := rssDuring - rssBefore; growth > 30<<20 {
		t.Errorf("RSS grew by %.0f MiB during the outage", growth/(1<<20))
	}
	for _, signal := range []string{"profiles", "metrics"} {
		l := `{exporter="otlp",signal="` + signal + `"}`
		vals := parseMetrics(t, string(mustGet(t, d.url("/metrics"))))
		enq, sent, dropped, queued := vals["cgscope_exporter_enqueued_total"+l], vals["cgscope_exporter_sent_total"+l],
			vals["cgscope_exporter_dropped_total"+l], vals["cgscope_exporter_queue_length"+l]
		t.Logf("%s: enqueued %v sent %v dropped %v queued %v errors %v", signal, enq, sent, dropped, queued, vals["cgscope_exporter_send_errors_total"+l])
		if dropped < 5 {
			t.Errorf("%s: %v dropped after a 20 s outage with a queue of 3 at 1 s intervals", signal, dropped)
		}
		// One batch may be in flight when the counters are read.
		if diff := enq - sent - dropped - queued; diff < 0 || diff > 1 {
			t.Errorf("%s: enqueued %v != sent %v + dropped %v + queued %v", signal, enq, sent, dropped, queued)
		}
	}
	if n := strings.Count(d.stderr.String(), "export backend unreachable"); n < 1 || n > 4 {
		t.Errorf("%d unreachable messages for one outage of two signals, want one per signal:\n%s", n, d.stderr)
	}
	if !strings.Contains(d.stderr.String(), "accepting data again") {
		t.Errorf("recovery not logged:\n%s", d.stderr)
	}
}

func mustGet(t *testing.T, url string) []byte {
	body, status := httpGet(t, url)
	if status != 200 {
		t.Fatalf("GET %s: %d", url, status)
	}
	return body
}

func selfMetric(t *testing.T, d *daemon, name string) float64 {
	return parseMetrics(t, string(mustGet(t, d.url("/metrics"))))[name]
}

func waitUntil(t *testing.T, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Bad push configuration is refused at start with a message naming the
// flag, before anything is attached.
func TestBadPushFlags(t *testing.T) {
	bin := filepath.Join(artifacts(t), "cgscope")
	for _, c := range []struct {
		args []string
		flag string
	}{
		{[]string{"--otlp.endpoint=http://[::1"}, "otlp.endpoint"},
		{[]string{"--otlp.endpoint=collector"}, "otlp.endpoint"},
		{[]string{"--otlp.endpoint=127.0.0.1:4317", "--otlp.protocol=thrift"}, "otlp.protocol"},
		{[]string{"--otlp.endpoint=127.0.0.1:4317", "--otlp.tls.ca-file=/no/such/ca.pem"}, "otlp.tls.ca-file"},
		{[]string{"--otlp.endpoint=127.0.0.1:4317", "--otlp.signals=traces"}, "otlp.signals"},
		{[]string{"--otlp.endpoint=127.0.0.1:4317", "--otlp.max-request-size=1KiB"}, "otlp.max-request-size"},
		{[]string{"--otlp.endpoint=127.0.0.1:4317", "--otlp.max-request-size=0"}, "otlp.max-request-size"},
		{[]string{"--otlp.endpoint=127.0.0.1:4317", "--otlp.max-request-size=100GiB"}, "otlp.max-request-size"},
		{[]string{"--otlp.endpoint=127.0.0.1:4317", "--otlp.max-request-size=4 lots"}, "otlp.max-request-size"},
		{[]string{"--remote-write.url=::not a url"}, "remote-write.url"},
		{[]string{"--remote-write.url=http://127.0.0.1:9090/api/v1/write", "--remote-write.protocol=3.0"}, "remote-write.protocol"},
		{[]string{"--remote-write.url=http://127.0.0.1:9090/api/v1/write", "--remote-write.tls.ca-file=/no/such/ca.pem"}, "remote-write.tls.ca-file"},
	} {
		start := time.Now()
		out, err := exec.Command(bin, append(c.args, "--web.listen-address="+freeAddr(t))...).CombinedOutput()
		exit, ok := err.(*exec.ExitError)
		if !ok || exit.ExitCode() == 0 {
			t.Errorf("%v: err=%v, want a non-zero exit", c.args, err)
			continue
		}
		if !strings.Contains(string(out), c.flag) {
			t.Errorf("%v: message does not name %s: %s", c.args, c.flag, out)
		}
		if strings.Contains(string(out), "cpus=") {
			t.Errorf("%v: attached before refusing: %s", c.args, out)
		}
		if time.Since(start) > 5*time.Second {
			t.Errorf("%v: took %s to refuse", c.args, time.Since(start))
		}
	}
}
