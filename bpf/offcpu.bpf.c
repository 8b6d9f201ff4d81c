//go:build ignore

// SPDX-License-Identifier: GPL-2.0
//
// Off-CPU sampler: at sched_switch, the thread leaving the CPU (still the
// current task) may be sampled — its kernel and user stacks taken, and why
// it left — and when a sampled thread comes back onto a CPU, the time it
// was away is added to its stacks. Both halves happen in the one
// tracepoint program, which needs no kprobe: the switch-out of prev and
// the switch-in of next are the same event. It is a BTF tracepoint
// (tp_btf): its arguments are the kernel's own, with no trace record
// formatted, and a thread's state lives in task-local storage, found from
// the task without a hash lookup and freed with the task.
//
// Sampling: a switch-out is sampled with a probability proportional to how
// long the thread's switch-outs last on average, times a host-wide factor,
// and each sample is weighted by the inverse of its probability, so sums of
// switch-outs and of blocked time are unbiased, and samples follow off-CPU
// time (see sampling_weight). Userspace attaches the program only part of
// the time on hosts that switch so often that even its cheapest run would
// cost too much (see profiler/offcpu.go), and scales each drained interval
// by the share of it that was sampled; samples whose switch-in the program
// did not see are dropped and counted.
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
/* Task states (include/linux/sched.h). */
#define TASK_RUNNING 0x0
#define TASK_INTERRUPTIBLE 0x1
#define TASK_UNINTERRUPTIBLE 0x2
#define TASK_NOLOAD 0x400
/* The largest weight: a sample taken with a probability of 2^-28, all
 * factors together (a switch-out expected to last 1 µs is sampled at 2^-14
 * at the default rate of 50 a second, 2^-24 at a host-wide factor of 2^-7
 * and a duty of 1/8). Samples capped are counted. */
#define MAX_WEIGHT (1ULL << (28 + OFFCPU_WEIGHT_SHIFT))
/* The part of a window in which switch-outs are sampled (profiler/offcpu.go
 * sampleShare), and the most a sample's weight grows for the chance that
 * its block ended after the window. */
#define SAMPLE_SHARE_PCT 80
/* The moving average of blocked times: weight 1/2^AVG_SHIFT to the newest,
 * each capped (a thread asleep for hours is as likely to be sampled as one
 * asleep for 16 s: always, at the default rate). */
#define AVG_SHIFT 3
#define MAX_AVG_NS (16ULL * NSEC_PER_SEC)
#define MAX_COMPLETION_FACTOR 16

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct offcpu_task);
} offcpu_tasks SEC(".maps");

// Set by userspace (profiler/offcpu.go) before attaching and at every window.
struct offcpu_config offcpu_cfg = {.scale = 65536, .per_task = 50, .duty = 65536};
// When sampling ends in this window (switch_time's clock): set at the
// window's first switch, from offcpu_cfg.sample_for; userspace clears it
// before each window. Kept in the kernel's time, so that a late userspace
// timer cannot lengthen the part of the window that is sampled, which the
// weights assume.
__u64 offcpu_sample_until;

// switch_time is the time of this switch, as the scheduler just took it:
// the run queue's clock, updated at the start of __schedule, reached from
// prev (every task's se.cfs_rq is its CPU's root or group run queue, with
// CONFIG_FAIR_GROUP_SCHED). The program reads no clock of its own: on a
// paravirtualized guest, bpf_ktime_get_ns() costs more than all the rest.
// It is sched_clock, the same on every CPU where the TSC is stable, as the
// scheduler itself assumes. A kernel without group scheduling uses the
// monotonic clock, for every switch alike.
static __always_inline __u64 switch_time(struct task_struct *prev)
{
	if (bpf_core_field_exists(prev->se.cfs_rq)) {
		struct cfs_rq *cfs_rq = prev->se.cfs_rq;
		if (cfs_rq)
			return cfs_rq->rq->clock;
	}
	return bpf_ktime_get_ns();
}

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, OFFCPU_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} offcpu_stats SEC(".maps");

static __always_inline void offcpu_stats_add(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&offcpu_stats, &idx);
	if (v)
		*v += n;
}

static __always_inline void offcpu_stat(__u32 idx)
{
	offcpu_stats_add(idx, 1);
}

// reason_of says why task left the CPU, from its raw state (the BTF
// tracepoint has task->__state, not the TASK_REPORT form of the classic
// one).
static __always_inline __u32 reason_of(bool preempt, unsigned int state, struct task_struct *task)
{
	if (preempt || state == TASK_RUNNING)
		return OFFCPU_RUNNABLE;
	if (state & TASK_INTERRUPTIBLE)
		return OFFCPU_SLEEPING;
	if (state & TASK_UNINTERRUPTIBLE) {
		if (state & TASK_NOLOAD)
			return OFFCPU_SLEEPING; // TASK_IDLE: a kernel thread waiting for work
		// A bitfield: its bit, not only its byte, is relocated.
		return BPF_CORE_READ_BITFIELD(task, in_iowait) ? OFFCPU_IO : OFFCPU_UNINTERRUPTIBLE;
	}
	return OFFCPU_OTHER;
}

