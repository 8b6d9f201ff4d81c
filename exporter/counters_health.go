package exporter

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cgscope/cgscope/profiler"
)

// CounterHealthSource is what the per-cgroup counter programs say about
// themselves.
type CounterHealthSource interface {
	Collectors() []profiler.CollectorStatus
	Dropped() (map[string]uint64, error)
}

// CounterHealthCollector exposes which collectors run and what the counter
// programs lost.
type CounterHealthCollector struct{ src CounterHealthSource }

// NewCounterHealthCollector reads src at scrape time.
func NewCounterHealthCollector(src CounterHealthSource) *CounterHealthCollector {
	return &CounterHealthCollector{src: src}
}

var (
	descCollectorEnabled = prometheus.NewDesc("cgscope_collector_enabled",
		"Whether a collector runs: 1 running, 0 disabled by flag or because the kernel lacks its attach point (see the log).",
		[]string{"collector"}, nil)
	descCounterDrops = prometheus.NewDesc("cgscope_cgroup_counter_events_dropped_total",
		"Events the per-cgroup counter programs could not count, by reason: cgroups_map_full (raise --cgroup.max-tracked), tasks_map_full (raise --cgroup.max-tasks), sockets_map_full (raise --cgroup.max-sockets).",
		[]string{"reason"}, nil)
)

// Describe implements prometheus.Collector.
func (c *CounterHealthCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descCollectorEnabled
	ch <- descCounterDrops
}

// Collect implements prometheus.Collector.
func (c *CounterHealthCollector) Collect(ch chan<- prometheus.Metric) {
	for _, st := range c.src.Collectors() {
		ch <- prometheus.MustNewConstMetric(descCollectorEnabled, prometheus.GaugeValue, boolFloat(st.Enabled), st.Name)
	}
	if drops, err := c.src.Dropped(); err != nil {
		ch <- prometheus.NewInvalidMetric(descCounterDrops, err)
	} else {
		for _, reason := range profiler.CgroupDropReasons {
			ch <- prometheus.MustNewConstMetric(descCounterDrops, prometheus.CounterValue, float64(drops[reason]), reason)
		}
	}
}
