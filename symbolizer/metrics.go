package symbolizer

import "github.com/prometheus/client_golang/prometheus"

var (
	descFrames = prometheus.NewDesc("cgscope_symbolizer_frames_total",
		"Stack frames symbolized, by result: hit (named) or miss (kept as address and mapping).",
		[]string{"result"}, nil)
	descErrors = prometheus.NewDesc("cgscope_symbolizer_errors_total",
		"Errors reading /proc/PID/maps or opening and parsing mapped objects.", nil, nil)
	descObjCache = prometheus.NewDesc("cgscope_symbolizer_object_cache_total",
		"Lookups of parsed ELF objects in the symbolizer cache, by result.", []string{"result"}, nil)
	descFrameCache = prometheus.NewDesc("cgscope_symbolizer_frame_cache_total",
		"Lookups of user frames in the symbolizer's cache of recently named object addresses, by result (a miss reads the object's tables).", []string{"result"}, nil)
	descObjects = prometheus.NewDesc("cgscope_symbolizer_cached_objects",
		"Parsed ELF objects held in the symbolizer cache.", nil, nil)
	descProcesses = prometheus.NewDesc("cgscope_symbolizer_cached_processes",
		"Processes whose memory mappings the symbolizer holds.", nil, nil)
	descMapsReads = prometheus.NewDesc("cgscope_symbolizer_maps_reads_total",
		"Reads of /proc/PID/maps: the first snapshot of a process, and re-reads after an address fell outside every known mapping.", nil, nil)
	descPerfMapBadLines = prometheus.NewDesc("cgscope_symbolizer_perf_map_bad_lines_total",
		"Unparsable lines skipped in JIT symbol files (/tmp/perf-PID.map).", nil, nil)
)

// Describe implements prometheus.Collector.
func (s *Symbolizer) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descFrames, descErrors, descObjCache, descFrameCache, descObjects, descProcesses,
		descMapsReads, descPerfMapBadLines} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: the symbolizer's Stats.
func (s *Symbolizer) Collect(ch chan<- prometheus.Metric) {
	st := s.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(descFrames, st.FramesSymbolized, "hit")
	counter(descFrames, st.FramesUnsymbolized, "miss")
	counter(descErrors, st.Errors)
	counter(descObjCache, st.ObjectCacheHits, "hit")
	counter(descObjCache, st.ObjectCacheMisses, "miss")
	counter(descFrameCache, st.FrameCacheHits, "hit")
	counter(descFrameCache, st.FrameCacheMisses, "miss")
	counter(descMapsReads, st.MapsReads)
	counter(descPerfMapBadLines, st.PerfMapBadLines)
	ch <- prometheus.MustNewConstMetric(descObjects, prometheus.GaugeValue, float64(st.ObjectsCached))
	ch <- prometheus.MustNewConstMetric(descProcesses, prometheus.GaugeValue, float64(st.ProcessesCached))
}
