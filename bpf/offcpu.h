/* SPDX-License-Identifier: GPL-2.0 */
/* Types of the off-CPU sampler (offcpu.bpf.c), shared through bpf2go with
 * the Go side (profiler/offcpu.go). */
#ifndef CGSCOPE_OFFCPU_H
#define CGSCOPE_OFFCPU_H

/* Why a task left the CPU; keep in step with profiler.OffCPUReasons. */
enum offcpu_reason {
	OFFCPU_RUNNABLE = 1,      /* preempted or yielded: waiting in the run queue */
	OFFCPU_SLEEPING = 2,      /* interruptible sleep: locks, I/O on sockets and pipes, timers */
	OFFCPU_IO = 3,            /* uninterruptible, in I/O wait (disk) */
	OFFCPU_UNINTERRUPTIBLE = 4, /* uninterruptible, not I/O (kernel locks, page faults) */
	OFFCPU_OTHER = 5,         /* stopped, traced, ... */
	OFFCPU_REASONS,
};

/* sample_key.flags bits 16..23: the reason (enum offcpu_reason). */
#define FLAG_OFFCPU_REASON_SHIFT 16

/* Fixed point of off-CPU weights: a weight of WEIGHT_ONE is one switch-out. */
#define OFFCPU_WEIGHT_SHIFT 10

/* What a (thread, stacks, reason) key sums: switch-outs and blocked time,
 * each weighted by the inverse of its sampling probability, in
 * 1/2^OFFCPU_WEIGHT_SHIFT units. */
struct offcpu_value {
	__u64 weight;
	__u64 ns;
};

/* The sampler's settings, a global variable userspace sets (read at every
 * switch without a map lookup). */
struct offcpu_config {
	__u64 scale;    /* host-wide sampling factor, 65536 = 1 */
	__u64 per_task; /* samples per second of a thread's blocked time, before the factor */
	__u64 sampling; /* 1: sample switch-outs; 0: only finish the pending ones */
	__u64 sample_for; /* ns from the window's first switch during which to sample; 0: no end */
	__u64 epoch;    /* the attachment window: a sample pending from another is dropped */
	__u64 duty;     /* 65536 / the share of the time switch-outs are sampled */
	__u64 window;   /* ns the program stays attached; 0: throughout */
};

/* offcpu_stats[] (per CPU). Keep in step with profiler.OffCPUStats. */
enum offcpu_stat_index {
	OFFCPU_STAT_SWITCHES = 0, /* switch-outs seen */
	OFFCPU_STAT_SAMPLED,      /* switch-outs whose stacks were taken */
	OFFCPU_STAT_FINISHED,     /* samples whose blocked time was added */
	OFFCPU_STAT_CENSORED,     /* samples dropped: their switch-in was not seen */
	OFFCPU_STAT_COUNTS_FULL,  /* samples lost: the counts map was full */
	OFFCPU_STAT_SAMPLE_NS,    /* ns spent taking the samples' stacks */
	OFFCPU_STAT_WEIGHT_CAPPED, /* samples whose weight was capped (undercounted) */
	OFFCPU_STAT_MAX,
};

/* The off-CPU state of one thread. */
struct offcpu_task {
	__u64 t_out;     /* when its sampled switch-out happened; 0: none pending */
	__u64 weight;    /* of the pending sample */
	__u64 epoch;     /* of the pending sample */
	__u64 spent;     /* ns the pending sample took to take */
	__u64 last_out;  /* when it last left the CPU, sampled or not; 0: back on it */
	__u64 last_epoch; /* of last_out */
	__u64 avg_ns;    /* its blocked times' moving average; 0: none seen yet */
	struct sample_key key;
};

#endif
