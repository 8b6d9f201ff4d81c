//go:build ignore

// SPDX-License-Identifier: GPL-2.0
//
// Off-CPU sampler: at sched_switch, the thread leaving the CPU (still the
// current task) may be sampled — its kernel and user stacks taken, and why
// it left — and when a sampled thread comes back onto a CPU, the time it
// was away is added to its stacks. Both halves happen in the one
// tracepoint program, which needs no kprobe: the switch-out of prev and
// the switch-in of next are the same event.
//
// Sampling: a thread's switch-outs are sampled with probability
// min(1, per_task / its rate) times a host-wide factor, and each sample is
// weighted by the inverse of its probability, so sums of switch-outs and of
// blocked time are unbiased. A thread that switches rarely (a sleep of 50
// ms) is sampled every time; one that switches 100,000 times a second is
// sampled a few dozen times. Userspace attaches the program only part of
// the time on hosts that switch so often that even its cheapest run would
// cost too much (see profiler/offcpu.go); samples whose switch-in it did not
// see are dropped and counted.
//
// The stacks go to offcpu_stacks, the counts to the generation of
// offcpu_counts that control[0] names: both shared with the CPU sampler
// (stacks.bpf.h), which userspace drains.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "profile.h"
#include "stacks.bpf.h"

char LICENSE[] SEC("license") = "GPL";

#define NSEC_PER_SEC 1000000000ULL
#define PF_KTHREAD 0x00200000
/* prev_state as sched_switch reports it (TASK_REPORT bits). */
#define STATE_INTERRUPTIBLE 0x1
#define STATE_UNINTERRUPTIBLE 0x2
#define STATE_IDLE 0x80        /* TASK_REPORT_IDLE: an idle kernel thread's D */
#define STATE_PREEMPTED 0x100  /* TASK_REPORT_MAX: left the CPU runnable */
/* The largest weight: a sample taken with a probability of 2^-18 (a
 * thread switching 200,000 times a second, on a host whose switches keep
 * the program attached a twentieth of the time, is at 2^-13). */
#define MAX_WEIGHT (1ULL << (18 + OFFCPU_WEIGHT_SHIFT))

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct offcpu_task);
} offcpu_tasks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, OFFCPU_CFG_MAX);
	__type(key, __u32);
	__type(value, __u64);
} offcpu_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, OFFCPU_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} offcpu_stats SEC(".maps");

const struct offcpu_task zero_task = {};

static __always_inline void offcpu_stat(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&offcpu_stats, &idx);
	if (v)
		*v += 1;
}

static __always_inline __u64 offcpu_cfg(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&offcpu_config, &idx);
	return v ? *v : 0;
}

// reason_of says why task left the CPU, from its reported state.
static __always_inline __u32 reason_of(long state, struct task_struct *task)
{
	if (state == 0 || (state & STATE_PREEMPTED))
		return OFFCPU_RUNNABLE;
	if (state & (STATE_INTERRUPTIBLE | STATE_IDLE))
		return OFFCPU_SLEEPING;
	if (state & STATE_UNINTERRUPTIBLE)
		return BPF_CORE_READ_BITFIELD(task, in_iowait) ? OFFCPU_IO : OFFCPU_UNINTERRUPTIBLE;
	return OFFCPU_OTHER;
}

// finish adds the time a sampled thread was away to its sample, now that
// it comes back onto the CPU.
static __always_inline void finish(__u32 tid, __u64 now)
{
	struct offcpu_task *t = bpf_map_lookup_elem(&offcpu_tasks, &tid);
	if (!t || !t->t_out)
		return;
	__u64 t_out = t->t_out, weight = t->weight;
	t->t_out = 0;
	if (t_out < offcpu_cfg(OFFCPU_CFG_SINCE) || now <= t_out) {
		offcpu_stat(OFFCPU_STAT_CENSORED); // its switch-in fell in a gap
		return;
	}
	__u32 zero = 0;
	__u32 *gen = bpf_map_lookup_elem(&control, &zero);
	if (!gen)
		return;
	__u32 g = *gen & 1;
	void *counts = bpf_map_lookup_elem(&offcpu_counts, &g);
	if (!counts)
		return;
	struct offcpu_value *v = bpf_map_lookup_elem(counts, &t->key);
	if (!v) {
		struct offcpu_value z = {};
		bpf_map_update_elem(counts, &t->key, &z, BPF_NOEXIST);
		v = bpf_map_lookup_elem(counts, &t->key);
		if (!v) {
			offcpu_stat(OFFCPU_STAT_COUNTS_FULL);
			return;
		}
	}
	// blocked * weight / 2^shift without overflow: weight < 2^28, and the
	// blocked time's high part below 2^35 (a thread away for 10 hours).
	__u64 blocked = now - t_out;
	__u64 ns = (blocked >> OFFCPU_WEIGHT_SHIFT) * weight +
		   (((blocked & ((1 << OFFCPU_WEIGHT_SHIFT) - 1)) * weight) >> OFFCPU_WEIGHT_SHIFT);
	__sync_fetch_and_add(&v->weight, weight);
	__sync_fetch_and_add(&v->ns, ns);
	offcpu_stat(OFFCPU_STAT_FINISHED);
}

