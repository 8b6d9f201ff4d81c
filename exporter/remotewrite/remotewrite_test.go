package remotewrite

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/exp/api/remote"
	writev2 "github.com/prometheus/client_golang/exp/api/remote/genproto/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/prompb"

	"github.com/cgscope/cgscope/exporter/queue"
)

// store is a remote-write receiver built on client_golang/exp's handler,
// which decodes both protocol versions.
type store struct {
	mu     sync.Mutex
	v1     []*prompb.WriteRequest
	v2     []*writev2.Request
	header http.Header
}

func (s *store) Store(r *http.Request, t remote.WriteMessageType) (*remote.WriteResponse, error) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, err
	}
	resp := remote.NewWriteResponse()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.header = r.Header.Clone()
	if t == remote.WriteV2MessageType {
		var req writev2.Request
		if err := req.UnmarshalVT(body); err != nil {
			return nil, err
		}
		s.v2 = append(s.v2, &req)
		resp.Samples = len(req.Timeseries)
		return resp, nil
	}
	var req prompb.WriteRequest
	if err := req.Unmarshal(body); err != nil {
		return nil, err
	}
	s.v1 = append(s.v1, &req)
	return resp, nil
}

func testRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cgscope_cgroup_cpu_seconds_total", Help: "CPU."}, []string{"cgroup"})
	c.WithLabelValues("/a").Add(2.5)
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "lat_seconds", Help: "Latency.", Buckets: []float64{0.1, 1}})
	h.Observe(0.5)
	reg.MustRegister(c, h)
	return reg
}

func run(t *testing.T, protocol string) *store {
	s := &store{}
	srv := httptest.NewServer(remote.NewWriteHandler(s, remote.MessageTypes{remote.WriteV1MessageType, remote.WriteV2MessageType}))
	defer srv.Close()
	e, err := New(Config{URL: srv.URL + "/api/v1/write", Protocol: protocol, Interval: time.Second, QueueSize: 2,
		Timeout: 5 * time.Second, Headers: map[string]string{"Authorization": "Bearer tok"}}, testRegistry(), queue.NewMetrics(nil))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go e.Run(ctx)
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		n := len(s.v1) + len(s.v2)
		s.mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("nothing received")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	s.mu.Lock()
	defer s.mu.Unlock()
	if got := s.header.Get("Authorization"); got != "Bearer tok" {
		t.Errorf("Authorization header %q", got)
	}
	return s
}

func TestRemoteWrite1(t *testing.T) {
	s := run(t, Protocol1)
	got := map[string]float64{}
	for _, ts := range s.v1[0].Timeseries {
		key := ""
		for _, l := range ts.Labels {
			key += l.Name + "=" + l.Value + ","
		}
		got[key] = ts.Samples[0].Value
	}
	for key, want := range map[string]float64{
		"__name__=cgscope_cgroup_cpu_seconds_total,cgroup=/a,": 2.5,
		"__name__=lat_seconds_bucket,le=0.1,":                  0,
		"__name__=lat_seconds_bucket,le=1,":                    1,
		"__name__=lat_seconds_bucket,le=+Inf,":                 1,
		"__name__=lat_seconds_sum,":                            0.5,
		"__name__=lat_seconds_count,":                          1,
	} {
		if v, ok := got[key]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", key, v, ok, want)
		}
	}
	if len(s.v1[0].Metadata) != 2 {
		t.Errorf("%d metadata entries, want 2", len(s.v1[0].Metadata))
	}
}

func TestRemoteWrite2(t *testing.T) {
	s := run(t, Protocol2)
	req := s.v2[0]
	found := false
	for _, ts := range req.Timeseries {
		labels := writev2.DesymbolizeLabels(ts.LabelsRefs, req.Symbols, nil)
		if len(labels) == 4 && labels[1] == "cgscope_cgroup_cpu_seconds_total" && labels[3] == "/a" {
			found = ts.Samples[0].Value == 2.5 && ts.Metadata.Type == writev2.Metadata_METRIC_TYPE_COUNTER
		}
	}
	if !found {
		t.Error("cpu series missing or wrong in the 2.0 request")
	}
}

