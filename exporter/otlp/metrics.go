package otlp

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/exemplar"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/semconv/v1.43.0/containerconv"

	"github.com/cgscope/cgscope/exporter/queue"
	"github.com/cgscope/cgscope/internal/every"
)

// promPrefix is what the per-cgroup families on /metrics start with.
const promPrefix = "cgscope_cgroup_"

// Attribute keys of the per-cgroup metrics beyond the semantic conventions.
const (
	attrCgroupPath  = "cgscope.cgroup.path"
	attrIODirection = "network.io.direction"
	attrFaultType   = "system.paging.fault.type"
)

// instrument is one OpenTelemetry instrument fed from one Prometheus
// family. fixed attributes tell apart families that share an instrument
// (receive and transmit bytes are one container.network.io); rename maps
// Prometheus label names to attribute keys.
type instrument struct {
	family string
	f      metric.Float64Observable
	i      metric.Int64Observable
	fixed  []attribute.KeyValue
	rename map[string]string
}

// histogram is a Prometheus histogram family sent as an OTLP
// explicit-bucket histogram. The SDK has no asynchronous histogram
// instrument, so its points are built from the family gathered for the
// instruments and added to the collected data (addHistograms).
type histogram struct {
	family, name, unit, description string
	rename                          map[string]string
}

// histograms: the run-queue latency is named after the semantic
// conventions' go.schedule.duration ("time spent in a runnable state
// before actually running"), for the cgroup's threads.
var histograms = []histogram{
	{family: "cgscope_cgroup_cpu_runqueue_latency_seconds", name: "cgscope.cgroup.schedule.duration", unit: "s",
		description: "Time single wakeups of the cgroup's threads waited in a CPU run queue before running (eBPF)."},
}

// metricsSource observes the per-cgroup families of the daemon's registry
// into SDK instruments on every collection, and keeps the histogram
// families' points of that collection.
type metricsSource struct {
	gatherer prometheus.Gatherer
	byFamily map[string][]*instrument
	start    time.Time // of every cumulative series

	mu         sync.Mutex
	histograms []metricdata.Metrics // of the last collection
}

// newMetricsSource creates the instruments on meter and registers the one
// callback that feeds them all from a single Gather.
func newMetricsSource(meter metric.Meter, g prometheus.Gatherer) (*metricsSource, error) {
	s := &metricsSource{gatherer: g, byFamily: map[string][]*instrument{}, start: time.Now()}
	insts, err := s.instruments(meter)
	if err != nil {
		return nil, err
	}
	var observables []metric.Observable
	for _, in := range insts {
		s.byFamily[in.family] = append(s.byFamily[in.family], in)
		if in.f != nil {
			observables = append(observables, in.f)
		} else {
			observables = append(observables, in.i)
		}
	}
	if _, err := meter.RegisterCallback(s.observe, observables...); err != nil {
		return nil, err
	}
	return s, nil
}

