/* SPDX-License-Identifier: GPL-2.0 */
/* Interpreter stacks as the samplers read them; shared, through bpf2go,
 * with the Go side (profiler/interp.go writes struct interp_proc from an
 * interp.State; interp/ decodes the words a walker records). */
#ifndef CGSCOPE_INTERP_H
#define CGSCOPE_INTERP_H

/* Words an interpreter walker records per stack: a stack_trace's frames
 * less the three cleared after the last (the hash reads whole blocks of
 * four), as for native stacks. */
#define INTERP_MAX_WORDS 124

/* Which walker reads a process's interpreter stack; keep in step with
 * interp.Kind. 0 is none: such a process has no interp_procs entry. */
enum interp_kind {
	INTERP_NONE = 0,
	INTERP_CPYTHON = 1,
	INTERP_RUBY = 2, /* reserved: not walked yet */
	INTERP_PHP = 3,  /* reserved: not walked yet */
	INTERP_KINDS = 4,
};

/* How an interpreter walk ended; keep in step with profiler.InterpEnds. */
enum interp_end {
	IEND_COMPLETE = 0,   /* reached the interpreter's outermost frame */
	IEND_DEPTH,          /* INTERP_MAX_WORDS words recorded */
	IEND_READ_FAILED,    /* a structure of the target could not be read */
	IEND_NO_THREAD,      /* the thread has no interpreter state (not an interpreter thread) */
	IEND_BAD_THREAD,     /* the thread state failed its check (not the sampled thread's) */
	IEND_NO_FRAMES,      /* the thread runs no interpreted code now */
	IEND_MAX,
};

/* interp_proc.flags */
enum interp_proc_flags {
	/* The thread state is found through two pointers: the word at the
	 * thread pointer + tls is a block, the state is at that block + tls2
	 * (glibc's second-level thread-specific data, keys >= 32). */
	INTERP_TLS_TWO_LEVEL = 1,
};

/* An offset no structure has: the field is absent in this version. */
#define INTERP_NO_OFFSET 0xffff

/* The structure offsets the CPython walker reads (interp_proc.off[]), in
 * bytes; interp/python sets them per version from CPython's headers. */
enum cpython_offset {
	PY_TSTATE_THREAD_ID = 0, /* PyThreadState.thread_id: pthread_self(), the thread pointer */
	PY_TSTATE_FRAME,         /* PyThreadState.cframe (3.11, 3.12) or .current_frame (3.13) */
	PY_CFRAME_FRAME,         /* _PyCFrame.current_frame, or INTERP_NO_OFFSET (3.13: no cframe) */
	PY_FRAME_CODE,           /* _PyInterpreterFrame.f_code (f_executable in 3.13) */
	PY_FRAME_PREVIOUS,       /* _PyInterpreterFrame.previous */
	PY_FRAME_INSTR,          /* _PyInterpreterFrame.prev_instr (instr_ptr in 3.13) */
	PY_FRAME_ENTRY,          /* _PyInterpreterFrame.is_entry (3.11) or .owner (3.12 on), a byte */
	PY_FRAME_SIZE,           /* bytes of a frame read at once (covers the fields above) */
	PY_CODE_ADAPTIVE,        /* PyCodeObject.co_code_adaptive: the first instruction */
	PY_OFFSETS,
};

/* interp_proc.val[] of a CPython process. */
enum cpython_value {
	/* 0: a frame whose entry byte is non-zero is the first of an
	 * activation of the interpreter loop (3.11's is_entry); else the
	 * owner value of the frame each activation pushes on the C stack
	 * (3.12 on: FRAME_OWNED_BY_CSTACK), which is not recorded. */
	PY_ENTRY_OWNER = 0,
	PY_VALUES,
};

/* CPython words: bits 0..46 the code object's address, 47..62 the index
 * of the frame's instruction in code units plus one (0: not started yet;
 * 0xffff: further than it can say), 63 set on the first frame of an
 * activation of the interpreter loop (the native frame it replaces). */
#define PY_WORD_ADDR_BITS 47
#define PY_WORD_LASTI_SHIFT 47
#define PY_WORD_LASTI_MAX 0xffff
#define PY_WORD_ENTRY (1ULL << 63)

/* What a walker needs of one process, whatever its runtime: interp.State
 * as the kernel keeps it. */
struct interp_proc {
	__u64 cookie;  /* of the image this is for: see known_procs */
	__u32 kind;    /* enum interp_kind */
	__u32 flags;   /* enum interp_proc_flags */
	__u64 task_tp; /* offset of the thread pointer (thread.fsbase) in struct task_struct */
	__s64 tls;     /* the thread state is the word at the thread pointer + tls ... */
	__u64 tls2;    /* ... (INTERP_TLS_TWO_LEVEL: in the block there, at + tls2) */
	__u64 addr;    /* a per-process address the runtime names (reserved: PHP's executor_globals) */
	__u64 val[4];  /* runtime values (enum cpython_value) */
	__u16 off[16]; /* runtime structure offsets (enum cpython_offset) */
};

#endif