// A collection larger than one request's worth of series arrives whole in
// several requests of at most maxSamplesPerRequest series, each with the
// metadata of its families, in both protocols.
func TestRemoteWriteSplitsLargeCollections(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cgscope_cgroup_cpu_seconds_total", Help: "CPU."}, []string{"cgroup"})
	reg.MustRegister(c)
	const cgroups = 2*maxSamplesPerRequest + 10
	for i := range cgroups {
		c.WithLabelValues(fmt.Sprintf("/kubepods/pod%d", i)).Add(float64(i))
	}
	for _, protocol := range []string{Protocol1, Protocol2} {
		s := &store{}
		srv := httptest.NewServer(remote.NewWriteHandler(s, remote.MessageTypes{remote.WriteV1MessageType, remote.WriteV2MessageType}))
		m := prometheus.NewRegistry()
		e, err := New(Config{URL: srv.URL, Protocol: protocol, Interval: time.Hour, QueueSize: 1, Timeout: 5 * time.Second}, reg, queue.NewMetrics(m))
		if err != nil {
			t.Fatal(err)
		}
		e.Stop(10 * time.Second) // one collection, sent
		srv.Close()
		seen := map[string]int{}
		requests := 0
		count := func(n int, labels func(i int) string) {
			requests++
			if n > maxSamplesPerRequest {
				t.Errorf("%s: a request of %d series", protocol, n)
			}
			for i := range n {
				seen[labels(i)]++
			}
		}
		for _, r := range s.v1 {
			count(len(r.Timeseries), func(i int) string { return fmt.Sprint(r.Timeseries[i].Labels) })
			if len(r.Metadata) != 1 {
				t.Errorf("1.0 request with %d metadata entries, want its one family's", len(r.Metadata))
			}
		}
		for _, r := range s.v2 {
			count(len(r.Timeseries), func(i int) string {
				return fmt.Sprint(writev2.DesymbolizeLabels(r.Timeseries[i].LabelsRefs, r.Symbols, nil))
			})
			for _, ts := range r.Timeseries {
				if ts.Metadata.Type != writev2.Metadata_METRIC_TYPE_COUNTER || r.Symbols[ts.Metadata.HelpRef] != "CPU." {
					t.Errorf("2.0 series without its metadata: %+v", ts.Metadata)
					break
				}
			}
		}
		if sent := counter(m, "cgscope_exporter_sent_total"); sent != 1 {
			t.Errorf("%s: %v batches sent, want the collection as one", protocol, sent)
		}
		if requests != 3 || len(seen) != cgroups {
			t.Errorf("%s: %d requests carrying %d distinct series, want 3 carrying %d", protocol, requests, len(seen), cgroups)
		}
		for k, n := range seen {
			if n != 1 {
				t.Errorf("%s: %s sent %d times", protocol, k, n)
			}
		}
	}
}

// A 400 from the receiver is permanent: no retry, one drop.
func TestRemoteWriteRejectionNotRetried(t *testing.T) {
	var mu sync.Mutex
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls++
		mu.Unlock()
		http.Error(w, "out of order sample", http.StatusBadRequest)
	}))
	defer srv.Close()
	e, err := New(Config{URL: srv.URL, Interval: time.Hour, QueueSize: 2, Timeout: time.Second}, testRegistry(), queue.NewMetrics(nil))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go e.q.Run(ctx)
	e.collect()
	time.Sleep(2 * time.Second)
	cancel()
	mu.Lock()
	defer mu.Unlock()
	if calls != 1 {
		t.Errorf("%d attempts, want 1", calls)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []Config{
		{URL: "::bad"},
		{URL: "ftp://host/x"},
		{URL: "http://host/x", Protocol: "3.0"},
		{URL: "http://host/x", Interval: time.Millisecond},
	} {
		if c.Interval == 0 {
			c.Interval = time.Second
		}
		c.QueueSize, c.Timeout = 1, time.Second
		if err := c.Validate(); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
}

// counter reads an exporter counter (one label set) from reg.
func counter(reg *prometheus.Registry, name string) float64 {
	families, _ := reg.Gather()
	for _, mf := range families {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return -1
}