// instruments lists the mapping: OpenTelemetry container semantic
// conventions (v1.43) where one exists, cgscope.cgroup.* otherwise. The
// run-queue latency histogram is not an instrument (see histograms).
func (s *metricsSource) instruments(m metric.Meter) ([]*instrument, error) {
	b := &instrumentBuilder{m: m}
	cpu := b.semconvF(containerconv.NewCPUTimeObservable(m))
	memUsage := b.semconvI(containerconv.NewMemoryUsageObservable(m))
	workingSet := b.semconvI(containerconv.NewMemoryWorkingSetObservable(m))
	rss := b.semconvI(containerconv.NewMemoryRssObservable(m))
	faults := b.semconvI(containerconv.NewMemoryPagingFaultsObservable(m))
	netIO := b.semconvI(containerconv.NewNetworkIOObservable(m))
	packets := b.counterI("cgscope.cgroup.network.packets", "{packet}", "Packets sent and received by the cgroup's sockets (eBPF).")
	rx := []attribute.KeyValue{semconv.NetworkIODirectionReceive}
	tx := []attribute.KeyValue{semconv.NetworkIODirectionTransmit}
	list := []*instrument{
		{family: "cgscope_cgroup_cpu_seconds_total", f: cpu},
		{family: "cgscope_cgroup_memory_usage_bytes", i: memUsage},
		{family: "cgscope_cgroup_memory_working_set_bytes", i: workingSet},
		{family: "cgscope_cgroup_memory_rss_bytes", i: rss},
		{family: "cgscope_cgroup_page_faults_total", i: faults, rename: map[string]string{"kind": attrFaultType}},
		{family: "cgscope_cgroup_network_receive_bytes_total", i: netIO, fixed: rx},
		{family: "cgscope_cgroup_network_transmit_bytes_total", i: netIO, fixed: tx},
		{family: "cgscope_cgroup_network_receive_packets_total", i: packets, fixed: rx},
		{family: "cgscope_cgroup_network_transmit_packets_total", i: packets, fixed: tx},
		{family: "cgscope_cgroup_cpu_runqueue_wait_seconds_total", f: b.counterF("cgscope.cgroup.cpu.runqueue.wait_time", "s", "Time runnable threads of the cgroup waited in a run queue (eBPF).")},
		{family: "cgscope_cgroup_cpu_throttled_seconds_total", f: b.counterF("cgscope.cgroup.cpu.throttled_time", "s", "Time the cgroup was throttled by its CPU quota.")},
		{family: "cgscope_cgroup_context_switches_total", i: b.counterI("cgscope.cgroup.context_switches", "{switch}", "Context switches of the cgroup's threads (eBPF)."), rename: map[string]string{"kind": "cgscope.context_switch.kind"}},
		{family: "cgscope_cgroup_memory_cache_bytes", i: b.gaugeI("cgscope.cgroup.memory.cache", "By", "Page cache charged to the cgroup.")},
		{family: "cgscope_cgroup_memory_limit_bytes", i: b.gaugeI("cgscope.cgroup.memory.limit", "By", "Memory limit of the cgroup.")},
		{family: "cgscope_cgroup_oom_kills_total", i: b.counterI("cgscope.cgroup.oom_kills", "{kill}", "Processes of the cgroup killed by the OOM killer (eBPF).")},
		{family: "cgscope_cgroup_tcp_connections_opened_total", i: b.counterI("cgscope.cgroup.tcp.connections.opened", "{connection}", "TCP connections established (eBPF)."), rename: map[string]string{"direction": "cgscope.tcp.direction"}},
		{family: "cgscope_cgroup_tcp_connect_failures_total", i: b.counterI("cgscope.cgroup.tcp.connect_failures", "{connection}", "TCP connects that failed (eBPF).")},
		{family: "cgscope_cgroup_tcp_connections_closed_total", i: b.counterI("cgscope.cgroup.tcp.connections.closed", "{connection}", "Established TCP connections that closed (eBPF).")},
		{family: "cgscope_cgroup_tcp_active_connections", i: b.gaugeI("cgscope.cgroup.tcp.connections.active", "{connection}", "TCP connections open now (eBPF).")},
		{family: "cgscope_cgroup_tcp_retransmits_total", i: b.counterI("cgscope.cgroup.tcp.retransmits", "{segment}", "TCP segments retransmitted (eBPF).")},
		{family: "cgscope_cgroup_pressure_seconds_total", f: b.counterF("cgscope.cgroup.pressure.stall_time", "s", "Time tasks of the cgroup stalled on a resource (PSI)."), rename: map[string]string{"resource": "cgscope.pressure.resource", "kind": "cgscope.pressure.kind"}},
	}
	return list, b.err
}

// instrumentBuilder creates instruments and keeps the first error, so the
// mapping table above reads as a table.
type instrumentBuilder struct {
	m   metric.Meter
	err error
}

func (b *instrumentBuilder) keep(err error) {
	if err != nil && b.err == nil {
		b.err = err
	}
}

func (b *instrumentBuilder) semconvF(i interface {
	Inst() metric.Float64ObservableCounter
}, err error) metric.Float64Observable {
	b.keep(err)
	return i.Inst()
}

// semconvI accepts the semconv wrappers of the int64 observables (counter
// or up-down counter, as the conventions say).
func (b *instrumentBuilder) semconvI(i any, err error) metric.Int64Observable {
	b.keep(err)
	switch v := i.(type) {
	case interface {
		Inst() metric.Int64ObservableCounter
	}:
		return v.Inst()
	case interface {
		Inst() metric.Int64ObservableUpDownCounter
	}:
		return v.Inst()
	}
	b.keep(fmt.Errorf("unexpected semconv instrument %T", i))
	return nil
}

