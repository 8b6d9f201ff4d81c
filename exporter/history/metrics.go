package history

import "github.com/prometheus/client_golang/prometheus"

func historyDesc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("cgscope_history_"+name, help, labels, nil)
}

var (
	descRecords        = historyDesc("records", "Records (profiling windows and their dictionary records) held in the history store.")
	descBytes          = historyDesc("bytes", "Bytes the history store holds (files on disk, or data in memory).")
	descWritten        = historyDesc("records_written_total", "Records written to the history store.")
	descWrittenBytes   = historyDesc("written_bytes_total", "Record bytes written to the history store.")
	descEvicted        = historyDesc("records_evicted_total", "Records evicted from the history store, by reason (size, age).", "reason")
	descCorrupt        = historyDesc("corrupt_skipped_total", "Torn or corrupted records, unreadable segment files, and windows undecodable because a dictionary record they use was lost, skipped.", "kind")
	descWriteErrors    = historyDesc("write_errors_total", "Failed writes to the history store.")
	descWindowsDropped = historyDesc("windows_dropped_total", "Profiling windows dropped because the history writer fell behind.")
	descEncodeErrors   = historyDesc("encode_errors_total", "Profiling windows that could not be encoded (their generation's dictionary is full) and were not stored.")
)

// Describe implements prometheus.Collector.
func (h *History) Describe(ch chan<- *prometheus.Desc) {
	prometheus.DescribeByCollect(h, ch)
}

// Collect implements prometheus.Collector: the History's counters and its
// store's Stats.
func (h *History) Collect(ch chan<- prometheus.Metric) {
	st := h.st.Stats()
	g := func(d *prometheus.Desc, t prometheus.ValueType, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, t, v, l...)
	}
	g(descRecords, prometheus.GaugeValue, float64(st.Records))
	g(descBytes, prometheus.GaugeValue, float64(st.Bytes))
	g(descWritten, prometheus.CounterValue, float64(st.Appended))
	g(descWrittenBytes, prometheus.CounterValue, float64(st.AppendedBytes))
	g(descEvicted, prometheus.CounterValue, float64(st.EvictedSize), "size")
	g(descEvicted, prometheus.CounterValue, float64(st.EvictedAge), "age")
	g(descCorrupt, prometheus.CounterValue, float64(st.CorruptRecords), "record")
	g(descCorrupt, prometheus.CounterValue, float64(st.CorruptFiles), "file")
	g(descCorrupt, prometheus.CounterValue, float64(h.undecodable.Load()), "window")
	g(descWriteErrors, prometheus.CounterValue, float64(st.WriteErrors))
	g(descWindowsDropped, prometheus.CounterValue, float64(h.dropped.Load()))
	g(descEncodeErrors, prometheus.CounterValue, float64(h.encErrs.Load()))
}
