//go:build ignore

// SPDX-License-Identifier: GPL-2.0
//
// Per-cgroup counters, at a cost that does not grow with the host's event
// rate where it can be helped:
//
//   - CPU time, run-queue wait, context switches by kind and page faults are
//     figures the kernel already keeps per thread. The task iterator
//     (count_tasks), run by userspace at each collection, charges what every
//     thread did since the last one to its cgroup; task_free charges an
//     ending thread's last figures. Nothing runs at a switch or a fault.
//   - The run-queue latency histogram needs single waits: runq_latency sees
//     them at sched_switch, attached only part of the time, its counts and
//     its sum weighted by the inverse of that part.
//   - OOM kills, packets and bytes (cgroup_skb), and TCP connection events
//     (sock/tcp tracepoints) are counted as they happen; they are rare, or
//     cheap per packet.
//
// The thread figures count from when cgscope's counters began
// (counting_since), not from the threads' birth: a thread older than that
// is charged only what it did after a program first saw it.
//
// All counters are kept per CPU and per cgroup2 id, so no program takes a
// lock or does an atomic operation; userspace sums over CPUs when it reads.
// Userspace loads and attaches each collector's programs on its own, and
// disables one the kernel cannot run with one log line.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "cgroups.h"

char LICENSE[] SEC("license") = "GPL";

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

/* The figures of a live thread already charged to a cgroup. The lock
 * orders the iterator and the exit hook, which may settle one thread at
 * once (a bpf_spin_lock is why the hooks are tp_btf programs: classic and
 * raw tracepoints may not take one). */
struct task_state {
	struct bpf_spin_lock lock;
	struct task_figures charged;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct task_key);
	__type(value, struct task_state);
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

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct runq_config);
} runq_config SEC(".maps");

const struct cgroup_counters zero_counters = {};

static __always_inline void count_stat(__u32 idx)
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
		count_stat(CGSTAT_DROP_CGROUPS_FULL);
	return c;
}

// task_cgroup_id returns the cgroup2 id of a task that the program's
// context hands it (tp_btf, iter: a pointer the verifier trusts), with plain
// loads rather than BPF_CORE_READ's helper calls, a fifth of the cost.
static __always_inline __u64 task_cgroup_id(struct task_struct *task)
{
	return task->cgroups->dfl_cgrp->kn->id;
}

// runq_bucket maps a wait in ns to its log2-of-µs histogram bucket: the
// number of bits of the wait in µs (0 for under 1 µs), at most the last.
static __always_inline __u32 runq_bucket(__u64 ns)
{
	__u64 v = ns / 1000;
	__u32 n = 0;
	if (v >> 32) {
		v >>= 32;
		n += 32;
	}
	if (v >> 16) {
		v >>= 16;
		n += 16;
	}
	if (v >> 8) {
		v >>= 8;
		n += 8;
	}
	if (v >> 4) {
		v >>= 4;
		n += 4;
	}
	if (v >> 2) {
		v >>= 2;
		n += 2;
	}
	if (v >> 1) {
		v >>= 1;
		n += 1;
	}
	n += v;
	return n < RUNQ_BUCKETS - 1 ? n : RUNQ_BUCKETS - 1;
}

// runq_latency adds the run-queue wait that ends now, the incoming thread's,
// to its cgroup's histogram. The kernel stamped the wait's start
// (sched_info.last_queued, on the run queue's clock) when it queued the
// thread, and just after this tracepoint adds the time since, by the run
// queue's clock (updated just before it), to the thread's run_delay. So the
// wait is the kernel's own, it needs no wakeup hook and no state, and every
// wait that ends while the program is attached is seen whole, however long
// before it began. Userspace attaches the program only part of the time
// (internal/dutycycle) and weighs each wait, in the counts and in the sum,
// by the inverse of that part (struct runq_config). A wait the kernel split
// by moving the thread to another run queue (sched_info_dequeue ends it
// there) is seen from when it was queued on this one. Every run is counted
// (CGSTAT_RUNQ_RUNS): without bpf_stats that is how userspace tells what
// the program costs.
SEC("tp_btf/sched_switch")
int BPF_PROG(runq_latency, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	count_stat(CGSTAT_RUNQ_RUNS);
	__u64 queued = next->sched_info.last_queued;
	if (!queued || !next->pid)
		return 0;
	// The run queue of this CPU, which next is on: se.cfs_rq is set for
	// every class when a task moves to a CPU (CONFIG_FAIR_GROUP_SCHED).
	__u64 now = next->se.cfs_rq->rq->clock;
	__u32 zero = 0;
	struct runq_config *cfg = bpf_map_lookup_elem(&runq_config, &zero);
	if (!cfg || !cfg->weight || now < queued)
		return 0;
	if (cfg->until != ~0ULL && bpf_ktime_get_ns() > cfg->until)
		return 0;
	struct cgroup_counters *c = counters(task_cgroup_id(next));
	if (!c)
		return 0;
	__u64 wait = now - queued;
	c->runq_hist[runq_bucket(wait)] += cfg->weight;
	// Weighted as the count; clamped so that the product fits 64 bits
	// (struct runq_config bounds the weight).
	if (wait > RUNQ_MAX_SUM_WAIT_NS)
		wait = RUNQ_MAX_SUM_WAIT_NS;
	c->runq_hist_sum_ns += (wait * cfg->weight + (1ULL << (RUNQ_WEIGHT_SHIFT - 1))) >> RUNQ_WEIGHT_SHIFT;
	return 0;
}

