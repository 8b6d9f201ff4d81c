package remotewrite

import (
	"math"
	"sort"
	"strconv"

	writev2 "github.com/prometheus/client_golang/exp/api/remote/genproto/v2"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/prometheus/prompb"
)

// series is one sample of the exposition, named as /metrics names it.
type series struct {
	labels []prompb.Label // sorted by name, __name__ included
	value  float64
	family *dto.MetricFamily // for metadata
}

// flatten turns gathered families into the series /metrics shows:
// counters, gauges and untyped as they are; histograms as _bucket (with
// le, +Inf included), _sum and _count; summaries as quantiles, _sum and
// _count.
func flatten(families []*dto.MetricFamily) []series {
	var out []series
	for _, fam := range families {
		name := fam.GetName()
		for _, m := range fam.GetMetric() {
			add := func(suffix string, v float64, extra ...string) {
				out = append(out, series{labels: labelsOf(name+suffix, m.GetLabel(), extra...), value: v, family: fam})
			}
			switch {
			case m.GetCounter() != nil:
				add("", m.GetCounter().GetValue())
			case m.GetGauge() != nil:
				add("", m.GetGauge().GetValue())
			case m.GetUntyped() != nil:
				add("", m.GetUntyped().GetValue())
			case m.GetHistogram() != nil:
				flattenHistogram(m.GetHistogram(), add)
			case m.GetSummary() != nil:
				s := m.GetSummary()
				for _, q := range s.GetQuantile() {
					add("", q.GetValue(), "quantile", formatFloat(q.GetQuantile()))
				}
				add("_sum", s.GetSampleSum())
				add("_count", float64(s.GetSampleCount()))
			}
		}
	}
	return out
}

func flattenHistogram(h *dto.Histogram, add func(string, float64, ...string)) {
	infSeen := false
	for _, b := range h.GetBucket() {
		if math.IsInf(b.GetUpperBound(), +1) {
			infSeen = true
		}
		add("_bucket", float64(b.GetCumulativeCount()), "le", formatFloat(b.GetUpperBound()))
	}
	if !infSeen {
		add("_bucket", float64(h.GetSampleCount()), "le", "+Inf")
	}
	add("_sum", h.GetSampleSum())
	add("_count", float64(h.GetSampleCount()))
}

// formatFloat writes a bound as the text exposition does ("+Inf", "0.005").
func formatFloat(f float64) string {
	switch {
	case math.IsInf(f, +1):
		return "+Inf"
	case math.IsInf(f, -1):
		return "-Inf"
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// labelsOf builds the sorted label set the remote write spec requires.
func labelsOf(name string, pairs []*dto.LabelPair, extra ...string) []prompb.Label {
	ls := make([]prompb.Label, 0, len(pairs)+1+len(extra)/2)
	ls = append(ls, prompb.Label{Name: "__name__", Value: name})
	for _, p := range pairs {
		ls = append(ls, prompb.Label{Name: p.GetName(), Value: p.GetValue()})
	}
	for i := 0; i+1 < len(extra); i += 2 {
		ls = append(ls, prompb.Label{Name: extra[i], Value: extra[i+1]})
	}
	sort.Slice(ls, func(i, j int) bool { return ls[i].Name < ls[j].Name })
	return ls
}

// requestV1 is the Remote-Write 1.0 message, with each family's metadata.
func requestV1(ss []series, tsMillis int64) *prompb.WriteRequest {
	req := &prompb.WriteRequest{Timeseries: make([]prompb.TimeSeries, len(ss))}
	seen := map[*dto.MetricFamily]bool{}
	for i, s := range ss {
		req.Timeseries[i] = prompb.TimeSeries{
			Labels:  s.labels,
			Samples: []prompb.Sample{{Value: s.value, Timestamp: tsMillis}},
		}
		if !seen[s.family] {
			seen[s.family] = true
			req.Metadata = append(req.Metadata, prompb.MetricMetadata{
				Type: metadataTypeV1(s.family.GetType()), MetricFamilyName: s.family.GetName(), Help: s.family.GetHelp(),
			})
		}
	}
	return req
}

func metadataTypeV1(t dto.MetricType) prompb.MetricMetadata_MetricType {
	switch t {
	case dto.MetricType_COUNTER:
		return prompb.MetricMetadata_COUNTER
	case dto.MetricType_GAUGE:
		return prompb.MetricMetadata_GAUGE
	case dto.MetricType_HISTOGRAM:
		return prompb.MetricMetadata_HISTOGRAM
	case dto.MetricType_SUMMARY:
		return prompb.MetricMetadata_SUMMARY
	}
	return prompb.MetricMetadata_UNKNOWN
}

// requestV2 is the Remote-Write 2.0 message: interned symbols, metadata on
// every series.
func requestV2(ss []series, tsMillis int64) *writev2.Request {
	st := writev2.NewSymbolTable()
	req := &writev2.Request{Timeseries: make([]*writev2.TimeSeries, len(ss))}
	var buf []string
	for i, s := range ss {
		buf = buf[:0]
		for _, l := range s.labels {
			buf = append(buf, l.Name, l.Value)
		}
		req.Timeseries[i] = &writev2.TimeSeries{
			LabelsRefs: st.SymbolizeLabels(buf, nil),
			Samples:    []*writev2.Sample{{Value: s.value, Timestamp: tsMillis}},
			Metadata: &writev2.Metadata{
				Type:    metadataTypeV2(s.family.GetType()),
				HelpRef: st.Symbolize(s.family.GetHelp()),
			},
		}
	}
	req.Symbols = st.Symbols()
	return req
}

func metadataTypeV2(t dto.MetricType) writev2.Metadata_MetricType {
	switch t {
	case dto.MetricType_COUNTER:
		return writev2.Metadata_METRIC_TYPE_COUNTER
	case dto.MetricType_GAUGE:
		return writev2.Metadata_METRIC_TYPE_GAUGE
	case dto.MetricType_HISTOGRAM:
		return writev2.Metadata_METRIC_TYPE_HISTOGRAM
	case dto.MetricType_SUMMARY:
		return writev2.Metadata_METRIC_TYPE_SUMMARY
	}
	return writev2.Metadata_METRIC_TYPE_UNSPECIFIED
}
