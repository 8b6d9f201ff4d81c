package profiler

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	descSamples = prometheus.NewDesc("cgscope_samples_total",
		"CPU samples taken by the BPF sampler (idle CPUs are not sampled).", nil, nil)
	descDropped = prometheus.NewDesc("cgscope_samples_dropped_total",
		"Samples lost or stripped of their stack, by reason: counts_map_full (sample lost; raise --profiling.max-sample-keys), stacks_map_full (stack lost, sample kept; raise --profiling.max-stacks), stack_hash_collision (stack lost, sample kept), process_events_full (new-process notice lost; its frames may stay unsymbolized).",
		[]string{"reason"}, nil)
)

// Describe implements prometheus.Collector.
func (s *Sampler) Describe(ch chan<- *prometheus.Desc) {
	ch <- descSamples
	ch <- descDropped
}

// Collect implements prometheus.Collector: the sampler's Stats.
func (s *Sampler) Collect(ch chan<- prometheus.Metric) {
	st, err := s.Stats()
	if err != nil {
		slog.Warn("reading sampler stats", "err", err)
		ch <- prometheus.NewInvalidMetric(descSamples, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(descSamples, prometheus.CounterValue, float64(st.Samples))
	for _, reason := range DropReasons {
		ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(st.Dropped[reason]), reason)
	}
}
