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
	descMapsQueries = prometheus.NewDesc("cgscope_symbolizer_maps_queries_total",
		"Reads of /proc/PID/maps answered by the PROCMAP_QUERY ioctl (executable mappings only, with the kernel's build IDs) rather than by parsing its text.", nil, nil)
	descForkSnapshots = prometheus.NewDesc("cgscope_symbolizer_fork_snapshots_total",
		"New processes forked without an exec since, whose mappings snapshot is their parent's rather than a read of /proc/PID/maps.", nil, nil)
	descMappedObjects = prometheus.NewDesc("cgscope_symbolizer_mapped_objects",
		"Distinct objects mapped by the processes the symbolizer holds; an object no such process maps is closed.", nil, nil)
	descOpenFiles = prometheus.NewDesc("cgscope_symbolizer_open_files",
		"Object files the symbolizer holds open, one file descriptor each.", nil, nil)
	descProcessBytes = prometheus.NewDesc("cgscope_symbolizer_process_bytes",
		"Estimated heap bytes of the process mappings snapshots held (JIT symbol tables not included).", nil, nil)
	descProcessReleases = prometheus.NewDesc("cgscope_symbolizer_process_releases_total",
		"Process snapshots released, by reason: exited (the process exited and its last samples were symbolized) or evicted (pushed out by --symbolizer.max-processes).",
		[]string{"reason"}, nil)
	descObjectReleases = prometheus.NewDesc("cgscope_symbolizer_object_releases_total",
		"Objects closed, by reason: unmapped (no process the symbolizer holds maps it any more) or evicted (pushed out by --symbolizer.max-objects).",
		[]string{"reason"}, nil)
	descPerfMapBadLines = prometheus.NewDesc("cgscope_symbolizer_perf_map_bad_lines_total",
		"Unparsable lines skipped in JIT symbol files (/tmp/perf-PID.map).", nil, nil)
)

// Describe implements prometheus.Collector.
func (s *Symbolizer) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descFrames, descErrors, descObjCache, descFrameCache, descObjects, descProcesses,
		descMapsReads, descMapsQueries, descForkSnapshots, descPerfMapBadLines, descMappedObjects, descOpenFiles, descProcessBytes, descProcessReleases,
		descObjectReleases} {
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
	counter(descMapsQueries, st.MapsQueries)
	counter(descForkSnapshots, st.ForkSnapshots)
	counter(descPerfMapBadLines, st.PerfMapBadLines)
	counter(descProcessReleases, st.ProcessesForgotten, "exited")
	counter(descProcessReleases, st.ProcessesEvicted, "evicted")
	counter(descObjectReleases, st.ObjectsUnmapped, "unmapped")
	counter(descObjectReleases, st.ObjectsEvicted, "evicted")
	gauge := func(d *prometheus.Desc, v int) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v))
	}
	gauge(descObjects, st.ObjectsCached)
	gauge(descProcesses, st.ProcessesCached)
	gauge(descMappedObjects, st.ObjectsMapped)
	gauge(descOpenFiles, st.OpenFiles)
	gauge(descProcessBytes, st.ProcessBytes)
}
