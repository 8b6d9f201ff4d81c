package otlp

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/cgscope/cgscope/exporter/queue"
)

// manyCgroups is the registry of a big node: n Kubernetes containers with
// CPU, memory and network series and the run-queue histogram, each
// labelled as cgscope labels them. It returns the OTLP data points one
// collection makes of it.
func manyCgroups(n int) (*prometheus.Registry, int) {
	reg := prometheus.NewRegistry()
	labels := []string{"cgroup", "container_id", "pod_uid", "namespace", "pod", "container"}
	cpu := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cgscope_cgroup_cpu_seconds_total", Help: "cpu"}, labels)
	mem := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "cgscope_cgroup_memory_usage_bytes", Help: "mem"}, labels)
	rx := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cgscope_cgroup_network_receive_bytes_total", Help: "rx"}, labels)
	tx := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cgscope_cgroup_network_transmit_bytes_total", Help: "tx"}, labels)
	runq := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "cgscope_cgroup_cpu_runqueue_latency_seconds", Help: "runq",
		Buckets: prometheus.ExponentialBuckets(1e-6, 2, 23)}, labels)
	reg.MustRegister(cpu, mem, rx, tx, runq)
	for i := range n {
		uid := fmt.Sprintf("%08x-1c2d-4e5f-8a9b-%012x", i, i)
		id := strings.Repeat(fmt.Sprintf("%08x", i), 8)
		l := []string{fmt.Sprintf("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod%s.slice/cri-containerd-%s.scope", uid, id),
			id, uid, "payments", fmt.Sprintf("checkout-api-7d9f8c6b5-%05d", i), "checkout-api"}
		cpu.WithLabelValues(l...).Add(float64(i))
		mem.WithLabelValues(l...).Set(float64(i << 20))
		rx.WithLabelValues(l...).Add(float64(i * 100))
		tx.WithLabelValues(l...).Add(float64(i * 50))
		runq.WithLabelValues(l...).Observe(1e-4)
	}
	return reg, 5 * n
}

// A big node's metrics, several MiB in OTLP, are refused by a gRPC server
// at its default 4 MiB when sent whole (dropped and counted, not retried);
// split, they arrive complete, every request under the limit as pdata
// encodes what the receiver got.
func TestMetricsSplitToReceiver(t *testing.T) {
	reg, points := manyCgroups(4000)
	for _, tc := range []struct {
		name  string
		limit int
	}{{"whole", maxRequestBytes}, {"default limit", 0}, {"256KiB", 256 << 10}, {"64KiB", 64 << 10}} {
		t.Run(tc.name, func(t *testing.T) {
			r := startReceiver(t, nil)
			cfg := testConfig(r.addr)
			cfg.Profiles, cfg.Interval, cfg.MaxRequestSize = false, time.Hour, tc.limit
			mreg := prometheus.NewRegistry()
			e, err := New(cfg, Sources{Gatherer: reg}, queue.NewMetrics(mreg), "test")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			e.Start(ctx)
			cancel()
			e.Stop(30 * time.Second) // one collection, sent in as many requests as it takes
			r.mu.Lock()
			defer r.mu.Unlock()
			sent := counterValue(t, mreg, "cgscope_exporter_sent_total", SignalMetrics)
			dropped := counterValue(t, mreg, "cgscope_exporter_dropped_total", SignalMetrics)
			if tc.limit == maxRequestBytes {
				if sent != 0 || dropped != 1 || len(r.metrics) != 0 {
					t.Errorf("whole: %v sent, %v dropped, %d received; want one request refused and dropped", sent, dropped, len(r.metrics))
				}
				return
			}
			limit := tc.limit
			if limit == 0 {
				limit = DefaultMaxRequestSize
			}
			seen, largest := map[string]int{}, 0
			var m pmetric.ProtoMarshaler
			for _, md := range r.metrics {
				for _, k := range pointKeys(md) {
					seen[k]++
				}
				largest = max(largest, m.MetricsSize(md))
			}
			got := len(seen)
			for k, n := range seen {
				if n != 1 {
					t.Errorf("%s received %d times", k, n)
				}
			}
			if dropped != 0 || sent != 1 || len(r.metrics) < 2 {
				t.Errorf("%v batches sent, %v dropped, %d requests received; want one batch of several", sent, dropped, len(r.metrics))
			}
			if got != points {
				t.Errorf("%d distinct data points received, want %d", got, points)
			}
			if largest > limit {
				t.Errorf("a request of %d bytes, over the limit of %d", largest, limit)
			}
			t.Logf("%d requests, the largest %d bytes (limit %d)", len(r.metrics), largest, limit)
		})
	}
}

// pointKeys names each data point of md by its metric and attributes.
func pointKeys(md pmetric.Metrics) []string {
	var keys []string
	add := func(name string, attrs map[string]any) {
		keys = append(keys, fmt.Sprint(name, attrs)) // fmt sorts map keys
	}
	for i := range md.ResourceMetrics().Len() {
		sms := md.ResourceMetrics().At(i).ScopeMetrics()
		for j := range sms.Len() {
			ms := sms.At(j).Metrics()
			for k := range ms.Len() {
				m := ms.At(k)
				switch m.Type() {
				case pmetric.MetricTypeSum:
					for p := range m.Sum().DataPoints().Len() {
						add(m.Name(), m.Sum().DataPoints().At(p).Attributes().AsRaw())
					}
				case pmetric.MetricTypeGauge:
					for p := range m.Gauge().DataPoints().Len() {
						add(m.Name(), m.Gauge().DataPoints().At(p).Attributes().AsRaw())
					}
				case pmetric.MetricTypeHistogram:
					for p := range m.Histogram().DataPoints().Len() {
						add(m.Name(), m.Histogram().DataPoints().At(p).Attributes().AsRaw())
					}
				default:
					keys = append(keys, "unexpected "+m.Type().String()+" "+m.Name())
				}
			}
		}
	}
	return keys
}
