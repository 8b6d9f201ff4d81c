//go:build ignore

// SPDX-License-Identifier: GPL-2.0
//
// Per-cgroup counters: CPU time, context switches and run-queue latency from
// the scheduler tracepoints, user page faults, OOM kills, packets and bytes
// from cgroup_skb, and TCP connection events from sock/tcp tracepoints. All
// counters are kept per CPU and per cgroup2 id, so the hot paths take no lock
// and do no atomic operation; userspace sums over CPUs when it reads.
//
// Each program is independent: userspace attaches what the kernel offers and
// disables the rest (a "collector") with one log line.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "cgroups.h"

char LICENSE[] SEC("license") = "GPL";

#define TASK_RUNNING 0
/* Set in sched_switch's prev_state when the task was preempted (TASK_REPORT_MAX). */
#define PREEMPTED_STATE 0x100

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define IPPROTO_TCP 6

/* The hash maps are not preallocated: preallocating them (per CPU for this
 * one) cost ~20 ms of CPU at every start and MiBs of kernel memory, for
 * tables that hold one entry per live cgroup, thread or socket. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
	__type(key, __u64); /* cgroup2 id */
	__type(value, struct cgroup_counters);
} counters_by_cgroup SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, __u32); /* thread id */
	__type(value, struct task_sched);
} tasks SEC(".maps");

/* Established TCP sockets and the cgroup their connection was counted in. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, __u64); /* struct sock address */
	__type(value, __u64);
} active_sockets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CGSTAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} cgroup_stats SEC(".maps");

const struct cgroup_counters zero_counters = {};
const struct task_sched zero_task = {};

static __always_inline void count_drop(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&cgroup_stats, &idx);
	if (v)
		*v += 1;
}

// counters returns this CPU's counters of a cgroup, creating them.
static __always_inline struct cgroup_counters *counters(__u64 cgroup)
{
	struct cgroup_counters *c = bpf_map_lookup_elem(&counters_by_cgroup, &cgroup);
	if (c)
		return c;
	bpf_map_update_elem(&counters_by_cgroup, &cgroup, &zero_counters, BPF_NOEXIST);
	c = bpf_map_lookup_elem(&counters_by_cgroup, &cgroup);
	if (!c)
		count_drop(CGSTAT_DROP_CGROUPS_FULL);
	return c;
}

static __always_inline struct task_sched *task_state(__u32 tid)
{
	struct task_sched *t = bpf_map_lookup_elem(&tasks, &tid);
	if (t)
		return t;
	bpf_map_update_elem(&tasks, &tid, &zero_task, BPF_NOEXIST);
	t = bpf_map_lookup_elem(&tasks, &tid);
	if (!t)
		count_drop(CGSTAT_DROP_TASKS_FULL);
	return t;
}

// runq_bucket maps a wait in ns to its log2-of-µs histogram bucket.
static __always_inline __u32 runq_bucket(__u64 ns)
{
	__u64 us = ns / 1000;
	__u32 b = 0;
	for (int i = 0; i < RUNQ_BUCKETS - 1; i++) {
		if (us == 0)
			break;
		us >>= 1;
		b++;
	}
	return b;
}

// sched_switch charges the outgoing thread's CPU slice and its last run-queue
// wait to the current cgroup (still the outgoing thread's here), and stamps
// the incoming thread. The incoming thread's wait is charged when it leaves
// the CPU, because only then is its cgroup the current one: that avoids
// reading another task's cgroup, and lets this be a plain tracepoint, the
// cheapest attach point.
SEC("tracepoint/sched/sched_switch")
int sched_switch(struct trace_event_raw_sched_switch *ctx)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 prev = ctx->prev_pid, next = ctx->next_pid;

	if (prev != 0) {
		struct task_sched *t = task_state(prev);
		struct cgroup_counters *c = counters(bpf_get_current_cgroup_id());
		long state = ctx->prev_state;
		bool preempted = state == TASK_RUNNING || (state & PREEMPTED_STATE);
		if (t && c) {
			if (t->on_cpu_since)
				c->cpu_ns += now - t->on_cpu_since;
			if (t->pending_wait) {
				c->runq_wait_ns += t->pending_wait;
				__u32 b = runq_bucket(t->pending_wait);
				if (b < RUNQ_BUCKETS)
					c->runq_hist[b]++;
			}
		}
		if (c) {
			if (preempted)
				c->switches_involuntary++;
			else
				c->switches_voluntary++;
		}
		if (t) {
			t->on_cpu_since = 0;
			t->pending_wait = 0;
			// A preempted thread stays runnable: it waits in the queue from now.
			t->queued_since = preempted ? now : 0;
		}
	}
	if (next != 0) {
		struct task_sched *t = task_state(next);
		if (t) {
			t->on_cpu_since = now;
			if (t->queued_since)
				t->pending_wait = now - t->queued_since;
			t->queued_since = 0;
		}
	}
	return 0;
}

