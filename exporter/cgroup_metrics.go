package exporter

import (
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cgscope/cgscope/profiler"
)

// cgroupLabels label every per-cgroup series: the cgroup2 path and its
// workload (empty outside containers; namespace, pod and container need
// the CRI runtime).
var cgroupLabels = append([]string{"cgroup"}, workloadLabelNames[:]...)

func cgroupDesc(name, help string, extra ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, append(append([]string(nil), cgroupLabels...), extra...), nil)
}

var (
	descCgroupCPU = cgroupDesc("cgscope_cgroup_cpu_seconds_total",
		"CPU time the cgroup's threads spent on CPU, from sched_switch (eBPF). Charged when a thread leaves the CPU.")
	descCgroupRunqWait = cgroupDesc("cgscope_cgroup_cpu_runqueue_wait_seconds_total",
		"Time the cgroup's runnable threads waited in a CPU run queue, from wakeup or preemption to running (sched_wakeup, sched_wakeup_new, sched_switch; eBPF).")
	descCgroupRunqLatency = cgroupDesc("cgscope_cgroup_cpu_runqueue_latency_seconds",
		"Distribution of single run-queue waits of the cgroup's threads (eBPF, log2 buckets).")
	descCgroupSwitches = cgroupDesc("cgscope_cgroup_context_switches_total",
		"Context switches of the cgroup's threads from sched_switch (eBPF): voluntary (blocked) or involuntary (preempted).", "kind")
	descCgroupThrottled = cgroupDesc("cgscope_cgroup_cpu_throttled_seconds_total",
		"Time the cgroup was throttled by its CPU quota, from cpu.stat (cgroup files).")
	descCgroupMemUsage = cgroupDesc("cgscope_cgroup_memory_usage_bytes",
		"Memory charged to the cgroup: memory.current (v2) or memory.usage_in_bytes (v1).")
	descCgroupMemWorkingSet = cgroupDesc("cgscope_cgroup_memory_working_set_bytes",
		"Memory usage minus inactive file cache, as cAdvisor and the kubelet compute it (cgroup files).")
	descCgroupMemRSS = cgroupDesc("cgscope_cgroup_memory_rss_bytes",
		"Anonymous memory of the cgroup: memory.stat anon (v2) or total_rss (v1).")
	descCgroupMemCache = cgroupDesc("cgscope_cgroup_memory_cache_bytes",
		"Page cache charged to the cgroup: memory.stat file (v2) or total_cache (v1).")
	descCgroupMemLimit = cgroupDesc("cgscope_cgroup_memory_limit_bytes",
		"Memory limit of the cgroup: memory.max (v2) or memory.limit_in_bytes (v1); absent when unlimited.")
	descCgroupFaults = cgroupDesc("cgscope_cgroup_page_faults_total",
		"Page faults of the cgroup by kind, from memory.stat pgfault/pgmajfault where the memory controller is available; otherwise all user page faults from the exceptions:page_fault_user tracepoint (eBPF), reported as minor.", "kind")
	descCgroupOOM = cgroupDesc("cgscope_cgroup_oom_kills_total",
		"Processes of the cgroup killed by the OOM killer, from oom:mark_victim (eBPF).")
	descCgroupRxBytes = cgroupDesc("cgscope_cgroup_network_receive_bytes_total",
		"Bytes received by the cgroup's sockets, IP headers included, from cgroup_skb ingress at the cgroup2 root (eBPF).")
	descCgroupTxBytes = cgroupDesc("cgscope_cgroup_network_transmit_bytes_total",
		"Bytes sent by the cgroup's sockets, IP headers included, from cgroup_skb egress at the cgroup2 root (eBPF).")
	descCgroupRxPackets = cgroupDesc("cgscope_cgroup_network_receive_packets_total",
		"Packets received by the cgroup's sockets, from cgroup_skb ingress (eBPF).")
	descCgroupTxPackets = cgroupDesc("cgscope_cgroup_network_transmit_packets_total",
		"Packets sent by the cgroup's sockets, from cgroup_skb egress (eBPF).")
	descCgroupTCPOpened = cgroupDesc("cgscope_cgroup_tcp_connections_opened_total",
		"TCP connections established by the cgroup's sockets, outbound (connect) or inbound (accept), from sock:inet_sock_set_state (eBPF).", "direction")
	descCgroupTCPFailures = cgroupDesc("cgscope_cgroup_tcp_connect_failures_total",
		"TCP connects of the cgroup that failed (SYN_SENT to CLOSE), from sock:inet_sock_set_state (eBPF).")
	descCgroupTCPClosed = cgroupDesc("cgscope_cgroup_tcp_connections_closed_total",
		"Established TCP connections of the cgroup that closed, from sock:inet_sock_set_state (eBPF).")
	descCgroupTCPActive = cgroupDesc("cgscope_cgroup_tcp_active_connections",
		"TCP connections of the cgroup established since cgscope started and not yet closed (eBPF).")
	descCgroupTCPRetrans = cgroupDesc("cgscope_cgroup_tcp_retransmits_total",
		"TCP segments the cgroup's sockets retransmitted, from tcp:tcp_retransmit_skb (eBPF).")
	descCgroupPressure = cgroupDesc("cgscope_cgroup_pressure_seconds_total",
		"Time tasks of the cgroup were stalled on a resource, from PSI (*.pressure files) where enabled: some = at least one task, full = all tasks.", "resource", "kind")

	descCgroupsFolded = prometheus.NewDesc("cgscope_cgroups_folded",
		"cgroups whose figures were summed into cgroup=\"other\" at the last scrape: over_limit (beyond --cgroup.max-exported) or unresolved (id without a path).", []string{"reason"}, nil)
	descCgroupsFiltered = prometheus.NewDesc("cgscope_cgroups_filtered",
		"cgroups left out by --cgroup.include/--cgroup.exclude at the last scrape.", nil, nil)
	descCgroupsExported = prometheus.NewDesc("cgscope_cgroups_exported",
		"cgroup label sets exported at the last scrape, \"other\" included.", nil, nil)
	descScrapeDuration = prometheus.NewDesc("cgscope_scrape_collector_duration_seconds",
		"How long a collector took at the last scrape.", []string{"collector"}, nil)
	descScrapeSuccess = prometheus.NewDesc("cgscope_scrape_collector_success",
		"Whether a collector succeeded at the last scrape.", []string{"collector"}, nil)
)

