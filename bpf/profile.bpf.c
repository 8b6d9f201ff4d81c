//go:build ignore

// SPDX-License-Identifier: GPL-2.0
//
// CPU sampler: a perf_event program attached to the software cpu-clock on every
// CPU. Each sample is aggregated in the kernel by a key of (process, thread,
// cgroup, user stack, kernel stack), so userspace reads every unique stack once
// per drain instead of once per sample.
//
// Stacks are stored in a hash map keyed by a 64-bit hash of their frames,
// not in a BPF_MAP_TYPE_STACK_TRACE: a stack-trace map drops a sample whenever
// two different stacks fall into the same bucket, which at a few thousand
// stacks happens all the time. A second, independent 32-bit hash is stored with
// each stack so a real 64-bit collision is detected and counted.
//
// Maps come in two generations. The program writes into the generation named
// by control[0]; the drainer flips it, waits for running programs to finish
// (see profiler/drain.go) and then reads and clears the old generation at
// leisure, so no sample is lost or counted twice at the boundary.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "profile.h"
#include "stacks.bpf.h"

// sample_ctx is struct bpf_perf_event_data (linux/bpf_perf_event.h) on x86-64.
struct sample_ctx {
	struct user_regs regs;
	__u64 sample_period;
	__u64 addr;
};

char LICENSE[] SEC("license") = "GPL";

// The maps' max_entries below are defaults; userspace sets them from flags.
// The per-interval maps are not preallocated: preallocating both generations
// cost ~22 MiB of kernel memory and ~6 ms of CPU at every start, for tables
// that usually hold a few hundred entries.

struct counts_map {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
	__type(key, struct sample_key);
	__type(value, __u64);
} counts0 SEC(".maps"), counts1 SEC(".maps");


struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__array(values, struct counts_map);
} counts SEC(".maps") = {
	.values = {&counts0, &counts1},
};


// proc_epoch counts the entries forget_process removed: a last_proc entry
// from an earlier epoch may name a forgotten process.
__u64 proc_epoch;

// last_proc is, per CPU, the process announced or found in known_procs last,
// in the epoch it was: a CPU mostly samples the same process over and over,
// and this one cache line spares the hash lookup then.
struct last_proc {
	__u32 pid;
	__u32 pad;
	__u64 epoch;
	__u64 cookie;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct last_proc);
} last_proc SEC(".maps");


// sampled_in_user reports whether the sample interrupted user mode: then
// there is no kernel stack to walk, and ctx holds the user registers.
static __always_inline bool sampled_in_user(struct sample_ctx *ctx)
{
#if defined(__TARGET_ARCH_x86)
	return (*(volatile __u64 *)&ctx->regs.cs & 3) == 3; // CPL 3
#else
	return false;
#endif
}

// store_stack captures one stack (user or kernel, by flags) with the
// kernel's frame-pointer walk into generation g's stack map and returns its
// id, 0 when there is no such stack, or STACK_LOST. It is a global
// function, so the verifier checks it once rather than once for each kind
// of stack: verification is most of the sampler's load time. The verifier
// knows a global function's context argument by its type, so ctx has the
// kernel's name for it here; no field of it is read.
__noinline __u64 store_stack(struct bpf_perf_event_data *ctx, __u32 g, __u64 flags)
{
	__u32 zero = 0;
	struct stack_trace *trace = bpf_map_lookup_elem(&scratch, &zero);
	if (!trace)
		return 0;
	long n = bpf_get_stack(ctx, trace->ips, sizeof(trace->ips), flags);
	if (n <= 0)
		return 0; // no stack of this kind (kernel thread, or sample in user mode)
	trace->len = n / sizeof(__u64);
	return store_trace(trace, g);
}

// image_cookie returns the cookie of pid's current image if userspace was
// told about it, else 0.
static __always_inline __u64 image_cookie(__u32 pid)
{
	__u64 epoch = proc_epoch;
	__u32 zero = 0;
	struct last_proc *last = bpf_map_lookup_elem(&last_proc, &zero);
	if (last && last->pid == pid && last->epoch == epoch)
		return last->cookie;
	__u64 *cookie = bpf_map_lookup_elem(&known_procs, &pid);
	if (!cookie)
		return 0;
	if (last) {
		last->pid = pid;
		last->epoch = epoch;
		last->cookie = *cookie;
	}
	return *cookie;
}

// announce_process emits a ring-buffer event the first time a process image
// is sampled, with the image's new cookie.
static __always_inline void announce_process(__u32 pid)
{
	__u64 cookie = bpf_ktime_get_ns() | 1;
	if (bpf_map_update_elem(&known_procs, &pid, &cookie, BPF_NOEXIST))
		return; // another CPU announced it meanwhile
	__u32 zero = 0;
	struct last_proc *last = bpf_map_lookup_elem(&last_proc, &zero);
	if (last) {
		last->pid = pid;
		last->epoch = proc_epoch;
		last->cookie = cookie;
	}
	process_event(pid, PROCESS_NEW, cookie);
}

