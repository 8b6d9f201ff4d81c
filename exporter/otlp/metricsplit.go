package otlp

import (
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
)

// OTLP metrics carry every data point's attributes in full (there is no
// dictionary), so one collection of 1,000 cgroups, some 25 series each with
// the cgroup path and the container's and pod's ids and names, is several
// MiB: over the 4 MiB a gRPC server accepts by default. splitMetrics cuts
// a collection into ResourceMetrics that each stay under a size. The SDK's
// exporter encodes them, so the size is an estimate from the data points
// themselves, made to be above the encoded size (see pointSize).

// metricsHeadroom is what a request holds beyond its metrics: the
// resource and the scopes.
const metricsHeadroom = 64 << 10

// splitMetrics returns rm whole when its estimated size is under limit,
// else parts of it that each are: every metric's data points, in order,
// over as many ResourceMetrics as needed, each with rm's resource and the
// metric's scope, name, unit and kind. The points are sized once, by the
// packer; one part means rm fits.
func splitMetrics(rm *metricdata.ResourceMetrics, limit int) []*metricdata.ResourceMetrics {
	if limit <= 0 {
		limit = DefaultMaxRequestSize
	}
	p := &metricsPacker{budget: max(limit-metricsHeadroom, limit/2), resource: rm.Resource}
	p.newPart()
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			p.addMetric(sm, m)
		}
	}
	if len(p.parts) == 1 {
		return []*metricdata.ResourceMetrics{rm}
	}
	return p.parts
}

// metricHeaderSize bounds what a metric takes besides its points, in each
// request it is in: name, description, unit, and the tags and lengths of
// the Metric and its Sum, Gauge or Histogram (with temporality and
// monotonicity).
func metricHeaderSize(m metricdata.Metrics) int {
	return len(m.Name) + len(m.Description) + len(m.Unit) + 32
}

// metricsPacker fills parts in order, starting a part when the next data
// point would take the current one over budget.
type metricsPacker struct {
	budget   int
	resource *resource.Resource
	parts    []*metricdata.ResourceMetrics
	used     int // estimated bytes of the last part
}

func (p *metricsPacker) newPart() {
	p.parts = append(p.parts, &metricdata.ResourceMetrics{Resource: p.resource})
	p.used = 0
}

// addMetric adds m's points, as runs that each fit a part with the
// metric's header (which each part the metric is in repeats). A point
// larger than a whole part gets a part of its own.
func (p *metricsPacker) addMetric(sm metricdata.ScopeMetrics, m metricdata.Metrics) {
	sizes, keep := dataPoints(m.Data)
	if sizes == nil { // a kind cgscope does not make: sent whole
		p.place(sm, m, 0)
		return
	}
	points := func(from, to int) metricdata.Metrics {
		part := m
		part.Data = keep(from, to)
		return part
	}
	header := metricHeaderSize(m)
	start, run := 0, header
	for i, s := range sizes {
		if p.used+run+s > p.budget && p.used+run > header {
			if i > start {
				p.place(sm, points(start, i), run-header)
			}
			p.newPart()
			start, run = i, header
		}
		run += s
	}
	if len(sizes) > start {
		p.place(sm, points(start, len(sizes)), run-header)
	}
}

// place appends m (of scope sm), whose points are size bytes, to the last
// part.
func (p *metricsPacker) place(sm metricdata.ScopeMetrics, m metricdata.Metrics, size int) {
	part := p.parts[len(p.parts)-1]
	if n := len(part.ScopeMetrics); n == 0 || part.ScopeMetrics[n-1].Scope != sm.Scope {
		part.ScopeMetrics = append(part.ScopeMetrics, metricdata.ScopeMetrics{Scope: sm.Scope})
	}
	last := &part.ScopeMetrics[len(part.ScopeMetrics)-1]
	last.Metrics = append(last.Metrics, m)
	p.used += size + metricHeaderSize(m)
}

// dataPoints estimates each data point of data's encoded size, and gives
// a way to keep only some of them; nil sizes for kinds cgscope does not
// make.
func dataPoints(data metricdata.Aggregation) (sizes []int, keep func(from, to int) metricdata.Aggregation) {
	switch d := data.(type) {
	case metricdata.Sum[int64]:
		return numberPointSizes(d.DataPoints), func(f, t int) metricdata.Aggregation { c := d; c.DataPoints = d.DataPoints[f:t]; return c }
	case metricdata.Sum[float64]:
		return numberPointSizes(d.DataPoints), func(f, t int) metricdata.Aggregation { c := d; c.DataPoints = d.DataPoints[f:t]; return c }
	case metricdata.Gauge[int64]:
		return numberPointSizes(d.DataPoints), func(f, t int) metricdata.Aggregation { c := d; c.DataPoints = d.DataPoints[f:t]; return c }
	case metricdata.Gauge[float64]:
		return numberPointSizes(d.DataPoints), func(f, t int) metricdata.Aggregation { c := d; c.DataPoints = d.DataPoints[f:t]; return c }
	case metricdata.Histogram[float64]:
		return histogramPointSizes(d.DataPoints), func(f, t int) metricdata.Aggregation { c := d; c.DataPoints = d.DataPoints[f:t]; return c }
	case metricdata.Histogram[int64]:
		return histogramPointSizes(d.DataPoints), func(f, t int) metricdata.Aggregation { c := d; c.DataPoints = d.DataPoints[f:t]; return c }
	}
	return nil, nil
}

// pointSize bounds the protobuf of a data point from above: per attribute
// its key and value and at most 16 bytes of tags and lengths (KeyValue,
// its key, AnyValue and its string: four tags and four lengths, each
// length a varint of at most 3 bytes for values under 2 MiB); 64 bytes for
// the point's own tag and length, two timestamps, value and flags.
// Exemplars, which would add more, are off (newMeterProvider).
const (
	pointOverhead     = 64
	attributeOverhead = 16
)

func attributesSize(s attribute.Set) int {
	n := 0
	for it := s.Iter(); it.Next(); {
		kv := it.Attribute()
		n += len(kv.Key) + len(kv.Value.Emit()) + attributeOverhead
	}
	return n
}

func numberPointSizes[N int64 | float64](points []metricdata.DataPoint[N]) []int {
	sizes := make([]int, len(points))
	for i := range points {
		sizes[i] = pointOverhead + attributesSize(points[i].Attributes)
	}
	return sizes
}

// histogramPointSizes adds count, sum, min, max (9 bytes each) and the
// packed bounds and bucket counts (8 bytes each, and their lengths).
func histogramPointSizes[N int64 | float64](points []metricdata.HistogramDataPoint[N]) []int {
	sizes := make([]int, len(points))
	for i := range points {
		p := &points[i]
		sizes[i] = pointOverhead + attributesSize(p.Attributes) + 4*9 + 8*(len(p.Bounds)+len(p.BucketCounts)) + 2*6
	}
	return sizes
}
