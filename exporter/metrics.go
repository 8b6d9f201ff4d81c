package exporter

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cgscope/cgscope/internal/pipeline"
	"github.com/cgscope/cgscope/profiler"
	"github.com/cgscope/cgscope/symbolizer"
)

// SamplerSource is what the self-metrics read from the kernel side.
type SamplerSource interface {
	Stats() (profiler.Stats, error)
}

// SelfCollector exposes the agent's own health as Prometheus metrics: what
// was sampled, what was lost and why, what symbolization achieved, and what
// the BPF programs cost according to the kernel's bpf_stats.
type SelfCollector struct {
	sampler  SamplerSource
	sym      func() symbolizer.Stats
	pipeline func() pipeline.Stats
}

// NewSelfCollector reads its figures from the given sources at scrape time.
func NewSelfCollector(s SamplerSource, sym func() symbolizer.Stats, p func() pipeline.Stats) *SelfCollector {
	return &SelfCollector{sampler: s, sym: sym, pipeline: p}
}

var (
	descSamples = prometheus.NewDesc("cgscope_samples_total",
		"CPU samples taken by the BPF sampler (idle CPUs are not sampled).", nil, nil)
	descDropped = prometheus.NewDesc("cgscope_samples_dropped_total",
		"Samples lost or stripped of their stack, by reason: counts_map_full (sample lost; raise --profiling.max-sample-keys), stacks_map_full (stack lost, sample kept; raise --profiling.max-stacks), stack_hash_collision (stack lost, sample kept), process_events_full (new-process notice lost; its frames may stay unsymbolized).",
		[]string{"reason"}, nil)
	descUniqueStacks = prometheus.NewDesc("cgscope_profile_unique_stacks",
		"Unique (thread, cgroup, stack) keys in the last drained interval.", nil, nil)
	descDrains = prometheus.NewDesc("cgscope_profile_drains_total",
		"Times the kernel maps were drained into a profile window.", nil, nil)
	descDrainErrors = prometheus.NewDesc("cgscope_profile_drain_errors_total",
		"Drains of the kernel maps that failed.", nil, nil)
	descFrames = prometheus.NewDesc("cgscope_symbolizer_frames_total",
		"Stack frames symbolized, by result: hit (named) or miss (kept as address and mapping).",
		[]string{"result"}, nil)
	descSymErrors = prometheus.NewDesc("cgscope_symbolizer_errors_total",
		"Errors reading /proc/PID/maps or opening and parsing mapped objects.", nil, nil)
	descObjCache = prometheus.NewDesc("cgscope_symbolizer_object_cache_total",
		"Lookups of parsed ELF objects in the symbolizer cache, by result.", []string{"result"}, nil)
	descFrameCache = prometheus.NewDesc("cgscope_symbolizer_frame_cache_total",
		"Lookups of user frames in the symbolizer's cache of recently named object addresses, by result (a miss reads the object's tables).", []string{"result"}, nil)
	descObjects = prometheus.NewDesc("cgscope_symbolizer_cached_objects",
		"Parsed ELF objects held in the symbolizer cache.", nil, nil)
	descProcesses = prometheus.NewDesc("cgscope_symbolizer_cached_processes",
		"Processes whose memory mappings the symbolizer holds.", nil, nil)
)

// Describe implements prometheus.Collector.
func (c *SelfCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSamples, descDropped, descUniqueStacks, descDrains, descDrainErrors,
		descFrames, descSymErrors, descObjCache, descFrameCache, descObjects, descProcesses} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *SelfCollector) Collect(ch chan<- prometheus.Metric) {
	c.collectSampler(ch)
	c.collectSymbolizer(ch)
	ps := c.pipeline()
	ch <- prometheus.MustNewConstMetric(descUniqueStacks, prometheus.GaugeValue, float64(ps.UniqueStacks))
	ch <- prometheus.MustNewConstMetric(descDrains, prometheus.CounterValue, float64(ps.Windows))
	ch <- prometheus.MustNewConstMetric(descDrainErrors, prometheus.CounterValue, float64(ps.DrainErrors))
}

func (c *SelfCollector) collectSampler(ch chan<- prometheus.Metric) {
	st, err := c.sampler.Stats()
	if err != nil {
		slog.Warn("reading sampler stats", "err", err)
		ch <- prometheus.NewInvalidMetric(descSamples, err)
	} else {
		ch <- prometheus.MustNewConstMetric(descSamples, prometheus.CounterValue, float64(st.Samples))
		for _, reason := range profiler.DropReasons {
			ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(st.Dropped[reason]), reason)
		}
	}
}

func (c *SelfCollector) collectSymbolizer(ch chan<- prometheus.Metric) {
	s := c.sym()
	ch <- prometheus.MustNewConstMetric(descFrames, prometheus.CounterValue, float64(s.FramesSymbolized), "hit")
	ch <- prometheus.MustNewConstMetric(descFrames, prometheus.CounterValue, float64(s.FramesUnsymbolized), "miss")
	ch <- prometheus.MustNewConstMetric(descSymErrors, prometheus.CounterValue, float64(s.Errors))
	ch <- prometheus.MustNewConstMetric(descObjCache, prometheus.CounterValue, float64(s.ObjectCacheHits), "hit")
	ch <- prometheus.MustNewConstMetric(descObjCache, prometheus.CounterValue, float64(s.ObjectCacheMisses), "miss")
	ch <- prometheus.MustNewConstMetric(descFrameCache, prometheus.CounterValue, float64(s.FrameCacheHits), "hit")
	ch <- prometheus.MustNewConstMetric(descFrameCache, prometheus.CounterValue, float64(s.FrameCacheMisses), "miss")
	ch <- prometheus.MustNewConstMetric(descObjects, prometheus.GaugeValue, float64(s.ObjectsCached))
	ch <- prometheus.MustNewConstMetric(descProcesses, prometheus.GaugeValue, float64(s.ProcessesCached))
}
