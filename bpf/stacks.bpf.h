// SPDX-License-Identifier: GPL-2.0
//
// What the CPU sampler (profile.bpf.c) and the off-CPU sampler
// (offcpu.bpf.c) share: the stack storage (two generations of stacks keyed
// by a hash of their frames), the user-stack walker and its tables, the
// processes announced to userspace and the events that announce them, and
// the counters. Each object defines these maps; cgscope loads the
// off-CPU object with the sampler's maps in their place, so both write the
// same stacks, walk with the same tables and announce through the same
// ring buffer.
#ifndef CGSCOPE_STACKS_BPF_H
#define CGSCOPE_STACKS_BPF_H

#include "offcpu.h"

// The register frame of the interrupted task: x86-64's struct pt_regs as the
// UAPI (asm/ptrace.h) lays it out, which is also what a perf_event program's
// context starts with. It is declared here, not taken from vmlinux.h, whose
// types carry CO-RE relocations: a program without any needs no kernel BTF
// parsed in userspace to load, which was the largest part of cgscope's
// start-up CPU time. Its layout is ABI, so a fixed one is right on every
// kernel.
struct user_regs {
	__u64 r15, r14, r13, r12, bp, bx, r11, r10, r9, r8;
	__u64 ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
};

// The maps' max_entries below are defaults; userspace sets them from flags.
struct stacks_map {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct stack_trace);
} stacks0 SEC(".maps"), stacks1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__array(values, struct stacks_map);
} stacks SEC(".maps") = {
	.values = {&stacks0, &stacks1},
};

// control[CONTROL_GENERATION] is the generation (0 or 1) being written.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CONTROL_MAX);
	__type(key, __u32);
	__type(value, __u32);
} control SEC(".maps");

// stats[STAT_*]: samples and drops by reason, per CPU so counting is lock-free.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

// known_procs remembers which processes userspace has been told about, so
// it can snapshot /proc/PID/maps on the first sample of a process, while a
// short-lived process is still alive. An exec or the exit of a process
// removes its entry (forget_process), so a new image or a reused pid is
// announced again. The value is the image's cookie (the time it was
// announced, never 0): what userspace loads for an image carries it, so
// nothing loaded for an earlier image of the pid is ever used for a later
// one, whatever the order in which userspace learns of them.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, __u64);
} known_procs SEC(".maps");

#define PROC_EVENTS_BYTES (64 * 1024)

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, PROC_EVENTS_BYTES);
} proc_events SEC(".maps");

// Off-CPU samples: counts by key in two generations, flipped with the CPU
// counts (see control), and their stacks in a map of their own, kept across
// drains (least recently used ones go): a sample's stacks are taken when a
// thread leaves the CPU, its count added when it comes back, maybe after a
// drain.
struct offcpu_counts_map {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
	__type(key, struct sample_key);
	__type(value, struct offcpu_value);
} offcpu_counts0 SEC(".maps"), offcpu_counts1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__array(values, struct offcpu_counts_map);
} offcpu_counts SEC(".maps") = {
	.values = {&offcpu_counts0, &offcpu_counts1},
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct stack_trace);
} offcpu_stacks SEC(".maps");

// Scratch space for a stack: too large for the 512-byte BPF stack. The kernel
// and the user stack take turns in it, so a sample touches one buffer.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stack_trace);
} scratch SEC(".maps");

static __always_inline void count_stats(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);
	if (v)
		*v += n;
}

static __always_inline void count_stat(__u32 idx)
{
	count_stats(idx, 1);
}

// fork_parent returns the process the current one was forked from, when it
// has not exec'd since and runs the same executable: its mappings are then
// its parent's as of the fork, and userspace takes them from the parent's
// snapshot rather than read /proc (a shell forks one child per command, and
// most are sampled before their exec). 0 otherwise. exec increments a
// task's self_exec_id, and fork copies it and records the parent's in
// parent_exec_id (fs/exec.c begin_new_exec, kernel/fork.c copy_process):
// they are equal until the process's first exec.
static __always_inline __u32 fork_parent(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct task_struct *leader = BPF_CORE_READ(task, group_leader);
	if (!leader || BPF_CORE_READ(leader, self_exec_id) != BPF_CORE_READ(leader, parent_exec_id))
		return 0;
	struct task_struct *parent = BPF_CORE_READ(leader, real_parent);
	struct file *exe = BPF_CORE_READ(leader, mm, exe_file);
	if (!parent || !exe || exe != BPF_CORE_READ(parent, mm, exe_file))
		return 0;
	return BPF_CORE_READ(parent, tgid);
}

