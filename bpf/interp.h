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
	INTERP_RUBY = 2, /* bpf/interp_ruby.bpf.h */
	INTERP_PHP = 3,  /* bpf/interp_php.bpf.h */
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

/* The structure offsets the Ruby walker reads (interp_proc.off[]), in
 * bytes; interp/ruby sets them per version from Ruby's vm_core.h (3.1:
 * rb_execution_context_t 910-961, rb_control_frame_t 827-841). */
enum ruby_offset {
	RB_EC_VM_STACK = 0,  /* rb_execution_context_t.vm_stack (VALUE *) */
	RB_EC_VM_STACK_SIZE, /* rb_execution_context_t.vm_stack_size, in VALUEs */
	RB_EC_CFP,           /* rb_execution_context_t.cfp: the innermost control frame */
	RB_CFP_PC,           /* rb_control_frame_t.pc */
	RB_CFP_ISEQ,         /* rb_control_frame_t.iseq */
	RB_CFP_EP,           /* rb_control_frame_t.ep */
	RB_CFP_SIZE,         /* sizeof(rb_control_frame_t): frames are an array, the caller at cfp + 1 */
	RB_OFFSETS,
};

/* Ruby words, innermost frame first. A frame of Ruby code takes three
 * words: its iseq (bits 0..46) tagged RB_TAG_ISEQ, its pc (the next
 * instruction's address), and the method entry of its method (the local
 * env's ep[-2]: a ment or an svar holding it, 0 if not reached); or two,
 * without the last, when RB_WORD_SAME_ME says it is the previous Ruby
 * frame's (a block and its method, a recursion). A C method takes one: its
 * method entry, tagged RB_TAG_CFUNC. Bit 63 is set on the frame that ends
 * an activation of the interpreter loop (the frame C pushed before calling
 * vm_exec: VM_FRAME_FLAG_FINISH). */
#define RB_WORD_ADDR_BITS 47
#define RB_WORD_TAG_SHIFT 61
#define RB_TAG_ISEQ 1ULL
#define RB_TAG_CFUNC 2ULL
#define RB_WORD_SAME_ME (1ULL << 60)
#define RB_WORD_ENTRY (1ULL << 63)

/* The structure offsets the PHP walker reads (interp_proc.off[]), in
 * bytes; interp/php sets them per version from PHP's headers (the
 * citations are there). interp_proc.addr is the process's
 * executor_globals: PHP's NTS builds keep one per process, not per thread. */
enum php_offset {
	PHP_EG_CURRENT_EX = 0, /* zend_executor_globals.current_execute_data */
	PHP_EX_OPLINE,         /* zend_execute_data.opline */
	PHP_EX_FUNC,           /* zend_execute_data.func */
	PHP_EX_CALL_INFO,      /* zend_execute_data.This.u1.type_info: the call info in its top 16 bits */
	PHP_EX_PREV,           /* zend_execute_data.prev_execute_data */
	PHP_EX_SIZE,           /* bytes of an execute_data read at once (covers the fields above) */
	PHP_FN_TYPE,           /* zend_function.type, a byte */
	PHP_OPA_LAST,          /* zend_op_array.last: its opcodes, a u32 */
	PHP_OPA_OPCODES,       /* zend_op_array.opcodes */
	PHP_FN_SIZE,           /* bytes of a zend_function read at once (covers the fields above) */
	PHP_OPA_LINE_START,    /* zend_op_array.line_start, a u32 (read alone: beyond PHP_FN_SIZE) */
	PHP_OP_SIZE,           /* sizeof(zend_op) */
	PHP_OP_LINENO,         /* zend_op.lineno, a u32 */
	PHP_OFFSETS,
};

/* interp_proc.val[] of a PHP process. */
enum php_value {
	PHP_CALL_TOP = 0, /* the call-info bit of the first frame of an activation of execute_ex (ZEND_CALL_TOP) */
	PHP_VM_REGS,      /* non-zero: the VM keeps the running frame in r14 and its opline in r15 (HYBRID, global registers) */
	PHP_VALUES,
};

/* PHP words: bits 0..46 the zend_function's address, 47..62 the line
 * (0: unknown; 0xffff: further than it can say), 63 set on the first
 * frame of an activation of execute_ex (ZEND_CALL_TOP: the native frame it
 * replaces). */
#define PHP_WORD_ADDR_BITS 47
#define PHP_WORD_LINE_SHIFT 47
#define PHP_WORD_LINE_MAX 0xffff
#define PHP_WORD_ENTRY (1ULL << 63)

/* Function types (zend_function.type). */
#define PHP_INTERNAL_FUNCTION 1
#define PHP_USER_FUNCTION 2
#define PHP_EVAL_CODE 4

/* What a walker needs of one process, whatever its runtime: interp.State
 * as the kernel keeps it. */
struct interp_proc {
	__u64 cookie;  /* of the image this is for: see known_procs; first (image_entry) */
	__u32 kind;    /* enum interp_kind */
	__u32 flags;   /* enum interp_proc_flags */
	__u64 task_tp; /* offset of the thread pointer (thread.fsbase) in struct task_struct */
	__s64 tls;     /* the thread state is the word at the thread pointer + tls ... */
	__u64 tls2;    /* ... (INTERP_TLS_TWO_LEVEL: in the block there, at + tls2) */
	__u64 addr;    /* a per-process address the runtime names (reserved: PHP's executor_globals) */
	__u64 val[4];  /* runtime values (enum cpython_value) */
	__u16 off[16]; /* runtime structure offsets (enum cpython_offset, ruby_offset) */
};

#endif
