package cgroupmetrics

import (
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"

	"github.com/cgscope/cgscope/collector"
)

// The per-cgroup metrics skip client_golang's registry: with thousands of
// cgroups times twenty series, a registry spends most of a scrape building,
// sorting and re-checking label pairs one constant metric at a time. The
// collector instead builds each cgroup's label pairs once, shares them
// among its series, and writes metric families directly (familySink); it is
// served beside the registry by CombineGatherers.

// labelPairs returns name=value pairs sorted by name, as the exposition
// formats want them. Values are made valid UTF-8 (a cgroup directory name
// is any bytes), so a strange path cannot break a scrape.
func labelPairs(names, values []string) []*dto.LabelPair {
	pairs := make([]*dto.LabelPair, len(names))
	for i := range names {
		pairs[i] = &dto.LabelPair{Name: proto.String(names[i]), Value: proto.String(strings.ToValidUTF8(values[i], "\uFFFD"))}
	}
	slices.SortFunc(pairs, func(a, b *dto.LabelPair) int { return strings.Compare(a.GetName(), b.GetName()) })
	return pairs
}

// familySink collects one scrape's families in the order first added.
type familySink struct {
	families map[*collector.Metric]*dto.MetricFamily
	order    []*dto.MetricFamily
	extras   map[string]*dto.LabelPair // interned extra label pairs ("kind"="minor", ...)
}

func newFamilySink() *familySink {
	return &familySink{families: map[*collector.Metric]*dto.MetricFamily{}, extras: map[string]*dto.LabelPair{}}
}

func (s *familySink) family(m *collector.Metric) *dto.MetricFamily {
	f := s.families[m]
	if f == nil {
		f = &dto.MetricFamily{Name: proto.String(m.Name), Help: proto.String(m.Help), Type: metricTypes[m.Kind].Enum()}
		s.families[m] = f
		s.order = append(s.order, f)
	}
	return f
}

// labels returns base (sorted) with m's extra labels merged in by name.
func (s *familySink) labels(m *collector.Metric, base []*dto.LabelPair, extra []string) []*dto.LabelPair {
	if len(extra) == 0 {
		return base
	}
	out := make([]*dto.LabelPair, 0, len(base)+len(extra))
	out = append(out, base...)
	for i, v := range extra {
		out = append(out, s.extra(m.Labels[i], v))
	}
	slices.SortFunc(out, func(a, b *dto.LabelPair) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out
}

func (s *familySink) extra(name, value string) *dto.LabelPair {
	k := name + "\x00" + value
	p := s.extras[k]
	if p == nil {
		p = &dto.LabelPair{Name: proto.String(name), Value: proto.String(value)}
		s.extras[k] = p
	}
	return p
}

// add adds a counter or gauge sample.
func (s *familySink) add(m *collector.Metric, base []*dto.LabelPair, v float64, extra ...string) {
	f := s.family(m)
	metric := &dto.Metric{Label: s.labels(m, base, extra)}
	if m.Kind == collector.Counter {
		metric.Counter = &dto.Counter{Value: proto.Float64(v)}
	} else {
		metric.Gauge = &dto.Gauge{Value: proto.Float64(v)}
	}
	f.Metric = append(f.Metric, metric)
}

// histogram adds a histogram from per-bucket counts (the last is +Inf).
func (s *familySink) histogram(m *collector.Metric, base []*dto.LabelPair, counts []uint64, sum float64) {
	buckets := make([]*dto.Bucket, len(m.Buckets))
	var cum uint64
	for i, le := range m.Buckets {
		cum += counts[i]
		buckets[i] = &dto.Bucket{CumulativeCount: proto.Uint64(cum), UpperBound: proto.Float64(le)}
	}
	cum += counts[len(m.Buckets)]
	s.family(m).Metric = append(s.family(m).Metric, &dto.Metric{Label: base,
		Histogram: &dto.Histogram{SampleCount: proto.Uint64(cum), SampleSum: proto.Float64(sum), Bucket: buckets}})
}

var metricTypes = map[collector.Kind]dto.MetricType{
	collector.Counter:   dto.MetricType_COUNTER,
	collector.Gauge:     dto.MetricType_GAUGE,
	collector.Histogram: dto.MetricType_HISTOGRAM,
}

// seriesSink hands one cgroup's series, under its label pairs, to a
// familySink: it is the collector.Sink a collector emits into.
type seriesSink struct {
	out   *familySink
	pairs []*dto.LabelPair
}

func (s *seriesSink) Add(m *collector.Metric, v float64, labelValues ...string) {
	s.out.add(m, s.pairs, v, labelValues...)
}

func (s *seriesSink) Histogram(m *collector.Metric, counts []uint64, sum float64) {
	s.out.histogram(m, s.pairs, counts, sum)
}

// CombineGatherers serves the registry's families and then the cgroup
// collector's. Unlike prometheus.Gatherers it does not re-check and re-sort
// every series (the collector's families are distinct and well-formed by
// construction), which is most of the cost it would add.
func CombineGatherers(reg prometheus.Gatherer, cgroups *Collector) prometheus.Gatherer {
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		mfs, err := reg.Gather()
		if err != nil {
			return mfs, err
		}
		cg, err := cgroups.Gather()
		return append(mfs, cg...), err
	})
}