#define PF_EXITING 0x00000004

// read_figures reads what the kernel keeps of a thread.
static __always_inline void read_figures(struct task_struct *task, struct task_figures *f)
{
	f->cpu_ns = task->se.sum_exec_runtime;
	f->runq_wait_ns = task->sched_info.run_delay;
	f->switches_voluntary = task->nvcsw;
	f->switches_involuntary = task->nivcsw;
	f->page_faults_minor = task->min_flt;
	f->page_faults_major = task->maj_flt;
}

// charge adds what a thread did since its figures were last charged.
static __always_inline void charge(__u64 cgroup, const struct task_figures *delta)
{
	struct cgroup_counters *c = counters(cgroup);
	if (!c)
		return;
	c->cpu_ns += delta->cpu_ns;
	c->runq_wait_ns += delta->runq_wait_ns;
	c->switches_voluntary += delta->switches_voluntary;
	c->switches_involuntary += delta->switches_involuntary;
	c->page_faults_minor += delta->page_faults_minor;
	c->page_faults_major += delta->page_faults_major;
}

// advance moves one charged figure up to now, setting delta to the rise:
// figures only grow, so a settler that read them before another one did
// finds nothing left to charge rather than a negative rise.
#define advance(charged, now, delta, field)                                \
	do {                                                               \
		if ((now)->field > (charged)->field) {                     \
			(delta)->field = (now)->field - (charged)->field; \
			(charged)->field = (now)->field;                   \
		}                                                          \
	} while (0)

// settle charges what task did since its figures were last charged to
// cgroup, and records them as charged.
static __always_inline void settle(struct task_struct *task, struct task_state *st, __u64 cgroup)
{
	struct task_figures now, delta = {};
	read_figures(task, &now);
	bpf_spin_lock(&st->lock);
	advance(&st->charged, &now, &delta, cpu_ns);
	advance(&st->charged, &now, &delta, runq_wait_ns);
	advance(&st->charged, &now, &delta, switches_voluntary);
	advance(&st->charged, &now, &delta, switches_involuntary);
	advance(&st->charged, &now, &delta, page_faults_minor);
	advance(&st->charged, &now, &delta, page_faults_major);
	bpf_spin_unlock(&st->lock);
	charge(cgroup, &delta);
}

// When cgscope's counters began (bpf_ktime_get_ns, the clock of
// task_struct.start_time), set by userspace before it attaches a program.
const volatile __u64 counting_since = 0;

// born_counted reports whether a thread began after the counters did: its
// whole life is then charged. An older thread is charged only what it did
// after a program first saw it, so that counters start near 0 whenever
// cgscope starts: charging the lifetime figures of the threads alive then
// would make every restart look to Prometheus like an increase of those
// lifetimes (less the threads that ended, a drop it takes for a reset).
static __always_inline bool born_counted(const struct task_key *key)
{
	return key->start_ns >= counting_since;
}

// task_state returns the state of a thread, creating it with its figures
// charged up to where they begin to count: zero for a thread born since
// the counters began, now for an older one (whose past is left out). A
// racing settler creates the same, read a moment apart; the first one's
// stays (BPF_NOEXIST). NULL when the map is full.
static __always_inline struct task_state *task_state(struct task_struct *task, struct task_key *key)
{
	struct task_state *st = bpf_map_lookup_elem(&tasks, key);
	if (st)
		return st;
	struct task_state init = {};
	if (!born_counted(key))
		read_figures(task, &init.charged);
	bpf_map_update_elem(&tasks, key, &init, BPF_NOEXIST);
	st = bpf_map_lookup_elem(&tasks, key);
	if (!st)
		count_stat(CGSTAT_DROP_TASKS_FULL); // left to task_free
	return st;
}