func cgroupDescs() []*prometheus.Desc {
	return []*prometheus.Desc{descCgroupCPU, descCgroupRunqWait, descCgroupRunqLatency, descCgroupSwitches,
		descCgroupThrottled, descCgroupMemUsage, descCgroupMemWorkingSet, descCgroupMemRSS, descCgroupMemCache,
		descCgroupMemLimit, descCgroupFaults, descCgroupOOM, descCgroupRxBytes, descCgroupTxBytes,
		descCgroupRxPackets, descCgroupTxPackets, descCgroupTCPOpened, descCgroupTCPFailures, descCgroupTCPClosed,
		descCgroupTCPActive, descCgroupTCPRetrans, descCgroupPressure, descCgroupsFolded, descCgroupsFiltered,
		descCgroupsExported, descScrapeDuration, descScrapeSuccess}
}

// runqBucketBounds are the upper bounds (s) of the BPF histogram buckets:
// bucket i holds waits under 2^i µs; the last one is +Inf.
var runqBucketBounds = func() []float64 {
	b := make([]float64, profiler.RunqBuckets-1)
	for i := range b {
		b[i] = math.Ldexp(1e-6, i)
	}
	return b
}()

// emitUsage exports the BPF counters of the running collectors.
func emitUsage(ch chan<- prometheus.Metric, s *cgroupSeries, running map[string]bool) {
	u := &s.usage
	l := s.labels
	counter := func(d *prometheus.Desc, v float64, extra ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, append(l, extra...)...)
	}
	if running["sched"] {
		emitSched(ch, s)
	}
	if running["oom"] {
		counter(descCgroupOOM, float64(u.OOMKills))
	}
	if running["network"] {
		counter(descCgroupRxBytes, float64(u.RxBytes))
		counter(descCgroupTxBytes, float64(u.TxBytes))
		counter(descCgroupRxPackets, float64(u.RxPackets))
		counter(descCgroupTxPackets, float64(u.TxPackets))
	}
	if running["tcp"] {
		counter(descCgroupTCPOpened, float64(u.TCPOpenedOutbound), "outbound")
		counter(descCgroupTCPOpened, float64(u.TCPOpenedInbound), "inbound")
		counter(descCgroupTCPFailures, float64(u.TCPConnectFailures))
		counter(descCgroupTCPClosed, float64(u.TCPClosed))
		counter(descCgroupTCPRetrans, float64(u.TCPRetransmits))
		ch <- prometheus.MustNewConstMetric(descCgroupTCPActive, prometheus.GaugeValue, float64(max(u.TCPActive, 0)), l...)
	}
}