// forget_process drops the calling process from known_procs, so that its
// next sample announces it again: after an exec it is a new image, and after
// its exit the pid may come back as another process. Only the thread group
// leader's exit counts; another thread's leaves the process running. The
// epoch moves even when the pid was not in known_procs (the LRU may have
// evicted a process that a CPU's last_proc still names). A sample can put an
// exited process back (one of a thread that outlives its leader, or one
// taken after this hook but before the exit ends); userspace sweeps those
// out at every drain (profiler.Sampler.forgetExited).
static __always_inline void forget_process(bool leader_only)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 pid = pid_tgid >> 32;

	if (leader_only && (__u32)pid_tgid != pid)
		return;
	// Its mappings are gone or about to be: the walker must not use them
	// for the next image (the cookie check would keep it from doing so
	// anyway; this frees the entry at once).
	bpf_map_delete_elem(&unwind_procs, &pid);
	__u64 *known = bpf_map_lookup_elem(&known_procs, &pid);
	__u64 cookie = known ? *known : 0;
	bpf_map_delete_elem(&known_procs, &pid);
	__sync_fetch_and_add(&proc_epoch, 1);
	if (cookie) // else never announced: userspace holds nothing of it
		process_event(pid, PROCESS_GONE, cookie); // if lost, userspace's sweeps notice
}

// The raw tracepoints need neither tracefs nor kernel BTF, and read no
// kernel structure: the current task is the one that execs or exits.
SEC("raw_tp/sched_process_exec")
int process_exec(void *ctx)
{
	forget_process(false);
	return 0;
}

// process_exit forgets a process when its last thread exits: then no
// thread is left to be sampled and put it back. Its second argument,
// group_dead, is passed by recent kernels only; elsewhere this program does
// not attach and process_exit_leader is used.
SEC("raw_tp/sched_process_exit")
int process_exit(struct bpf_raw_tracepoint_args *ctx)
{
	if (ctx->args[1])
		forget_process(false);
	return 0;
}

// process_exit_leader forgets a process when its thread group leader exits.
// A thread that outlives its leader can put it back; the drain's sweep
// removes it then.
SEC("raw_tp/sched_process_exit")
int process_exit_leader(void *ctx)
{
	forget_process(true);
	return 0;
}

static __always_inline void count_sample(void *counts_map, struct sample_key *key)
{
	__u64 *cnt = bpf_map_lookup_elem(counts_map, key);
	if (cnt) {
		__sync_fetch_and_add(cnt, 1);
		return;
	}
	__u64 one = 1;
	long err = bpf_map_update_elem(counts_map, key, &one, BPF_NOEXIST);
	if (err == 0)
		return;
	if (err == -17) { // EEXIST: inserted by another CPU meanwhile
		cnt = bpf_map_lookup_elem(counts_map, key);
		if (cnt) {
			__sync_fetch_and_add(cnt, 1);
			return;
		}
	}
	count_stat(STAT_DROP_COUNTS_FULL);
}

// user_stack stores the user stack of the sample and returns its id (0:
// none, STACK_LOST: not stored), with how it ended in key->flags and the
// candidate caller of a frameless leaf in key->leaf_caller. Processes
// userspace gave unwind tables to are walked by them; others, and those
// whose tables are not in yet, by the kernel's frame-pointer walk; ranges
// loaded for another image of the pid (another cookie) are never used. A
// global function: the verifier checks it once, not once per path of the
// sampler that reaches it.
__noinline __u64 user_stack(struct bpf_perf_event_data *ctx, __u32 g, struct sample_key *key, __u64 cookie)
{
	if (!key)
		return 0;
	__u8 end = END_FRAME_POINTERS;
	__u64 id;
	bool leaf_fp = true;
	bool inherited;
	struct unwind_proc *proc = unwind_proc_of(key->pid, cookie, &inherited);
	if (proc) {
		__u32 zero = 0;
		struct stack_trace *trace = bpf_map_lookup_elem(&scratch, &zero);
		if (!trace)
			return 0;
		bool pc_outside = false;
		__u32 wanted = 0;
		end = walk_user_stack(proc, trace, &leaf_fp, &pc_outside, &wanted);
		id = trace->len ? store_trace(trace, g) : 0;
		if (inherited) {
			// Code outside the parent's ranges, or a table the parent's
			// ranges leave to be compiled on demand, in a child walked by
			// them, is asked about once the child has ranges of its own.
			count_stat(STAT_STACKS_PARENT_TABLES);
		} else {
			if (pc_outside && !(proc->flags & PROC_REFRESH_ASKED)) {
				proc->flags |= PROC_REFRESH_ASKED;
				process_event(key->pid, PROCESS_MAPPINGS_CHANGED, cookie);
			}
			// Which range is in the flags: userspace reads it from the
			// ranges it loaded (profiler.UnwindTables.WantedTable).
			if (wanted && !(proc->flags & PROC_TABLE_ASKED)) {
				proc->flags |= PROC_TABLE_ASKED | (wanted & 0xff) << PROC_WANTED_SHIFT;
				process_event(key->pid, PROCESS_MAPPINGS_CHANGED, cookie);
			}
		}
	} else {
		// A kernel thread has no user stack: bpf_get_stack finds none.
		id = store_stack((void *)ctx, g, BPF_F_USER_STACK);
	}
	id = stack_id(id, &key->flags, FLAG_USER_STACK_LOST);
	if (id || (key->flags & FLAG_USER_STACK_LOST)) {
		count_stat(STAT_STACK_END + end);
		key->flags |= (__u32)end << FLAG_USER_END_SHIFT;
	}
	if (id && leaf_fp)
		key->leaf_caller = leaf_caller();
	return id;
}

