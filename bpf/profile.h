/* SPDX-License-Identifier: GPL-2.0 */
/* Types shared by profile.bpf.c and, through bpf2go, the Go side. */
#ifndef CGSCOPE_PROFILE_H
#define CGSCOPE_PROFILE_H

#include "unwind.h"
#include "interp.h"

/* Frames kept per stack; a multiple of four (see hash_stack). The kernel
 * walks at most kernel.perf_event_max_stack (127) of them. */
#define MAX_STACK_DEPTH 128

/* Kernel addresses named per run of kernel_symbols: bpf_snprintf takes at
 * most 12 arguments. */
#define KSYM_BATCH 12
/* Room for KSYM_BATCH lines of the longest names (KSYM_NAME_LEN is 512) and
 * module suffixes, so the output is never cut short. */
#define KSYM_NAMES_SIZE 8192

enum control_index {
	CONTROL_GENERATION = 0,
	CONTROL_MAX,
};

/* Keep in step with profiler.DropReasons (the drop reasons, in this
 * order), profiler.StackEnds and profiler.Sampler.Stats. */
enum stat_index {
	STAT_SAMPLES = 0,             /* samples taken (not idle) */
	STAT_DROP_COUNTS_FULL,        /* sample lost: counts map full */
	STAT_DROP_STACKS_FULL,        /* stack lost: stacks map full (sample kept) */
	STAT_DROP_STACK_COLLISION,    /* stack lost: 64-bit hash collision (sample kept) */
	STAT_DROP_PROC_EVENTS,        /* new-process event lost: ring buffer full */
	STAT_FRAMES_TABLE,            /* user frames unwound by a table row */
	STAT_FRAMES_FP,               /* user frames unwound by the frame pointer */
	STAT_STACK_END,               /* user stacks by how they ended: + enum stack_end */
	/* interpreter walks by runtime and how they ended: + kind * IEND_MAX + enum interp_end */
	STAT_INTERP_STACK = STAT_STACK_END + END_MAX,
	/* nanoseconds spent walking interpreter stacks, by runtime: + kind */
	STAT_INTERP_NS = STAT_INTERP_STACK + INTERP_KINDS * IEND_MAX,
	/* user stacks walked by the tables of the process's parent: forked
	 * without an exec, its own not loaded yet (unwind_proc_of) */
	STAT_STACKS_PARENT_TABLES = STAT_INTERP_NS + INTERP_KINDS,
	STAT_MAX,
};

enum sample_flags {
	FLAG_USER_STACK_LOST = 1,
	FLAG_KERNEL_STACK_LOST = 2,
	FLAG_INTERP_STACK_LOST = 4,
	/* Bits 8..15: how the user stack ended (enum stack_end). */
	FLAG_USER_END_SHIFT = 8,
	/* Bits 24..27: how the interpreter walk ended (enum interp_end), bits
	 * 28..31: its runtime (enum interp_kind; 0: none walked). */
	FLAG_INTERP_END_SHIFT = 24,
	FLAG_INTERP_KIND_SHIFT = 28,
};

struct sample_key {
	__u32 pid;          /* tgid */
	__u32 tid;
	__u64 cgroup_id;    /* cgroup2 id: the inode of the cgroup directory */
	__u64 user_stack;   /* stack id, 0 = none */
	__u64 kernel_stack; /* stack id, 0 = none */
	__u64 leaf_caller;  /* return address found at the user SP, 0 = none */
	__u64 interp_stack; /* stack id of the interpreter's words (see interp.h), 0 = none */
	__u32 flags;        /* FLAG_* */
	__u32 pad;
	char comm[16];
};

struct stack_trace {
	__u32 len;   /* frames used in ips */
	__u32 check; /* independent hash to detect id collisions */
	__u64 ips[MAX_STACK_DEPTH];
};

enum process_event_kind {
	PROCESS_NEW = 0,  /* first sample of a process image */
	PROCESS_GONE = 1, /* an announced image exec'd or exited */
	/* The stack walker met code outside the mappings it was given (a
	 * library mapped after the process was announced): read them again. */
	PROCESS_MAPPINGS_CHANGED = 2,
};

struct new_process_event {
	__u32 pid;
	__u32 kind;    /* enum process_event_kind */
	__u64 cookie;  /* of the image: see known_procs */
	/* PROCESS_NEW: the process it was forked from, when it has not exec'd
	 * since and runs the same executable (its mappings are that process's
	 * as of the fork); else 0. */
	__u32 parent;
	__u32 pad;
};

#endif