// forked_from returns the parent of the current process when the process
// was forked without an exec (fork_parent), with the cookie of the image
// userspace knows the parent by; 0 otherwise. Userspace reads the notice of
// such a process late (it does not wake userspace), and until then the
// walkers use what they hold for the parent: the child's mappings are the
// parent's as of the fork.
static __always_inline __u32 forked_from(__u64 *parent_cookie)
{
	__u32 parent = fork_parent();
	if (!parent)
		return 0;
	__u64 *known = bpf_map_lookup_elem(&known_procs, &parent);
	if (!known)
		return 0;
	*parent_cookie = *known;
	return parent;
}

// image_entry returns map's entry for the current process, pid, whose image
// is cookie (0: not announced yet): its own, or, until userspace has loaded
// that, its parent's when it was forked without an exec (forked_from);
// *inherited then says so. The maps it serves (unwind_procs, interp_procs)
// are keyed by pid and their values begin with the image's cookie, so an
// entry of another image of either pid is never used. NULL: none.
static __always_inline void *image_entry(void *map, __u32 pid, __u64 cookie, bool *inherited)
{
	void *own = bpf_map_lookup_elem(map, &pid);
	*inherited = false;
	if (own && cookie && *(__u64 *)own == cookie)
		return own;
	__u64 parent_cookie = 0;
	__u32 parent = forked_from(&parent_cookie);
	if (!parent)
		return NULL;
	void *theirs = bpf_map_lookup_elem(map, &parent);
	if (!theirs || *(__u64 *)theirs != parent_cookie)
		return NULL;
	*inherited = true;
	return theirs;
}

#include "unwind.bpf.h"
#include "interp.bpf.h"


// mix_frame folds one frame into both hashes.
static __always_inline void mix_frame(__u64 *h, __u32 *check, __u64 ip)
{
	*h = (*h ^ ip) * 0x100000001b3ULL;
	*check = (*check ^ (__u32)(ip >> 3) ^ (__u32)(ip >> 35)) * 0x01000193;
	*check ^= *check >> 15;
}

// STACK_LOST is what store_stack returns for a stack that exists but could
// not be stored; hash_stack never returns it.
#define STACK_LOST (~0ULL)

struct hash_state {
	struct stack_trace *trace;
	__u64 h;
	__u32 check;
};

// hash_block folds frames 4i..4i+3 into the hashes; a bpf_loop callback, so
// the verifier checks it once instead of once per iteration.
static long hash_block(__u64 i, void *data)
{
	struct hash_state *st = data;

	if (i >= MAX_STACK_DEPTH / 4)
		return 1;
	__u64 j = i * 4;
	mix_frame(&st->h, &st->check, st->trace->ips[j]);
	mix_frame(&st->h, &st->check, st->trace->ips[j + 1]);
	mix_frame(&st->h, &st->check, st->trace->ips[j + 2]);
	mix_frame(&st->h, &st->check, st->trace->ips[j + 3]);
	return 0;
}

// hash_stack fills trace->check and returns the stack's id: a 64-bit FNV-1a
// style hash of the frames, never 0 (0 means "no stack") nor STACK_LOST. bpf_get_stack
// zeroes the buffer past the stack, so hashing whole blocks of four frames
// gives the same result for the same stack.
static __always_inline __u64 hash_stack(struct stack_trace *trace)
{
	struct hash_state st = { .trace = trace, .h = 0xcbf29ce484222325ULL, .check = 0x9e3779b9 };

	bpf_loop((trace->len + 3) / 4, hash_block, &st, 0);
	trace->check = st.check;
	return st.h && st.h != STACK_LOST ? st.h : 1;
}

// store_trace_in stores a captured stack in stack_map and returns its id,
// or STACK_LOST.
static __always_inline __u64 store_trace_in(struct stack_trace *trace, void *stack_map)
{
	__u64 id = hash_stack(trace);
	struct stack_trace *existing = bpf_map_lookup_elem(stack_map, &id);
	if (existing) {
		if (existing->check == trace->check)
			return id;
		count_stat(STAT_DROP_STACK_COLLISION);
		return STACK_LOST;
	}
	long err = bpf_map_update_elem(stack_map, &id, trace, BPF_NOEXIST);
	if (err == 0 || err == -17 /* EEXIST: another CPU stored it first */)
		return id;
	count_stat(STAT_DROP_STACKS_FULL);
	return STACK_LOST;
}

