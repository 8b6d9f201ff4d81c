package collector

import "github.com/prometheus/client_golang/prometheus"

var (
	descEnabled = prometheus.NewDesc("cgscope_collector_enabled",
		"Whether a per-cgroup collector runs: 1 running, 0 disabled by flag, unsupported by the kernel, or failed to start (see the log).",
		[]string{"collector"}, nil)
	descDropped = prometheus.NewDesc("cgscope_cgroup_counter_events_dropped_total",
		"Events the per-cgroup counter programs could not count, by reason: cgroups_map_full (raise --cgroup.max-tracked), tasks_map_full (a collection found no room for a thread, whose figures are then counted only when it ends, or not at all if it was running when cgscope started; raise --cgroup.max-tasks), sockets_map_full (raise --cgroup.max-sockets).",
		[]string{"reason"}, nil)
)

// Describe implements prometheus.Collector.
func (s *Set) Describe(ch chan<- *prometheus.Desc) {
	ch <- descEnabled
	ch <- descDropped
}

// Collect implements prometheus.Collector: whether each collector of Table
// runs, and what the counter programs lost (when any runs).
func (s *Set) Collect(ch chan<- prometheus.Metric) {
	for _, st := range s.status {
		v := 0.0
		if st.Enabled {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descEnabled, prometheus.GaugeValue, v, st.Name)
	}
	if s.counters == nil {
		return
	}
	drops, err := s.counters.Dropped()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descDropped, err)
		return
	}
	for _, reason := range DropReasons {
		ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(drops[reason]), reason)
	}
}
