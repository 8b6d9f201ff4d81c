/* SPDX-License-Identifier: GPL-2.0 */
/* Types shared by cgroups.bpf.c and, through bpf2go, the Go side. */
#ifndef CGSCOPE_CGROUPS_H
#define CGSCOPE_CGROUPS_H

/* Run-queue latency histogram: bucket i counts waits in [2^(i-1), 2^i) µs,
 * bucket 0 waits under 1 µs, the last bucket everything longer. */
#define RUNQ_BUCKETS 24

/* A histogram count is a weight in units of 2^-RUNQ_WEIGHT_SHIFT: each wait
 * seen adds 2^RUNQ_WEIGHT_SHIFT / duty, as the program runs only the
 * fraction duty of the time. */
#define RUNQ_WEIGHT_SHIFT 16

/* A wait adds at most this (ns, ~4.6 min) to the histogram's sum, so that
 * the weighted sum of one fits 64 bits with a weight under 2^25. */
#define RUNQ_MAX_SUM_WAIT_NS (1ULL << 38)

/* How runq_latency counts, set by userspace for each window it is attached:
 * the weight of a wait, 2^RUNQ_WEIGHT_SHIFT / duty (0: do not count; below
 * 2^25, i.e. duty above 1/512), and
 * the end of the window (bpf_ktime_get_ns; ~0: none). Waits past the end
 * are not counted, so the time counted is the window, not the window plus
 * however long detaching takes. */
struct runq_config {
	__u64 weight;
	__u64 until;
};

/* Per-cgroup counters, one copy per CPU (summed by userspace). */
struct cgroup_counters {
	/* Figures of the cgroup's threads, settled by the task iterator and
	 * at each thread's end (struct task_figures). */
	__u64 cpu_ns;
	__u64 runq_wait_ns;
	__u64 switches_voluntary;
	__u64 switches_involuntary;
	__u64 page_faults_minor;
	__u64 page_faults_major;
	/* Waits seen by runq_latency, weighted (RUNQ_WEIGHT_SHIFT). */
	__u64 runq_hist[RUNQ_BUCKETS];
	/* The same waits' lengths (ns), each weighted as its count: the
	 * histogram's own sum, an estimate like its counts. */
	__u64 runq_hist_sum_ns;
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

/* What the kernel keeps per thread, summed since the thread began. */
struct task_figures {
	__u64 cpu_ns;               /* se.sum_exec_runtime */
	__u64 runq_wait_ns;         /* sched_info.run_delay */
	__u64 switches_voluntary;   /* nvcsw */
	__u64 switches_involuntary; /* nivcsw */
	__u64 page_faults_minor;    /* min_flt */
	__u64 page_faults_major;    /* maj_flt */
};

/* A thread: its id and start time, so that a reused thread id is another
 * key. */
struct task_key {
	__u32 tid;
	__u32 pad;
	__u64 start_ns;
};

/* The cgroups of one thread, as the task iterator reports them on hybrid
 * hosts, where v1 hierarchies hold the memory and cpu controllers: their
 * cgroups' ids there (0: the controller is not on a v1 hierarchy). */
struct task_cgroups {
	__u64 cgroup; /* cgroup2 id */
	__u64 memory;
	__u64 cpu;
};

/* The drops first, in step with collector.DropReasons. */
enum cgroup_stat_index {
	CGSTAT_DROP_CGROUPS_FULL = 0, /* event lost: cgroup_counters map full */
	CGSTAT_DROP_TASKS_FULL,       /* thread counted only at its end, or (born before counting began) not at all: task map full */
	CGSTAT_DROP_SOCKETS_FULL,     /* active-connection tracking lost: socket map full */
	CGSTAT_RUNQ_RUNS,             /* runs of runq_latency: its cost where bpf_stats are off */
	CGSTAT_MAX,
};

#endif