// store_trace stores a captured stack in generation g's stack map.
static __always_inline __u64 store_trace(struct stack_trace *trace, __u32 g)
{
	void *stack_map = bpf_map_lookup_elem(&stacks, &g);
	return stack_map ? store_trace_in(trace, stack_map) : 0;
}

// stack_id turns what store_stack returned into a key's stack id, flagging a
// lost stack.
static __always_inline __u64 stack_id(__u64 ret, __u32 *flags, __u32 lost_flag)
{
	if (ret != STACK_LOST)
		return ret;
	*flags |= lost_flag;
	return 0;
}

// is_return_address reports whether the instruction right before addr is a
// call, which makes addr a return address rather than data.
static __always_inline bool is_return_address(__u64 addr)
{
#if defined(__TARGET_ARCH_x86)
	__u8 b[8];
	if (addr < 8 || bpf_probe_read_user(b, sizeof(b), (void *)(addr - 8)))
		return false;
	if (b[3] == 0xe8) // call rel32
		return true;
	if (b[6] == 0xff && (b[7] & 0xf8) == 0xd0) // call *%reg
		return true;
	if (b[5] == 0xff && (b[6] & 0x38) == 0x10) // call *disp8(%reg)
		return true;
	if (b[2] == 0xff && (b[3] & 0x38) == 0x10) // call *disp32(%reg), call *rel32(%rip)
		return true;
#endif
	return false;
}

// leaf_caller returns the word at the user stack pointer when it is a return
// address. Frame-pointer unwinding skips the caller of a leaf that has no
// frame of its own (Go and optimized C leaves, or a PC in a prologue); that
// caller's return address is then exactly at [sp]. Userspace decides whether
// to insert it, since only it knows if the leaf function is frameless. A
// global function: the verifier checks its four ways of saying yes once,
// not once per way through the sampler that reaches it.
__noinline __u64 leaf_caller(void)
{
	// The user registers, saved at the top of the task's kernel stack when
	// it entered the kernel (by this interrupt, if it hit user mode).
	struct user_regs *regs = (struct user_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	__u64 ret = 0;
	if (!regs || bpf_probe_read_user(&ret, sizeof(ret), (void *)regs->sp))
		return 0;
	return is_return_address(ret) ? ret : 0;
}

// process_event tells userspace about a process image.
static __always_inline void process_event(__u32 pid, __u32 kind, __u64 cookie)
{
	struct new_process_event *ev = bpf_ringbuf_reserve(&proc_events, sizeof(*ev), 0);
	if (!ev) {
		count_stat(STAT_DROP_PROC_EVENTS);
		return;
	}
	ev->pid = pid;
	ev->kind = kind;
	ev->cookie = cookie;
	ev->parent = kind == PROCESS_NEW ? fork_parent() : 0;
	ev->pad = 0;
	// A new image wakes userspace at once: it reads the process's mappings
	// while the process lives, for its names. So does a changed mapping
	// (the walker met code outside the process's ranges, at most once per
	// load of them): its tables are wanted now. A process forked without an
	// exec does not: userspace takes its parent's snapshot, which it holds
	// already, and the walkers use the parent's tables meanwhile
	// (forked_from); a shell's subshells are a third of the new processes
	// under churn. Nor does an exit: a wakeup per exit cost a host starting
	// 100 processes a second as much as the exits' own work. These wait for
	// the next wakeup, or the next drain, which reads the ring before the
	// maps (profiler.Sampler.Drain). Userspace does not poll: a poll is a
	// wakeup too, ten a second were four tenths of an idle daemon's CPU. The ring
	// a quarter full wakes it, long before it could overflow.
	__u64 wake = BPF_RB_NO_WAKEUP;
	if ((kind == PROCESS_NEW && !ev->parent) || kind == PROCESS_MAPPINGS_CHANGED ||
	    bpf_ringbuf_query(&proc_events, BPF_RB_AVAIL_DATA) > PROC_EVENTS_BYTES / 4)
		wake = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(ev, wake);
}

#endif
