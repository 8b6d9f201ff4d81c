package dutycycle

import "github.com/prometheus/client_golang/prometheus"

var (
	descDuty = prometheus.NewDesc("cgscope_scheduler_programs_duty_ratio",
		"Fraction of the last second the programs that run at every context switch (off-CPU sampler, run-queue latency histogram) were attached: 1 on a quiet host, less where the switch rate would take them over --scheduler.bpf-budget. What they count is scaled by its inverse.", nil, nil)
	descAttached = prometheus.NewDesc("cgscope_scheduler_programs_attached_seconds_total",
		"Time the programs that run at every context switch were attached.", nil, nil)
	descCost = prometheus.NewDesc("cgscope_scheduler_programs_cost_ratio",
		"BPF CPU time the programs that run at every context switch take per second attached, as last measured (bpf_stats, or an estimate from the switches they saw).", nil, nil)
	descPeriod = prometheus.NewDesc("cgscope_scheduler_programs_period_seconds",
		"Length of the last period of the programs that run at every context switch: each holds one window attached.", nil, nil)
	descToggle = prometheus.NewDesc("cgscope_scheduler_programs_toggle_seconds_total",
		"CPU time cgscope spent attaching and detaching the programs that run at every context switch (kernel text is patched on every CPU each time); the period grows to keep it a small share of the budget.", nil, nil)
	descBudget = prometheus.NewDesc("cgscope_scheduler_programs_budget_ratio",
		"BPF CPU time per second the programs that run at every context switch may use together (--scheduler.bpf-budget).", nil, nil)
)

// Describe implements prometheus.Collector.
func (c *Controller) Describe(ch chan<- *prometheus.Desc) {
	ch <- descDuty
	ch <- descAttached
	ch <- descCost
	ch <- descPeriod
	ch <- descToggle
	ch <- descBudget
}

// Collect implements prometheus.Collector.
func (c *Controller) Collect(ch chan<- prometheus.Metric) {
	st := c.Stats()
	ch <- prometheus.MustNewConstMetric(descDuty, prometheus.GaugeValue, st.Duty)
	ch <- prometheus.MustNewConstMetric(descAttached, prometheus.CounterValue, st.Attached.Seconds())
	ch <- prometheus.MustNewConstMetric(descCost, prometheus.GaugeValue, st.Cost.Seconds())
	ch <- prometheus.MustNewConstMetric(descPeriod, prometheus.GaugeValue, st.Period.Seconds())
	ch <- prometheus.MustNewConstMetric(descToggle, prometheus.CounterValue, st.Toggling.Seconds())
	ch <- prometheus.MustNewConstMetric(descBudget, prometheus.GaugeValue, c.cfg.Budget.Seconds())
}
