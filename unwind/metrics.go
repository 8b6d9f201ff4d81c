package unwind

import "github.com/prometheus/client_golang/prometheus"

var (
	descCompiled = prometheus.NewDesc("cgscope_unwind_objects_compiled_total",
		"Objects whose unwind table was compiled from their call-frame information.", nil, nil)
	descNoTable = prometheus.NewDesc("cgscope_unwind_objects_without_table_total",
		"Objects that got no unwind table, by reason: no_frame_info (walked by frame pointers) or malformed (call-frame information that does not parse).",
		[]string{"reason"}, nil)
	descCompileSeconds = prometheus.NewDesc("cgscope_unwind_compile_seconds_total",
		"Time spent compiling unwind tables.", nil, nil)
	descLoadFailed = prometheus.NewDesc("cgscope_unwind_load_failures_total",
		"Unwind tables or process mappings the kernel maps refused (full: see --unwind.max-processes).", nil, nil)
	descEvicted = prometheus.NewDesc("cgscope_unwind_tables_evicted_total",
		"Unwind tables unloaded, by reason: unused (no process mapped the object for a minute) or space (room made under --unwind.max-table-bytes; the processes that map it are walked by frame pointers).",
		[]string{"reason"}, nil)
	descTables = prometheus.NewDesc("cgscope_unwind_tables",
		"Unwind tables loaded in the kernel, one per object, shared by every process that maps it.", nil, nil)
	descTableBytes = prometheus.NewDesc("cgscope_unwind_table_kernel_bytes",
		"Kernel memory of the loaded unwind tables (cgscope keeps no copy of their rows).", nil, nil)
	descRows = prometheus.NewDesc("cgscope_unwind_table_rows",
		"Rows of the loaded unwind tables.", nil, nil)
	descProcesses = prometheus.NewDesc("cgscope_unwind_processes",
		"Processes whose mappings the stack walker holds.", nil, nil)
	descRefreshes = prometheus.NewDesc("cgscope_unwind_mapping_refreshes_total",
		"Times a process's mappings were read again because the walker met code outside them.", nil, nil)
	descQueueDropped = prometheus.NewDesc("cgscope_unwind_notices_dropped_total",
		"Process notices the unwind worker lost to a full queue (those processes are walked by frame pointers).", nil, nil)
	descUnloadable = prometheus.NewDesc("cgscope_unwind_objects_unloadable_total",
		"Times an object's table found no room under --unwind.max-table-bytes (its code is walked by frame pointers; tried again a minute later).", nil, nil)
	descOnDemand = prometheus.NewDesc("cgscope_unwind_objects_on_demand",
		"Objects mapped by sampled processes whose unwind table is compiled only once the stack walker meets their code (call-frame information of --unwind.on-demand-bytes or more); until then that code is walked by frame pointers.", nil, nil)
	descWanted = prometheus.NewDesc("cgscope_unwind_tables_wanted_total",
		"Unwind tables compiled on demand, because the stack walker met the object's code.", nil, nil)
	descRangesDropped = prometheus.NewDesc("cgscope_unwind_ranges_dropped_total",
		"Executable mappings left out of processes with more than the walker holds (128; those of objects fewer processes map first).", nil, nil)
)

// Describe implements prometheus.Collector.
func (r *Registry) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCompiled, descNoTable, descCompileSeconds, descLoadFailed, descEvicted,
		descTables, descTableBytes, descRows, descProcesses, descRefreshes, descQueueDropped, descUnloadable, descRangesDropped, descOnDemand, descWanted} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: the registry's Stats.
func (r *Registry) Collect(ch chan<- prometheus.Metric) {
	st := r.Stats()
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	counter(descCompiled, float64(st.Compiled))
	counter(descNoTable, float64(st.NoFrameInfo), "no_frame_info")
	counter(descNoTable, float64(st.CompileFailed), "malformed")
	counter(descCompileSeconds, st.CompileSeconds)
	counter(descLoadFailed, float64(st.LoadFailed))
	for _, reason := range []string{EvictedUnused, EvictedSpace} {
		counter(descEvicted, float64(st.Evicted[reason]), reason)
	}
	gauge(descTables, float64(st.Tables))
	gauge(descTableBytes, float64(st.TableBytes))
	gauge(descRows, float64(st.Rows))
	gauge(descProcesses, float64(st.Processes))
	counter(descRefreshes, float64(st.Refreshes))
	counter(descQueueDropped, float64(st.QueueDropped))
	counter(descUnloadable, float64(st.Unloadable))
	counter(descRangesDropped, float64(st.RangesDropped))
	gauge(descOnDemand, float64(st.OnDemand))
	counter(descWanted, float64(st.Wanted))
}