static __always_inline int on_wakeup(__u32 tid)
{
	struct task_sched *t = task_state(tid);
	if (t && !t->on_cpu_since)
		t->queued_since = bpf_ktime_get_ns();
	return 0;
}

SEC("tracepoint/sched/sched_wakeup")
int sched_wakeup(struct trace_event_raw_sched_wakeup_template *ctx)
{
	return on_wakeup(ctx->pid);
}

SEC("tracepoint/sched/sched_wakeup_new")
int sched_wakeup_new(struct trace_event_raw_sched_wakeup_template *ctx)
{
	return on_wakeup(ctx->pid);
}

// sched_process_exit forgets an exiting thread, keeping the task map bounded
// by the live threads. The last slice is charged at its final sched_switch.
SEC("tracepoint/sched/sched_process_exit")
int sched_process_exit(struct trace_event_raw_sched_process_template *ctx)
{
	__u32 tid = ctx->pid;
	bpf_map_delete_elem(&tasks, &tid);
	return 0;
}

SEC("tracepoint/exceptions/page_fault_user")
int page_fault_user(void *ctx)
{
	struct cgroup_counters *c = counters(bpf_get_current_cgroup_id());
	if (c)
		c->page_faults++;
	return 0;
}

static __always_inline __u64 task_cgroup_id(struct task_struct *task)
{
	return BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
}

SEC("tp_btf/mark_victim")
int BPF_PROG(oom_mark_victim, struct task_struct *task)
{
	struct cgroup_counters *c = counters(task_cgroup_id(task));
	if (c)
		c->oom_kills++;
	return 0;
}

static __always_inline int count_skb(struct __sk_buff *skb, bool ingress)
{
	struct cgroup_counters *c = counters(bpf_skb_cgroup_id(skb));
	if (c) {
		if (ingress) {
			c->rx_bytes += skb->len;
			c->rx_packets++;
		} else {
			c->tx_bytes += skb->len;
			c->tx_packets++;
		}
	}
	return 1; // allow: cgscope only counts
}

SEC("cgroup_skb/ingress")
int skb_ingress(struct __sk_buff *skb)
{
	return count_skb(skb, true);
}

SEC("cgroup_skb/egress")
int skb_egress(struct __sk_buff *skb)
{
	return count_skb(skb, false);
}

// sock_cgroup_id returns the cgroup2 id of the socket's owner. TCP events
// often run in softirq context, where the current task is unrelated.
static __always_inline __u64 sock_cgroup_id(const void *skaddr)
{
	struct sock *sk = (struct sock *)skaddr;
	return BPF_CORE_READ(sk, sk_cgrp_data.cgroup, kn, id);
}

SEC("tracepoint/sock/inet_sock_set_state")
int inet_sock_set_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	__u64 sk = (__u64)ctx->skaddr;
	int oldstate = ctx->oldstate, newstate = ctx->newstate;

	if (newstate == TCP_ESTABLISHED) {
		__u64 cg = sock_cgroup_id(ctx->skaddr);
		struct cgroup_counters *c = counters(cg);
		if (!c)
			return 0;
		if (oldstate == TCP_SYN_SENT)
			c->tcp_opened_outbound++;
		else if (oldstate == TCP_SYN_RECV)
			c->tcp_opened_inbound++;
		if (bpf_map_update_elem(&active_sockets, &sk, &cg, BPF_ANY) == 0)
			c->tcp_active++;
		else
			count_drop(CGSTAT_DROP_SOCKETS_FULL);
		return 0;
	}
	if (oldstate == TCP_SYN_SENT && newstate == TCP_CLOSE) {
		struct cgroup_counters *c = counters(sock_cgroup_id(ctx->skaddr));
		if (c)
			c->tcp_connect_failures++;
		return 0;
	}
	if (newstate == TCP_CLOSE) {
		__u64 *cg = bpf_map_lookup_elem(&active_sockets, &sk);
		if (!cg)
			return 0; // established before cgscope started, or not tracked
		struct cgroup_counters *c = counters(*cg);
		if (c) {
			c->tcp_closed++;
			c->tcp_active--;
		}
		bpf_map_delete_elem(&active_sockets, &sk);
	}
	return 0;
}

SEC("tracepoint/tcp/tcp_retransmit_skb")
int tcp_retransmit_skb(struct trace_event_raw_tcp_retransmit_skb *ctx)
{
	struct cgroup_counters *c = counters(sock_cgroup_id(ctx->skaddr));
	if (c)
		c->tcp_retransmits++;
	return 0;
}

// Referenced so their BTF reaches bpf2go, which generates the Go types.
const enum cgroup_stat_index *unused_cgroup_stat_index __attribute__((unused));
