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
	descUserFrames = prometheus.NewDesc("cgscope_user_frames_total",
		"User frames the BPF stack walker found, by how it found the caller: table (an unwind table compiled from .eh_frame) or frame_pointer. Processes without tables are walked by the kernel and not counted here.",
		[]string{"method"}, nil)
	descUserStacks = prometheus.NewDesc("cgscope_user_stacks_total",
		"User stacks sampled, by how their walk ended: complete, frame_pointers (the kernel's walk, for processes without unwind tables), or truncated: depth_limit, read_failed, unsupported_rule, outside_mappings, bad_frame (these end with a [truncated: reason] frame in profiles).",
		[]string{"end"}, nil)
)

// Describe implements prometheus.Collector.
func (s *Sampler) Describe(ch chan<- *prometheus.Desc) {
	ch <- descSamples
	ch <- descDropped
	ch <- descUserFrames
	ch <- descUserStacks
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
	for method, n := range st.UserFrames {
		ch <- prometheus.MustNewConstMetric(descUserFrames, prometheus.CounterValue, float64(n), method)
	}
	for _, end := range StackEnds {
		ch <- prometheus.MustNewConstMetric(descUserStacks, prometheus.CounterValue, float64(st.UserStacks[end]), end)
	}
}
