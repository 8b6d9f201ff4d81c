/* SPDX-License-Identifier: GPL-2.0 */
/* Types shared by cgroups.bpf.c and, through bpf2go, the Go side. */
#ifndef CGSCOPE_CGROUPS_H
#define CGSCOPE_CGROUPS_H

/* Run-queue latency histogram: bucket i counts waits in [2^(i-1), 2^i) µs,
 * bucket 0 waits under 1 µs, the last bucket everything longer. */
#define RUNQ_BUCKETS 24

/* Per-cgroup counters, one copy per CPU (summed by userspace). */
struct cgroup_counters {
	__u64 cpu_ns;
	__u64 runq_wait_ns;
	__u64 runq_hist[RUNQ_BUCKETS];
	__u64 switches_voluntary;
	__u64 switches_involuntary;
	__u64 page_faults;
	__u64 oom_kills;
	__u64 rx_bytes;
	__u64 tx_bytes;
	__u64 rx_packets;
	__u64 tx_packets;
	__u64 tcp_opened_outbound;
	__u64 tcp_opened_inbound;
	__u64 tcp_connect_failures;
	__u64 tcp_closed;
	__u64 tcp_retransmits;
	__s64 tcp_active; /* per-CPU deltas; the sum is the gauge */
};

/* Scheduler state of one thread. */
struct task_sched {
	__u64 on_cpu_since; /* 0 = not running */
	__u64 queued_since; /* runnable and waiting since; 0 = not queued */
	__u64 pending_wait; /* wait that ended at the last switch-in, not yet charged */
};

/* Keep in step with profiler.CgroupDropReasons. */
enum cgroup_stat_index {
	CGSTAT_DROP_CGROUPS_FULL = 0, /* event lost: cgroup_counters map full */
	CGSTAT_DROP_TASKS_FULL,       /* scheduler event lost: task map full */
	CGSTAT_DROP_SOCKETS_FULL,     /* active-connection tracking lost: socket map full */
	CGSTAT_MAX,
};

#endif
