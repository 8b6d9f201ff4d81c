// SPDX-License-Identifier: GPL-2.0
//
// The PHP walker (interp/php gives it the process's executor_globals and
// the structure offsets of its version; the words it records are
// PHP_WORD_*). PHP's NTS builds (Debian's CLI, FPM, mod_php) run PHP code
// on one thread per process, and keep its state in one global,
// executor_globals: its current_execute_data is the innermost PHP frame,
// and each frame's prev_execute_data its caller
// (Zend/zend_compile.h's struct _zend_execute_data). Included by
// interp.bpf.h.

// php_walk is the state of one PHP walk, on the BPF stack (bpf_loop's
// context must be).
struct php_walk {
	struct interp_proc *p;
	struct stack_trace *trace;
	__u8 *buf;
	__u64 ex;     // the next execute_data to record; 0: the outermost was
	__u64 r14;    // the user registers the VM keeps its frame ...
	__u64 r15;    // ... and its opline in (PHP_VM_REGS), 0 if unknown
	__u32 n;      // words recorded
	__u8 end;     // enum interp_end, once the walk stopped
	__u8 visited; // the innermost frame has been seen
};

// frame_u32 is the 32-bit field at off in a buffer read into buf (4-aligned:
// the mask keeps the load inside the buffer).
static __always_inline __u32 frame_u32(__u8 *buf, __u16 off)
{
	return *(__u32 *)(buf + (off & 0x7c));
}

// php_opline_ok reports whether op is one of the op_array's opcodes: an
// opline that is not (a stale EX(opline) of the innermost frame, which
// the VM keeps in r15 and saves only before it may call out or throw) is
// not read. A global function: the verifier checks its comparisons once,
// not once per way through php_step.
__noinline int php_opline_ok(struct interp_proc *p, __u64 op, __u64 opcodes, __u32 last)
{
	if (!p)
		return 0;
	__u64 size = p->off[PHP_OP_SIZE];
	return size && op >= opcodes && op < opcodes + (__u64)last * size && (op - opcodes) % size == 0;
}

// php_step records one zend_execute_data and moves to its caller.
static long php_step(__u64 i, struct php_walk *w)
{
	if (w->n >= INTERP_MAX_WORDS) {
		w->end = IEND_DEPTH;
		return 1;
	}
	if (!w->ex) {
		w->end = IEND_COMPLETE;
		return 1;
	}
	struct interp_proc *p = w->p;
	__u8 *buf = w->buf;
	__u64 ex = w->ex;
	if (bpf_probe_read_user(buf, p->off[PHP_EX_SIZE] & 0x7f, (void *)ex)) {
		w->end = IEND_READ_FAILED;
		return 1;
	}
	__u64 opline = frame_word(buf, p->off[PHP_EX_OPLINE]);
	__u64 func = frame_word(buf, p->off[PHP_EX_FUNC]);
	__u32 call_info = frame_u32(buf, p->off[PHP_EX_CALL_INFO]);
	w->ex = frame_word(buf, p->off[PHP_EX_PREV]);
	int innermost = !w->visited;
	w->visited = 1;
	if (!func)
		return 0; // a dummy frame (zend_vm_stack_push_call_frame's for a call from C): nothing ran in it
	if (bpf_probe_read_user(buf, p->off[PHP_FN_SIZE] & 0x7f, (void *)func)) {
		w->end = IEND_READ_FAILED;
		return 1;
	}
	__u8 type = buf[p->off[PHP_FN_TYPE] & 0x7f];
	__u64 line = 0, entry = 0;
	if (type == PHP_USER_FUNCTION || type == PHP_EVAL_CODE) {
		__u32 last = frame_u32(buf, p->off[PHP_OPA_LAST]);
		__u64 opcodes = frame_word(buf, p->off[PHP_OPA_OPCODES]);
		// The innermost frame's opline is in r15 while the VM runs it
		// (r14 is then that frame); a caller's EX(opline) is its call,
		// saved before the call.
		__u64 op = 0;
		if (innermost && w->r14 == ex && php_opline_ok(p, w->r15, opcodes, last))
			op = w->r15;
		else if (php_opline_ok(p, opline, opcodes, last))
			op = opline;
		// Without an opline, where the function starts (line_start is
		// past what is read of the function, at once, for every frame).
		__u32 l = 0;
		if (bpf_probe_read_user(&l, sizeof(l), op ? (void *)(op + p->off[PHP_OP_LINENO]) : (void *)(func + p->off[PHP_OPA_LINE_START])))
			l = 0;
		// Without branches (below, opaque: see unwind.bpf.h), each of
		// which doubled the states the verifier followed to the end.
		line = l + (PHP_WORD_LINE_MAX - (__u64)l) * below(PHP_WORD_LINE_MAX, l); // at most PHP_WORD_LINE_MAX
		__u64 top = call_info & p->val[PHP_CALL_TOP];
		entry = opaque((top | -top) >> 63) << 63; // PHP_WORD_ENTRY when top is set
	} else if (type != PHP_INTERNAL_FUNCTION) {
		// Not a function: the offsets do not fit this process, or the
		// frame changed under the walk.
		w->end = IEND_READ_FAILED;
		return 1;
	}
	// Not a user address: recorded as a frame userspace cannot name.
	func *= below(func, 1ULL << PHP_WORD_ADDR_BITS) & (opaque(func >> 63) ^ 1);
	w->trace->ips[w->n & (MAX_STACK_DEPTH - 1)] = func | line << PHP_WORD_LINE_SHIFT | entry;
	w->n++;
	return 0;
}

// walk_php records the PHP frames of the current thread into trace and
// returns how the walk ended. Only the main thread runs PHP code in an NTS
// build; other threads (an extension's) are not walked.
__noinline int walk_php(struct interp_proc *p, struct stack_trace *trace)
{
	if (!p || !trace)
		return IEND_READ_FAILED;
	__u64 id = bpf_get_current_pid_tgid();
	if ((__u32)id != id >> 32)
		return IEND_NO_THREAD;
	__u64 ex;
	if (bpf_probe_read_user(&ex, sizeof(ex), (void *)(p->addr + p->off[PHP_EG_CURRENT_EX])))
		return IEND_READ_FAILED;
	if (!ex)
		return IEND_NO_FRAMES; // starting, shutting down, or an idle FPM worker
	__u32 zero = 0;
	struct interp_frame_buf *buf = bpf_map_lookup_elem(&interp_frame, &zero);
	if (!buf)
		return IEND_READ_FAILED;
	struct php_walk w = { .p = p, .trace = trace, .buf = buf->b, .ex = ex, .end = IEND_DEPTH };
	if (p->val[PHP_VM_REGS]) {
		// The user registers, saved when the task entered the kernel.
		struct user_regs *regs = (struct user_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
		if (regs) {
			w.r14 = regs->r14;
			w.r15 = regs->r15;
		}
	}
	// Dummy frames take iterations but no words: twice the words covers
	// one per frame that has a function.
	bpf_loop(2 * INTERP_MAX_WORDS, php_step, &w, 0);
	trace->len = w.n;
	if (!w.n && w.end == IEND_COMPLETE)
		return IEND_NO_FRAMES;
	return w.end;
}
