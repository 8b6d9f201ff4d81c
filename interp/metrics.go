package interp

import "github.com/prometheus/client_golang/prometheus"

var (
	descProcesses = prometheus.NewDesc("cgscope_interpreter_processes_total",
		"Processes whose interpreter was looked for, by runtime and result: profiled (its interpreted frames are in its stacks), unsupported_version (a version cgscope has no layout for; logged once per binary), unsupported_build (its structures failed the checks of its version's layout), not_initialized (its interpreter did not start while it was tried), error (its memory could not be read). All but profiled are profiled natively.",
		[]string{"runtime", "result"}, nil)
	descWalked = prometheus.NewDesc("cgscope_interpreter_processes",
		"Processes whose interpreter stacks the samplers walk now, by runtime.",
		[]string{"runtime"}, nil)
	descFrames = prometheus.NewDesc("cgscope_interpreter_frames_total",
		"Interpreted frames put into profiles, by runtime and result: named, or unnamed (what named them could not be read from the process).",
		[]string{"runtime", "result"}, nil)
	descCacheBytes = prometheus.NewDesc("cgscope_interpreter_cache_bytes",
		"Memory of the names, files and line tables read from interpreted processes and cached (bounded by --profiling.interpreters.cache-size).", nil, nil)
	descCacheEvictions = prometheus.NewDesc("cgscope_interpreter_cache_evictions_total",
		"Entries evicted from the interpreter cache to stay within its size.", nil, nil)
	descNoticesDropped = prometheus.NewDesc("cgscope_interpreter_notices_dropped_total",
		"Process notices the interpreter worker lost to a full queue (those processes are profiled natively).", nil, nil)
)

// Describe implements prometheus.Collector.
func (r *Registry) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descProcesses, descWalked, descFrames, descCacheBytes, descCacheEvictions, descNoticesDropped} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: the registry's Stats.
func (r *Registry) Collect(ch chan<- prometheus.Metric) {
	st := r.Stats()
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for name, results := range st.Processes {
		for _, res := range Results {
			counter(descProcesses, float64(results[res]), name, res)
		}
		gauge(descWalked, float64(st.Walked[name]), name)
		counter(descFrames, float64(st.FramesNamed[name]), name, "named")
		counter(descFrames, float64(st.FramesUnnamed[name]), name, "unnamed")
	}
	gauge(descCacheBytes, float64(st.Cache.Bytes))
	counter(descCacheEvictions, float64(st.Cache.Evictions))
	counter(descNoticesDropped, float64(st.NoticesDropped))
}
