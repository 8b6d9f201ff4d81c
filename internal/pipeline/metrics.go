package pipeline

import "github.com/prometheus/client_golang/prometheus"

var (
	descUniqueStacks = prometheus.NewDesc("cgscope_profile_unique_stacks",
		"Unique (thread, cgroup, stack) keys in the last drained interval.", nil, nil)
	descDrains = prometheus.NewDesc("cgscope_profile_drains_total",
		"Times the kernel maps were drained into a profile window.", nil, nil)
	descDrainErrors = prometheus.NewDesc("cgscope_profile_drain_errors_total",
		"Drains of the kernel maps that failed.", nil, nil)
	descProcesses = prometheus.NewDesc("cgscope_profile_processes",
		"Processes the pipeline tracks (announced by the sampler, or sampled with a user stack although their notice was lost), by state: running, or exited and waiting for their last samples to be symbolized before they are released.",
		[]string{"state"}, nil)
	descProcessExits = prometheus.NewDesc("cgscope_profile_process_exits_total",
		"Exits and execs of announced processes, by how they were learnt: sampler (its exit hook, or its check at each drain of the processes it announced) or sweep (found gone by the pipeline: the sampler's notice was lost).",
		[]string{"source"}, nil)
)

// Describe implements prometheus.Collector.
func (p *Pipeline) Describe(ch chan<- *prometheus.Desc) {
	ch <- descUniqueStacks
	ch <- descDrains
	ch <- descDrainErrors
	ch <- descProcesses
	ch <- descProcessExits
}

// Collect implements prometheus.Collector: the pipeline's Stats.
func (p *Pipeline) Collect(ch chan<- prometheus.Metric) {
	st := p.Stats()
	ch <- prometheus.MustNewConstMetric(descUniqueStacks, prometheus.GaugeValue, float64(st.UniqueStacks))
	ch <- prometheus.MustNewConstMetric(descDrains, prometheus.CounterValue, float64(st.Windows))
	ch <- prometheus.MustNewConstMetric(descDrainErrors, prometheus.CounterValue, float64(st.DrainErrors))
	running, exited := p.procs.counts()
	ch <- prometheus.MustNewConstMetric(descProcesses, prometheus.GaugeValue, float64(running), "running")
	ch <- prometheus.MustNewConstMetric(descProcesses, prometheus.GaugeValue, float64(exited), "exited")
	ch <- prometheus.MustNewConstMetric(descProcessExits, prometheus.CounterValue, float64(p.procs.exitsBySampler.Load()), "sampler")
	ch <- prometheus.MustNewConstMetric(descProcessExits, prometheus.CounterValue, float64(p.procs.exitsBySweep.Load()), "sweep")
}