func (b *instrumentBuilder) counterF(name, unit, desc string) metric.Float64Observable {
	i, err := b.m.Float64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
	b.keep(err)
	return i
}

func (b *instrumentBuilder) counterI(name, unit, desc string) metric.Int64Observable {
	i, err := b.m.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
	b.keep(err)
	return i
}

func (b *instrumentBuilder) gaugeI(name, unit, desc string) metric.Int64Observable {
	i, err := b.m.Int64ObservableUpDownCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
	b.keep(err)
	return i
}

// observe gathers the registry once and reports every mapped series; the
// histogram families become points for addHistograms.
func (s *metricsSource) observe(_ context.Context, o metric.Observer) error {
	families, err := s.gatherer.Gather()
	if err != nil && len(families) == 0 {
		return err
	}
	now := time.Now()
	var hists []metricdata.Metrics
	for _, fam := range families {
		if !strings.HasPrefix(fam.GetName(), promPrefix) {
			continue
		}
		for _, in := range s.byFamily[fam.GetName()] {
			for _, m := range fam.GetMetric() {
				observeOne(o, in, m)
			}
		}
		for _, h := range histograms {
			if h.family == fam.GetName() {
				hists = append(hists, h.metrics(fam, s.start, now))
			}
		}
	}
	s.mu.Lock()
	s.histograms = hists
	s.mu.Unlock()
	return nil
}

// addHistograms appends the histograms of the last collection to rm, in
// the scope of the instruments.
func (s *metricsSource) addHistograms(rm *metricdata.ResourceMetrics) {
	s.mu.Lock()
	hists := s.histograms
	s.histograms = nil
	s.mu.Unlock()
	if len(hists) == 0 {
		return
	}
	for i := range rm.ScopeMetrics {
		if rm.ScopeMetrics[i].Scope.Name == scopeName {
			rm.ScopeMetrics[i].Metrics = append(rm.ScopeMetrics[i].Metrics, hists...)
			return
		}
	}
	rm.ScopeMetrics = append(rm.ScopeMetrics, metricdata.ScopeMetrics{Scope: instrumentation.Scope{Name: scopeName}, Metrics: hists})
}

// metrics converts a gathered histogram family: cumulative, with the
// family's finite upper bounds as explicit bounds (both are inclusive
// upper bounds) and per-bucket counts from Prometheus' cumulative ones.
func (h histogram) metrics(fam *dto.MetricFamily, start, now time.Time) metricdata.Metrics {
	data := metricdata.Histogram[float64]{Temporality: metricdata.CumulativeTemporality}
	in := &instrument{rename: h.rename}
	for _, m := range fam.GetMetric() {
		if ph := m.GetHistogram(); ph != nil {
			data.DataPoints = append(data.DataPoints, histogramPoint(ph, attributes(in, m.GetLabel()), start, now))
		}
	}
	return metricdata.Metrics{Name: h.name, Description: h.description, Unit: h.unit, Data: data}
}

func histogramPoint(ph *dto.Histogram, set attribute.Set, start, now time.Time) metricdata.HistogramDataPoint[float64] {
	p := metricdata.HistogramDataPoint[float64]{Attributes: set, StartTime: start, Time: now,
		Count: ph.GetSampleCount(), Sum: ph.GetSampleSum()}
	var below uint64 // cumulative count up to the previous bound
	for _, b := range ph.GetBucket() {
		if math.IsInf(b.GetUpperBound(), +1) {
			continue // the overflow bucket is implied
		}
		p.Bounds = append(p.Bounds, b.GetUpperBound())
		p.BucketCounts = append(p.BucketCounts, b.GetCumulativeCount()-min(below, b.GetCumulativeCount()))
		below = max(below, b.GetCumulativeCount())
	}
	p.BucketCounts = append(p.BucketCounts, p.Count-min(below, p.Count))
	return p
}

func observeOne(o metric.Observer, in *instrument, m *dto.Metric) {
	var v float64
	switch {
	case m.GetCounter() != nil:
		v = m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		v = m.GetGauge().GetValue()
	default:
		return
	}
	set := attributes(in, m.GetLabel())
	if in.f != nil {
		o.ObserveFloat64(in.f, v, metric.WithAttributeSet(set))
	} else {
		o.ObserveInt64(in.i, int64(v), metric.WithAttributeSet(set))
	}
}

