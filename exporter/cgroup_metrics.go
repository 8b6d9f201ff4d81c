package exporter

import (
	"math"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/cgscope/cgscope/cgroup"
	"github.com/cgscope/cgscope/profiler"
)

// cgroupLabels label every per-cgroup series: the cgroup2 path and its
// workload (empty outside containers; namespace, pod and container need
// the CRI runtime).
var cgroupLabels = append([]string{"cgroup"}, workloadLabelNames[:]...)

var (
	descCgroupCPU = newCgroupMetric(dto.MetricType_COUNTER, "cgscope_cgroup_cpu_seconds_total",
		"CPU time the cgroup's threads spent on CPU, from sched_switch (eBPF). Charged when a thread leaves the CPU.")
	descCgroupRunqWait = newCgroupMetric(dto.MetricType_COUNTER, "cgscope_cgroup_cpu_runqueue_wait_seconds_total",
		"Time the cgroup's runnable threads waited in a CPU run queue, from wakeup or preemption to running (sched_wakeup, sched_wakeup_new, sched_switch; eBPF).")
	descCgroupRunqLatency = newCgroupMetric(dto.MetricType_HISTOGRAM, "cgscope_cgroup_cpu_runqueue_latency_seconds",
		"Distribution of single run-queue waits of the cgroup's threads (eBPF, log2 buckets).")
	descCgroupSwitches = newCgroupMetric(dto.MetricType_COUNTER, "cgscope_cgroup_context_switches_total",
		"Context switches of the cgroup's threads from sched_switch (eBPF): voluntary (blocked) or involuntary (preempted).", "kind")
	descCgroupThrottled = newCgroupMetric(dto.MetricType_COUNTER, "cgscope_cgroup_cpu_throttled_seconds_total",
		"Time the cgroup was throttled by its CPU quota, from cpu.stat (cgroup files).")
	descCgroupMemUsage = newCgroupMetric(dto.MetricType_GAUGE, "cgscope_cgroup_memory_usage_bytes",
		"Memory charged to the cgroup: memory.current (v2) or memory.usage_in_bytes (v1).")
	descCgroupMemWorkingSet = newCgroupMetric(dto.MetricType_GAUGE, "cgscope_cgroup_memory_working_set_bytes",
		"Memory usage minus inactive file cache, as cAdvisor and the kubelet compute it (cgroup files).")
	descCgroupMemRSS = newCgroupMetric(dto.MetricType_GAUGE, "cgscope_cgroup_memory_rss_bytes",
		"Anonymous memory of the cgroup: memory.stat anon (v2) or total_rss (v1).")
	descCgroupMemCache = newCgroupMetric(dto.MetricType_GAUGE, "cgscope_cgroup_memory_cache_bytes",
		"Page cache charged to the cgroup: memory.stat file (v2) or total_cache (v1).")
	descCgroupMemLimit = newCgroupMetric(dto.MetricType_GAUGE, "cgscope_cgroup_memory_limit_bytes",
		"Memory limit of the cgroup: memory.max (v2) or memory.limit_in_bytes (v1); absent when unlimited.")
	descCgroupFaults = newCgroupMetric(dto.MetricType_COUNTER, "cgscope_cgroup_page_faults_total",
		"Page faults of the cgroup by kind, from memory.stat pgfault/pgmajfault where the memory controller is available; otherwise all user page faults from the exceptions:page_fault_user tracepoint (eBPF), reported as minor.", "kind")
	descCgroupOOM = newCgroupMetric(dto.MetricType_COUNTER, "cgscope_cgroup_oom_kills_total",
		"Processes of the cgroup killed by the OOM killer, from oom:mark_victim (eBPF).")
	descCgroupRxBytes = newCgroupMetric(dto.MetricType_COUNTER, "cgscope_cgroup_network_receive_bytes_total",
		"Bytes received by the cgroup's sockets, IP headers included, from cgroup_skb ingress at the cgroup2 root (eBPF).")
	descCgroupTxBytes = newCgroupMetric(dto.MetricType_COUNTER, "cgscope_cgroup_network_transmit_bytes_total",
		"Bytes sent by the cgroup's sockets, IP headers included, from cgroup_skb egress at the cgroup2 root (eBPF).")
	descCgroupRxPackets = newCgroupMetric(dto.MetricType_COUNTER, "cgscope_cgroup_network_receive_packets_total",
		"Packets received by the cgroup's sockets, from cgroup_skb ingress (eBPF).")
	descCgroupTxPackets = newCgroupMetric(dto.MetricType_COUNTER, "cgscope_cgroup_network_transmit_packets_total",
		"Packets sent by the cgroup's sockets, from cgroup_skb egress (eBPF).")
	descCgroupTCPOpened = newCgroupMetric(dto.MetricType_COUNTER, "cgscope_cgroup_tcp_connections_opened_total",
		"TCP connections established by the cgroup's sockets, outbound (connect) or inbound (accept), from sock:inet_sock_set_state (eBPF).", "direction")
	descCgroupTCPFailures = newCgroupMetric(dto.MetricType_COUNTER, "cgscope_cgroup_tcp_connect_failures_total",
		"TCP connects of the cgroup that failed (SYN_SENT to CLOSE), from sock:inet_sock_set_state (eBPF).")
	descCgroupTCPClosed = newCgroupMetric(dto.MetricType_COUNTER, "cgscope_cgroup_tcp_connections_closed_total",
		"Established TCP connections of the cgroup that closed, from sock:inet_sock_set_state (eBPF).")
	descCgroupTCPActive = newCgroupMetric(dto.MetricType_GAUGE, "cgscope_cgroup_tcp_active_connections",
		"TCP connections of the cgroup established since cgscope started and not yet closed (eBPF).")
	descCgroupTCPRetrans = newCgroupMetric(dto.MetricType_COUNTER, "cgscope_cgroup_tcp_retransmits_total",
		"TCP segments the cgroup's sockets retransmitted, from tcp:tcp_retransmit_skb (eBPF).")
	descCgroupPressure = newCgroupMetric(dto.MetricType_COUNTER, "cgscope_cgroup_pressure_seconds_total",
		"Time tasks of the cgroup were stalled on a resource, from PSI (*.pressure files) where enabled: some = at least one task, full = all tasks.", "resource", "kind")

	descCgroupsFolded = newMetric(dto.MetricType_GAUGE, "cgscope_cgroups_folded",
		"cgroups whose figures were summed into cgroup=\"other\" at the last scrape: over_limit (beyond --cgroup.max-exported) or unresolved (id without a path).", "reason")
	descCgroupsFiltered = newMetric(dto.MetricType_GAUGE, "cgscope_cgroups_filtered",
		"cgroups left out by --cgroup.include/--cgroup.exclude at the last scrape.")
	descCgroupsExported = newMetric(dto.MetricType_GAUGE, "cgscope_cgroups_exported",
		"cgroup label sets exported at the last scrape, \"other\" included.")
	descScrapeDuration = newMetric(dto.MetricType_GAUGE, "cgscope_scrape_collector_duration_seconds",
		"How long a collector took at the last scrape.", "collector")
	descScrapeSuccess = newMetric(dto.MetricType_GAUGE, "cgscope_scrape_collector_success",
		"Whether a collector succeeded at the last scrape.", "collector")
)