func emitSched(ch chan<- prometheus.Metric, s *cgroupSeries) {
	u := &s.usage
	l := s.labels
	counter := func(d *prometheus.Desc, v float64, extra ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, append(l, extra...)...)
	}
	counter(descCgroupCPU, u.CPUSeconds)
	counter(descCgroupRunqWait, u.RunqWaitSeconds)
	buckets := make(map[float64]uint64, len(runqBucketBounds))
	var cum uint64
	for i, le := range runqBucketBounds {
		cum += u.RunqHistogram[i]
		buckets[le] = cum
	}
	cum += u.RunqHistogram[len(runqBucketBounds)]
	ch <- prometheus.MustNewConstHistogram(descCgroupRunqLatency, cum, u.RunqWaitSeconds, buckets, l...)
	counter(descCgroupSwitches, float64(u.SwitchesVoluntary), "voluntary")
	counter(descCgroupSwitches, float64(u.SwitchesInvoluntary), "involuntary")
}

// emitFiles exports what the cgroup's files know, and reports whether they
// held the page faults (the memory controller's memory.stat).
func (c *CgroupCollector) emitFiles(ch chan<- prometheus.Metric, s *cgroupSeries, scrapeStart time.Time) (faults bool) {
	fs, ok := c.files.read(s.path, scrapeStart)
	l := s.labels
	if !ok {
		// Gone since the counters were read, or not read yet: the BPF
		// series are out already; files have nothing (yet) to say.
		return false
	}
	emit := func(d *prometheus.Desc, t prometheus.ValueType, v profiler.Value, extra ...string) {
		if v.Known {
			ch <- prometheus.MustNewConstMetric(d, t, v.V, append(l, extra...)...)
		}
	}
	emit(descCgroupThrottled, prometheus.CounterValue, fs.CPUThrottledSeconds)
	emit(descCgroupMemUsage, prometheus.GaugeValue, fs.MemoryUsageBytes)
	emit(descCgroupMemWorkingSet, prometheus.GaugeValue, fs.MemoryWorkingSetBytes)
	emit(descCgroupMemRSS, prometheus.GaugeValue, fs.MemoryRSSBytes)
	emit(descCgroupMemCache, prometheus.GaugeValue, fs.MemoryCacheBytes)
	emit(descCgroupMemLimit, prometheus.GaugeValue, fs.MemoryLimitBytes)
	emit(descCgroupFaults, prometheus.CounterValue, fs.PageFaultsMinor, "minor")
	emit(descCgroupFaults, prometheus.CounterValue, fs.PageFaultsMajor, "major")
	emit(descCgroupPressure, prometheus.CounterValue, fs.PressureCPUSomeSeconds, "cpu", "some")
	emit(descCgroupPressure, prometheus.CounterValue, fs.PressureMemorySomeSeconds, "memory", "some")
	emit(descCgroupPressure, prometheus.CounterValue, fs.PressureMemoryFullSeconds, "memory", "full")
	emit(descCgroupPressure, prometheus.CounterValue, fs.PressureIOSomeSeconds, "io", "some")
	emit(descCgroupPressure, prometheus.CounterValue, fs.PressureIOFullSeconds, "io", "full")
	return fs.PageFaultsMinor.Known
}