// completion_weight corrects the weight of a sample taken while the program
// is attached only part of the time, for the chance that its blocked time
// ended while it still was: switch-outs are sampled in the first
// SAMPLE_SHARE of a window of W ns and seen back until its end, so a block
// of D ns is seen whole with probability min(SAMPLE_SHARE W, W - D) /
// (SAMPLE_SHARE W). Dividing by it keeps sums of long blocks unbiased;
// the factor is capped (blocks of nearly the window vary too much), which
// undercounts only blocks longer than 15/16 of the window.
static __always_inline __u64 completion_weight(__u64 weight, __u64 blocked)
{
	__u64 window = offcpu_cfg.window;
	__u64 share = window * SAMPLE_SHARE_PCT / 100;
	if (!window || blocked <= window - share)
		return weight;
	__u64 left = blocked < window ? window - blocked : 0;
	if (left * MAX_COMPLETION_FACTOR < share)
		return weight * MAX_COMPLETION_FACTOR;
	// share / left in 16-bit fixed point first: weight * share could
	// overflow (a weight of 2^38 and a window of seconds).
	return weight * ((share << 16) / left) >> 16;
}

// track_blocked keeps a moving average of how long a thread stays off the
// CPU, over all its switches (the sampled ones and the others), from which
// its next switch-out's sampling probability follows.
static __always_inline void track_blocked(struct offcpu_task *t, __u64 now)
{
	__u64 out = t->last_out;
	t->last_out = 0;
	if (!out || t->last_epoch != offcpu_cfg.epoch || now <= out)
		return;
	__u64 blocked = now - out;
	if (blocked > MAX_AVG_NS)
		blocked = MAX_AVG_NS;
	if (!t->avg_ns)
		t->avg_ns = blocked;
	else
		t->avg_ns = t->avg_ns - (t->avg_ns >> AVG_SHIFT) + (blocked >> AVG_SHIFT);
}

// without_sampling takes out of a sampled block the delay the sampling
// itself caused. The stacks are taken inside the switch, with interrupts
// off, on the CPU the thread leaves: whatever would have ended the block
// meanwhile — a timer or disk interrupt on that CPU, a worker thread bound
// to it, a wakeup, which waits for the switch to finish — comes only when
// it is done. A block seen to last less than the sampling ended during it:
// half of it is counted. One seen to last less than twice the sampling most
// likely was delayed by all of it, which is taken out; a longer one most
// likely was not delayed. An estimate, with a step at twice the sampling:
// blocks of about the sampling's own length (tens of µs here, more when
// the hypervisor steals the CPU meanwhile) are counted within a factor of
// two either way; longer ones exactly.
static __always_inline __u64 without_sampling(__u64 blocked, __u64 spent)
{
	if (blocked >= 2 * spent)
		return blocked;
	return blocked > spent ? blocked - spent : blocked / 2;
}