// sampling_weight decides whether to sample this switch-out of t and
// returns the sample's weight, 0 for no sample.
static __always_inline __u64 sampling_weight(struct offcpu_task *t, __u64 now)
{
	if (now - t->window_start >= NSEC_PER_SEC) {
		t->rate = now - t->window_start < 2 * NSEC_PER_SEC ? t->switches : 0;
		t->switches = 0;
		t->window_start = now;
	}
	t->switches++;
	if (!offcpu_cfg(OFFCPU_CFG_SAMPLING) || now >= offcpu_cfg(OFFCPU_CFG_UNTIL))
		return 0;
	// p = min(1, per_task / rate) * scale, as a fraction of 2^32.
	__u64 rate = t->rate > t->switches ? t->rate : t->switches;
	__u64 per_task = offcpu_cfg(OFFCPU_CFG_PER_TASK), scale = offcpu_cfg(OFFCPU_CFG_SCALE);
	__u64 p = rate <= per_task ? (1ULL << 32) : (per_task << 32) / rate;
	p = (p >> 16) * (scale > 65536 ? 65536 : scale);
	if (p == 0 || (p < (1ULL << 32) && bpf_get_prandom_u32() >= p))
		return 0;
	// 1/p, and 1/the fraction of time this program is attached: a sample
	// stands for the switch-outs of the time it was not.
	__u64 duty = offcpu_cfg(OFFCPU_CFG_DUTY);
	__u64 weight = ((1ULL << (32 + OFFCPU_WEIGHT_SHIFT)) / p) * (duty ? duty : 65536) >> 16;
	return weight > MAX_WEIGHT ? MAX_WEIGHT : weight;
}

// offcpu_user_stack stores the user stack of the current task in
// offcpu_stacks, by its unwind table when its image has one loaded, else by
// the kernel's frame-pointer walk, and records how the walk ended.
static __always_inline void offcpu_user_stack(void *ctx, struct sample_key *key, struct stack_trace *trace,
					      __u64 cookie)
{
	__u8 end = END_FRAME_POINTERS;
	bool leaf_fp = true, leaf_outside = false;
	__u64 id = 0;
	struct unwind_proc *proc = bpf_map_lookup_elem(&unwind_procs, &key->pid);
	if (proc && cookie && proc->cookie == cookie) {
		end = walk_user_stack(proc, trace, &leaf_fp, &leaf_outside);
		id = trace->len ? store_trace_in(trace, &offcpu_stacks) : 0;
	} else {
		long n = bpf_get_stack(ctx, trace->ips, sizeof(trace->ips), BPF_F_USER_STACK);
		if (n > 0) {
			trace->len = n / sizeof(__u64);
			id = store_trace_in(trace, &offcpu_stacks);
		}
	}
	key->user_stack = stack_id(id, &key->flags, FLAG_USER_STACK_LOST);
	if (key->user_stack || (key->flags & FLAG_USER_STACK_LOST))
		key->flags |= (__u32)end << FLAG_USER_END_SHIFT;
	if (key->user_stack && leaf_fp)
		key->leaf_caller = leaf_caller();
}

// sample_out takes the stacks of the current task, leaving the CPU, when
// it is sampled.
static __always_inline void sample_out(void *ctx, long state, __u64 now)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid, pid = pid_tgid >> 32;
	offcpu_stat(OFFCPU_STAT_SWITCHES);

	struct offcpu_task *t = bpf_map_lookup_elem(&offcpu_tasks, &tid);
	if (!t) {
		bpf_map_update_elem(&offcpu_tasks, &tid, &zero_task, BPF_NOEXIST);
		t = bpf_map_lookup_elem(&offcpu_tasks, &tid);
		if (!t)
			return;
	}
	__u64 weight = sampling_weight(t, now);
	if (!weight)
		return;
	struct task_struct *task = bpf_get_current_task_btf();
	if (task->flags & PF_KTHREAD)
		return; // kernel threads: no user stack, and their waiting is their job

	__u32 zero = 0;
	struct stack_trace *trace = bpf_map_lookup_elem(&scratch, &zero);
	if (!trace)
		return;
	struct sample_key *key = &t->key;
	__builtin_memset(key, 0, sizeof(*key));
	key->pid = pid;
	key->tid = tid;
	key->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(key->comm, sizeof(key->comm));
	key->flags = reason_of(state, task) << FLAG_OFFCPU_REASON_SHIFT;

	long n = bpf_get_stack(ctx, trace->ips, sizeof(trace->ips), 0);
	if (n > 0) {
		trace->len = n / sizeof(__u64);
		key->kernel_stack = stack_id(store_trace_in(trace, &offcpu_stacks), &key->flags, FLAG_KERNEL_STACK_LOST);
	}
	__u64 *known = bpf_map_lookup_elem(&known_procs, &pid);
	__u64 cookie = known ? *known : 0;
	offcpu_user_stack(ctx, key, trace, cookie);
	if (!cookie && key->user_stack) {
		// A process first seen leaving the CPU is announced as the CPU
		// sampler would, so that its mappings are read while it lives.
		__u64 c = bpf_ktime_get_ns() | 1;
		if (bpf_map_update_elem(&known_procs, &pid, &c, BPF_NOEXIST) == 0)
			process_event(pid, PROCESS_NEW, c);
	}
	t->weight = weight;
	t->t_out = now;
	offcpu_stat(OFFCPU_STAT_SAMPLED);
}

SEC("tracepoint/sched/sched_switch")
int offcpu_switch(struct trace_event_raw_sched_switch *ctx)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 next = ctx->next_pid;
	if (next)
		finish(next, now);
	if (ctx->prev_pid)
		sample_out(ctx, ctx->prev_state, now);
	return 0;
}

// Referenced so their BTF reaches bpf2go, which generates the Go types.
const enum offcpu_reason *unused_offcpu_reason __attribute__((unused));
const enum offcpu_config_index *unused_offcpu_config_index __attribute__((unused));
const enum offcpu_stat_index *unused_offcpu_stat_index __attribute__((unused));
