package pipeline

import "github.com/prometheus/client_golang/prometheus"

var (
	descUniqueStacks = prometheus.NewDesc("cgscope_profile_unique_stacks",
		"Unique (thread, cgroup, stack) keys in the last drained interval.", nil, nil)
	descDrains = prometheus.NewDesc("cgscope_profile_drains_total",
		"Times the kernel maps were drained into a profile window.", nil, nil)
	descDrainErrors = prometheus.NewDesc("cgscope_profile_drain_errors_total",
		"Drains of the kernel maps that failed.", nil, nil)
)

// Describe implements prometheus.Collector.
func (p *Pipeline) Describe(ch chan<- *prometheus.Desc) {
	ch <- descUniqueStacks
	ch <- descDrains
	ch <- descDrainErrors
}

// Collect implements prometheus.Collector: the pipeline's Stats.
func (p *Pipeline) Collect(ch chan<- prometheus.Metric) {
	st := p.Stats()
	ch <- prometheus.MustNewConstMetric(descUniqueStacks, prometheus.GaugeValue, float64(st.UniqueStacks))
	ch <- prometheus.MustNewConstMetric(descDrains, prometheus.CounterValue, float64(st.Windows))
	ch <- prometheus.MustNewConstMetric(descDrainErrors, prometheus.CounterValue, float64(st.DrainErrors))
}