// finish adds the time a sampled thread was away to its sample, now that
// it comes back onto the CPU.
static __always_inline void finish(struct task_struct *task, __u64 now)
{
	struct offcpu_task *t = bpf_task_storage_get(&offcpu_tasks, task, 0, 0);
	if (!t)
		return;
	track_blocked(t, now);
	if (!t->t_out)
		return;
	__u64 t_out = t->t_out, weight = t->weight;
	t->t_out = 0;
	if (t->epoch != offcpu_cfg.epoch || now <= t_out) {
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
	__u64 blocked = without_sampling(now - t_out, t->spent);
	weight = completion_weight(weight, blocked);
	// blocked * weight / 2^shift without overflow: weight < 2^32, and the
	// high part saturates (a thread away for days at a weight of thousands).
	__u64 hi = blocked >> OFFCPU_WEIGHT_SHIFT, lo = blocked & ((1 << OFFCPU_WEIGHT_SHIFT) - 1);
	__u64 hi_max = (1ULL << 62) / weight;
	__u64 ns = (hi < hi_max ? hi : hi_max) * weight + ((lo * weight) >> OFFCPU_WEIGHT_SHIFT);
	__sync_fetch_and_add(&v->weight, weight);
	__sync_fetch_and_add(&v->ns, ns);
	offcpu_stat(OFFCPU_STAT_FINISHED);
}

// sampling_open says whether switch-outs at now are in the sampled part of
// the window.
static __always_inline bool sampling_open(__u64 now)
{
	__u64 span = offcpu_cfg.sample_for;
	if (!span)
		return true;
	__u64 until = offcpu_sample_until;
	if (!until) {
		until = now + span;
		__u64 set = __sync_val_compare_and_swap(&offcpu_sample_until, 0, until);
		if (set)
			until = set; // another CPU opened the window first
	}
	return now < until;
}

// sampling_weight decides whether to sample this switch-out of t and
// returns the sample's weight, 0 for no sample. Switch-outs are sampled in
// proportion to the time they are expected to last (the thread's average):
// p = min(1, per_task × average blocked time) × the host-wide factor, so a
// thread gets about per_task samples a second of its time off the CPU,
// whether it blocks for 50 ms twenty times a second or for 10 µs 100,000
// times, and a profile's samples follow off-CPU time as a CPU profile's
// follow CPU time. A thread not yet seen blocking is sampled.
static __always_inline __u64 sampling_weight(struct offcpu_task *t, __u64 now)
{
	t->last_out = now;
	t->last_epoch = offcpu_cfg.epoch;
	if (!offcpu_cfg.sampling || !sampling_open(now))
		return 0;
	// p as a fraction of 2^32: avg × per_task / 1e9, where 1e9 / 2^32 is
	// 2^-12 × 244140.625.
	__u64 p = 1ULL << 32;
	if (t->avg_ns) {
		__u64 x = t->avg_ns * offcpu_cfg.per_task; // < 2^34 × 2^20
		if (x < NSEC_PER_SEC)
			p = (x << 20) / 244141;
	}
	__u64 scale = offcpu_cfg.scale;
	p = (p >> 16) * (scale > 65536 ? 65536 : scale);
	if (p == 0 || (p < (1ULL << 32) && bpf_get_prandom_u32() >= p))
		return 0;
	// 1/p, and 1/the share of the time switch-outs are sampled: a sample
	// stands for the switch-outs of the time the program was not attached.
	__u64 weight = (1ULL << (32 + OFFCPU_WEIGHT_SHIFT)) / p, duty = offcpu_cfg.duty;
	if (duty && weight > (MAX_WEIGHT << 16) / duty) { // checked before it can overflow
		offcpu_stat(OFFCPU_STAT_WEIGHT_CAPPED);
		return MAX_WEIGHT;
	}
	return weight * duty >> 16;
}

// offcpu_user_stack stores the user stack of the current task in
// offcpu_stacks, by its unwind table when its image has one loaded, else by
// the kernel's frame-pointer walk, and records how the walk ended; and the
// interpreter's stack, when the process has one the walkers know.
static __always_inline void offcpu_user_stack(void *ctx, struct sample_key *key, struct stack_trace *trace,
					      __u64 cookie)
{
	__u8 end = END_FRAME_POINTERS;
	bool leaf_fp = true, pc_outside = false;
	__u64 id = 0;
	bool inherited;
	struct unwind_proc *proc = unwind_proc_of(key->pid, cookie, &inherited);
	if (proc) {
		__u32 wanted; // asked for by the CPU sampler, which sees the code run
		end = walk_user_stack(proc, trace, &leaf_fp, &pc_outside, &wanted);
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
	if (cookie && interp_walk(trace, key, cookie))
		key->interp_stack = stack_id(store_trace_in(trace, &offcpu_stacks), &key->flags, FLAG_INTERP_STACK_LOST);
}

// sample_out takes the stacks of the current task, leaving the CPU, when
// it is sampled.
static __always_inline void sample_out(void *ctx, bool preempt, unsigned int state, struct task_struct *task,
				       __u64 now)
{
	offcpu_stat(OFFCPU_STAT_SWITCHES);
	if (task->flags & PF_KTHREAD)
		return; // kernel threads: no user stack, and their waiting is their job
	struct offcpu_task *t = bpf_task_storage_get(&offcpu_tasks, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!t)
		return;
	__u64 weight = sampling_weight(t, now);
	if (!weight)
		return;
	// Taking stacks costs a hundred times more than the rest; its time is
	// measured (two clock reads are a small part of it), so that userspace
	// holds samples to their share of the budget.
	__u64 started = bpf_ktime_get_ns();

	__u32 zero = 0;
	struct stack_trace *trace = bpf_map_lookup_elem(&scratch, &zero);
	if (!trace)
		return;
	__u32 pid = task->tgid;
	struct sample_key *key = &t->key;
	__builtin_memset(key, 0, sizeof(*key));
	key->pid = pid;
	key->tid = task->pid;
	key->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(key->comm, sizeof(key->comm));
	key->flags = reason_of(preempt, state, task) << FLAG_OFFCPU_REASON_SHIFT;

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
	__u64 spent = bpf_ktime_get_ns() - started;
	t->weight = weight;
	t->epoch = offcpu_cfg.epoch;
	t->spent = spent;
	t->t_out = now;
	offcpu_stat(OFFCPU_STAT_SAMPLED);
	offcpu_stats_add(OFFCPU_STAT_SAMPLE_NS, spent);
}

// The tracepoint fires in __schedule before the switch: prev is still the
// current task.
SEC("tp_btf/sched_switch")
int BPF_PROG(offcpu_switch, bool preempt, struct task_struct *prev, struct task_struct *next, unsigned int prev_state)
{
	__u64 now = switch_time(prev);
	if (next->pid)
		finish(next, now);
	if (prev->pid)
		sample_out(ctx, preempt, prev_state, prev, now);
	return 0;
}

// Referenced so their BTF reaches bpf2go, which generates the Go types.
const enum offcpu_reason *unused_offcpu_reason __attribute__((unused));
const enum offcpu_stat_index *unused_offcpu_stat_index __attribute__((unused));