// v1_cgroup_id returns the id of the task's cgroup in the hierarchy of one
// controller (on hybrid hosts a v1 hierarchy).
static __always_inline __u64 v1_cgroup_id(struct task_struct *task, __u32 subsys)
{
	struct css_set *cset = BPF_CORE_READ(task, cgroups);
	struct cgroup_subsys_state *css = NULL;
	if (subsys >= CGROUP_SUBSYS_COUNT)
		return 0;
	bpf_core_read(&css, sizeof(css), &cset->subsys[subsys]);
	return css ? BPF_CORE_READ(css, cgroup, kn, id) : 0;
}

// Set by userspace on hybrid hosts: the iterator then writes each thread's
// v1 memory and cpu cgroups (struct task_cgroups), so that userspace can
// tell which cgroup2 paths the v1 hierarchies mirror.
const volatile bool report_v1_cgroups = false;

// The cgroups written last in this pass: the threads of a process come one
// after another and share their cgroups, so a record is written only when
// they change.
struct task_cgroups last_reported;

static __always_inline void report_cgroups(struct seq_file *seq, __u64 seq_num, struct task_struct *task, __u64 cgroup)
{
	struct task_cgroups r = {.cgroup = cgroup};
	if (bpf_core_enum_value_exists(enum cgroup_subsys_id, memory_cgrp_id))
		r.memory = v1_cgroup_id(task, bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id));
	if (bpf_core_enum_value_exists(enum cgroup_subsys_id, cpu_cgrp_id))
		r.cpu = v1_cgroup_id(task, bpf_core_enum_value(enum cgroup_subsys_id, cpu_cgrp_id));
	if (seq_num != 0 && r.cgroup == last_reported.cgroup && r.memory == last_reported.memory &&
	    r.cpu == last_reported.cpu)
		return;
	last_reported = r;
	bpf_seq_write(seq, &r, sizeof(r));
}

// count_tasks runs at every collection, for every thread of the host: it
// charges what the thread did since its last collection (at the first:
// its whole life if it began after the counters did, else nothing) to the
// cgroup it is in now, so a thread that moved between collections has that
// part charged to its new cgroup. Exiting threads are left to task_exit and
// task_free; leaving them also keeps this and task_free from settling one
// thread at once (a thread freed while this runs was exiting before it
// began).
SEC("iter/task")
int count_tasks(struct bpf_iter__task *ctx)
{
	struct task_struct *task = ctx->task;
	if (!task)
		return 0;
	__u64 cgroup = task_cgroup_id(task);
	if (report_v1_cgroups)
		report_cgroups(ctx->meta->seq, ctx->meta->seq_num, task, cgroup);
	if (task->flags & PF_EXITING)
		return 0;
	struct task_key key = {.tid = task->pid, .start_ns = task->start_time};
	struct task_state *st = task_state(task, &key);
	if (st)
		settle(task, st, cgroup);
	return 0;
}

// task_exit charges an exiting thread's figures at once, to the cgroup it
// ends in, so that a scrape just after a process ended counts it. It may
// run while count_tasks settles the same thread (which began before the
// thread was exiting): the lock in task_state orders them. The state it
// creates for a thread no collection saw tells task_free what is charged.
SEC("tp_btf/sched_process_exit")
int BPF_PROG(task_exit, struct task_struct *task)
{
	struct task_key key = {.tid = task->pid, .start_ns = task->start_time};
	struct task_state *st = task_state(task, &key);
	if (st)
		settle(task, st, task_cgroup_id(task));
	return 0;
}

// task_free charges what a thread did after task_exit (it still ran,
// waited and switched on its way out) when the kernel frees it, a grace
// period after it was reaped, and forgets it.
SEC("tp_btf/sched_process_free")
int BPF_PROG(task_free, struct task_struct *task)
{
	struct task_key key = {.tid = task->pid, .start_ns = task->start_time};
	struct task_state *st = bpf_map_lookup_elem(&tasks, &key);
	if (st) {
		settle(task, st, task_cgroup_id(task));
		bpf_map_delete_elem(&tasks, &key);
		return 0;
	}
	// Never charged (the map was full): all of it now, if it began after
	// the counters did. What an older one did since they began is not
	// known: it is left out (as CGSTAT_DROP_TASKS_FULL told).
	if (!born_counted(&key))
		return 0;
	struct task_figures now;
	read_figures(task, &now);
	charge(task_cgroup_id(task), &now);
	return 0;
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
			count_stat(CGSTAT_DROP_SOCKETS_FULL);
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