// workloadAttributes are the semantic-convention names of the labels that
// identify a cgroup's container and pod; a label with an empty value (not
// known) is left out.
var workloadAttributes = map[string]attribute.Key{
	"container_id": semconv.ContainerIDKey,
	"pod_uid":      semconv.K8SPodUIDKey,
	"namespace":    semconv.K8SNamespaceNameKey,
	"pod":          semconv.K8SPodNameKey,
	"container":    semconv.K8SContainerNameKey,
}

// attributes turns a series' labels into attributes: the cgroup path, the
// workload's container and pod where known, renamed extra labels.
func attributes(in *instrument, labels []*dto.LabelPair) attribute.Set {
	kvs := make([]attribute.KeyValue, 0, len(labels)+len(in.fixed))
	kvs = append(kvs, in.fixed...)
	for _, l := range labels {
		name, val := l.GetName(), l.GetValue()
		if key, ok := workloadAttributes[name]; ok {
			if val != "" {
				kvs = append(kvs, key.String(val))
			}
			continue
		}
		switch name {
		case "cgroup":
			kvs = append(kvs, attribute.String(attrCgroupPath, val))
		default:
			if k, ok := in.rename[name]; ok {
				name = k
			}
			kvs = append(kvs, attribute.String(name, val))
		}
	}
	return attribute.NewSet(kvs...)
}

// metricsExporter collects the SDK's manual reader every interval into a
// fresh ResourceMetrics (so a queued batch is never overwritten) and
// queues it for the OTLP metric exporter, in parts when it would be over
// the request size limit.
type metricsExporter struct {
	interval time.Duration
	provider *sdkmetric.MeterProvider
	reader   *sdkmetric.ManualReader
	source   *metricsSource
	q        *queue.Queue[*queue.Parts[*metricdata.ResourceMetrics]] // a collection's requests are one batch
	// maxRequest bounds a request's estimated size; a larger collection is
	// sent as several requests (splitMetrics).
	maxRequest int
}

// newMeterProvider sets up the SDK with cumulative temporality (the manual
// reader's default) and a resource naming this daemon and host.
func newMeterProvider(hostName, version string) (*sdkmetric.MeterProvider, *sdkmetric.ManualReader) {
	reader := sdkmetric.NewManualReader()
	attrs := []attribute.KeyValue{semconv.ServiceName("cgscope"), semconv.ServiceVersion(version)}
	if hostName != "" {
		attrs = append(attrs, semconv.HostName(hostName))
	}
	res := resource.NewWithAttributes(semconv.SchemaURL, attrs...)
	// No cardinality limit in the SDK: its default (2,000 points per
	// instrument and collection) would fold series of a node at the default
	// --cgroup.max-exported into one overflow point (two directions of
	// container.network.io for 1,001 cgroups are 2,002), without a word.
	// The registry the instruments read is bounded already: that flag caps
	// its cgroups.
	// No exemplars either, whatever OTEL_METRICS_EXEMPLAR_FILTER says:
	// observed values have no trace to point to.
	return sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader), sdkmetric.WithResource(res),
		sdkmetric.WithCardinalityLimit(0), sdkmetric.WithExemplarFilter(exemplar.AlwaysOffFilter)), reader
}

func (e *metricsExporter) run(ctx context.Context) {
	every.Run(ctx, e.interval, func() { e.collect(ctx) })
}

func (e *metricsExporter) collect(ctx context.Context) {
	rm := &metricdata.ResourceMetrics{}
	if err := e.reader.Collect(ctx, rm); err != nil {
		// The callback only fails when the registry cannot be gathered at
		// all, which the scrape endpoint reports too.
		return
	}
	e.source.addHistograms(rm)
	if len(rm.ScopeMetrics) == 0 {
		return
	}
	e.q.Push(queue.NewParts(splitMetrics(rm, e.maxRequest)))
}

// sdkSender exports through an SDK exporter whose own retries are off: the
// queue retries, so that drops are counted in one place.
func sdkSender(exp sdkmetric.Exporter, classify func(error) error, timeout time.Duration) queue.SendFunc[*queue.Parts[*metricdata.ResourceMetrics]] {
	return queue.SendParts(func(ctx context.Context, rm *metricdata.ResourceMetrics) error {
		return classify(exp.Export(ctx, rm))
	}, timeout)
}