// interp_stack stores the interpreter stack of the sample, when its process
// has an interpreter the walkers know, in generation g's stack map and
// returns its id (0: none). A global function, as user_stack.
__noinline __u64 interp_stack(__u32 g, struct sample_key *key, __u64 cookie)
{
	if (!key)
		return 0;
	__u32 zero = 0;
	struct stack_trace *trace = bpf_map_lookup_elem(&scratch, &zero);
	if (!trace || !interp_walk(trace, key, cookie))
		return 0;
	return stack_id(store_trace(trace, g), &key->flags, FLAG_INTERP_STACK_LOST);
}

SEC("perf_event")
int sample_cpu(struct sample_ctx *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 pid = pid_tgid >> 32;
	__u32 tid = (__u32)pid_tgid;

	if (tid == 0) // the idle task: the CPU is not busy
		return 0;

	__u32 zero = 0;
	__u32 *gen = bpf_map_lookup_elem(&control, &zero);
	if (!gen)
		return 0;
	__u32 g = *gen & 1;
	void *counts_map = bpf_map_lookup_elem(&counts, &g);
	if (!counts_map)
		return 0;

	count_stat(STAT_SAMPLES);

	struct sample_key key = {};
	key.pid = pid;
	key.tid = tid;
	key.cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(key.comm, sizeof(key.comm));

	bool in_user = sampled_in_user(ctx);
	if (!in_user)
		key.kernel_stack = stack_id(store_stack((void *)ctx, g, 0), &key.flags, FLAG_KERNEL_STACK_LOST);
	__u64 cookie = image_cookie(pid);
	key.user_stack = user_stack((void *)ctx, g, &key, cookie);
	if (cookie)
		key.interp_stack = interp_stack(g, &key, cookie);
	if (!cookie && (key.user_stack || (key.flags & FLAG_USER_STACK_LOST)))
		announce_process(pid);

	count_sample(counts_map, &key);
	return 0;
}

// kernel_symbols names kernel text addresses for userspace, which runs it
// with BPF_PROG_TEST_RUN (it is never attached). The kernel looks each address
// up in its own symbol index ("%ps" of bpf_snprintf), so cgscope never reads
// /proc/kallsyms: formatting its ~120k lines alone costs the kernel about
// 40 ms of CPU, and indexing them several MiB of heap. Each line of
// ksym_names is "name", "name [module]", or "0x..." for an address no symbol
// covers.
struct ksym_request {
	__u64 addrs[KSYM_BATCH];
};

char ksym_names[KSYM_NAMES_SIZE];

SEC("syscall")
int kernel_symbols(struct ksym_request *req)
{
	static const char fmt[] = "%ps\n%ps\n%ps\n%ps\n%ps\n%ps\n%ps\n%ps\n%ps\n%ps\n%ps\n%ps\n";
	__u64 args[KSYM_BATCH];

	for (int i = 0; i < KSYM_BATCH; i++)
		args[i] = req->addrs[i];
	// The length written, NUL included, or a negative error.
	return bpf_snprintf(ksym_names, sizeof(ksym_names), fmt, args, sizeof(args));
}

// Referenced so their BTF reaches bpf2go, which generates the Go types.
const struct new_process_event *unused_new_process_event __attribute__((unused));
const enum stat_index *unused_stat_index __attribute__((unused));
const enum stack_end *unused_stack_end __attribute__((unused));
const enum process_event_kind *unused_process_event_kind __attribute__((unused));
const enum unwind_proc_flags *unused_unwind_proc_flags __attribute__((unused));
const struct unwind_probe_args *unused_unwind_probe_args __attribute__((unused));
const enum cfa_kind *unused_cfa_kind __attribute__((unused));
const enum interp_kind *unused_interp_kind __attribute__((unused));
const enum interp_end *unused_interp_end __attribute__((unused));
const enum interp_proc_flags *unused_interp_proc_flags __attribute__((unused));
const enum cpython_offset *unused_cpython_offset __attribute__((unused));
const enum cpython_value *unused_cpython_value __attribute__((unused));
const enum ruby_offset *unused_ruby_offset __attribute__((unused));