func cgroupDescs() []*cgroupMetric {
	return []*cgroupMetric{descCgroupCPU, descCgroupRunqWait, descCgroupRunqLatency, descCgroupSwitches,
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
func emitUsage(out *familySink, s *cgroupSeries, running map[string]bool) {
	u := &s.usage
	add := func(m *cgroupMetric, v float64, extra ...string) { out.add(m, s.pairs, v, extra...) }
	if running["sched"] {
		emitSched(out, s)
	}
	if running["oom"] {
		add(descCgroupOOM, float64(u.OOMKills))
	}
	if running["network"] {
		add(descCgroupRxBytes, float64(u.RxBytes))
		add(descCgroupTxBytes, float64(u.TxBytes))
		add(descCgroupRxPackets, float64(u.RxPackets))
		add(descCgroupTxPackets, float64(u.TxPackets))
	}
	if running["tcp"] {
		add(descCgroupTCPOpened, float64(u.TCPOpenedOutbound), "outbound")
		add(descCgroupTCPOpened, float64(u.TCPOpenedInbound), "inbound")
		add(descCgroupTCPFailures, float64(u.TCPConnectFailures))
		add(descCgroupTCPClosed, float64(u.TCPClosed))
		add(descCgroupTCPRetrans, float64(u.TCPRetransmits))
		add(descCgroupTCPActive, float64(max(u.TCPActive, 0)))
	}
}

func emitSched(out *familySink, s *cgroupSeries) {
	u := &s.usage
	out.add(descCgroupCPU, s.pairs, u.CPUSeconds)
	out.add(descCgroupRunqWait, s.pairs, u.RunqWaitSeconds)
	out.histogram(descCgroupRunqLatency, s.pairs, u.RunqHistogram[:], u.RunqWaitSeconds)
	out.add(descCgroupSwitches, s.pairs, float64(u.SwitchesVoluntary), "voluntary")
	out.add(descCgroupSwitches, s.pairs, float64(u.SwitchesInvoluntary), "involuntary")
}

// emitFiles exports what the cgroup's files know, and reports whether they
// held the page faults (the memory controller's memory.stat).
func (c *CgroupCollector) emitFiles(out *familySink, s *cgroupSeries, scrapeStart time.Time) (faults bool) {
	fs, ok := c.files.read(s.path, scrapeStart)
	if !ok {
		// Gone since the counters were read, or not read yet: the BPF
		// series are out already; files have nothing (yet) to say.
		return false
	}
	emit := func(m *cgroupMetric, v cgroup.Value, extra ...string) {
		if v.Known {
			out.add(m, s.pairs, v.V, extra...)
		}
	}
	emit(descCgroupThrottled, fs.CPUThrottledSeconds)
	emit(descCgroupMemUsage, fs.MemoryUsageBytes)
	emit(descCgroupMemWorkingSet, fs.MemoryWorkingSetBytes)
	emit(descCgroupMemRSS, fs.MemoryRSSBytes)
	emit(descCgroupMemCache, fs.MemoryCacheBytes)
	emit(descCgroupMemLimit, fs.MemoryLimitBytes)
	emit(descCgroupFaults, fs.PageFaultsMinor, "minor")
	emit(descCgroupFaults, fs.PageFaultsMajor, "major")
	emit(descCgroupPressure, fs.PressureCPUSomeSeconds, "cpu", "some")
	emit(descCgroupPressure, fs.PressureMemorySomeSeconds, "memory", "some")
	emit(descCgroupPressure, fs.PressureMemoryFullSeconds, "memory", "full")
	emit(descCgroupPressure, fs.PressureIOSomeSeconds, "io", "some")
	emit(descCgroupPressure, fs.PressureIOFullSeconds, "io", "full")
	return fs.PageFaultsMinor.Known
}
