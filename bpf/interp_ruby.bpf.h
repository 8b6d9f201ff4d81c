// SPDX-License-Identifier: GPL-2.0
//
// The Ruby walker (CRuby 3.1; interp/ruby gives the offsets): from the
// sampled thread's rb_execution_context_t (the thread-local
// ruby_current_ec, which interp_walk read), it walks the control frames
// from ec->cfp to the end of the VM stack, innermost first, and records
// each frame of Ruby code (iseq, pc and its method's entry) and each C
// method (its method entry) as RB_WORD_* describe. Names, files and lines
// are read by userspace from those addresses. Included by interp.bpf.h.
//
// What is read of a frame, from vm_core.h (3.1.2):
//   - ep[0] (VM_ENV_DATA_INDEX_FLAGS, 1272): the frame's flags, a Fixnum
//     (bit 0 set, which checks the read); VM_FRAME_MAGIC_MASK (1250) gives
//     its type, VM_FRAME_FLAG_CFRAME (1255) says C (no iseq),
//     VM_FRAME_FLAG_FINISH (1253) that C called vm_exec for it, and
//     VM_ENV_FLAG_LOCAL (1262) that its env is its method's;
//   - ep[-1] (VM_ENV_DATA_INDEX_SPECVAL): in a block's env, the outer env,
//     tagged in its low two bits (VM_GUARDED_PREV_EP);
//   - ep[-2] (VM_ENV_DATA_INDEX_ME_CREF): in a method's (local) env, its
//     method entry or an svar holding it (vm_insnhelper.c:644-680); in a
//     C method's frame, its method entry (vm_insnhelper.c:3019-3030).

#define RB_FRAME_MAGIC_MASK 0x7fff0001ULL
#define RB_FRAME_MAGIC_CFUNC 0x55550001ULL
#define RB_FRAME_FLAG_FINISH 0x20ULL
#define RB_FRAME_FLAG_CFRAME 0x80ULL
#define RB_ENV_FLAG_LOCAL 0x02ULL

// Outer envs followed from a block's env to its method's: a block nested
// deeper keeps its label and file, without its class.
#define RB_MAX_ENV_HOPS 4

// Where in the frame buffer each read lands: the control frame at 0, its
// env's three words at RB_ENV_AT, an outer env's at RB_OUTER_AT.
#define RB_CFP_MAX 64
#define RB_ENV_AT 64
#define RB_OUTER_AT 96

// rb_walk is the state of one Ruby walk, on the BPF stack.
struct rb_walk {
	struct interp_proc *p;
	struct stack_trace *trace;
	struct interp_frame_buf *fb;
	__u8 *buf;  // fb's bytes
	__u64 cfp;  // the next control frame to record
	__u64 last; // the outermost frame, not recorded (the VM stack's dummy, or the main thread's <main>)
	__u64 me;   // the method entry of the last Ruby frame recorded (~0: none yet)
	__u32 n;    // words recorded
	__u8 end;   // enum interp_end, once the walk stopped
};

static __always_inline void rb_put(struct rb_walk *w, __u64 v)
{
	w->trace->ips[w->n & (MAX_STACK_DEPTH - 1)] = v;
	w->n++;
}

// rb_local_me returns ep[-2] of the local env of a frame whose env's
// words (me_cref, specval, flags) are at RB_ENV_AT: the method entry of a
// block's method is in the env of the method's frame. A global function:
// the verifier checks its hops once, rather than the rest of rb_step once
// for each way out of them (which was more than half of the sampler's
// verification, and of its start-up).
__noinline __u64 rb_local_me(struct interp_frame_buf *fb)
{
	if (!fb)
		return 0;
	__u8 *buf = fb->b;
	__u64 *env = (__u64 *)(buf + RB_ENV_AT);
	__u64 me = env[0], specval = env[1], flags = env[2];
	for (int i = 0; i < RB_MAX_ENV_HOPS; i++) {
		if (flags & RB_ENV_FLAG_LOCAL)
			return me;
		__u64 ep = specval & ~3ULL;
		if (!ep || bpf_probe_read_user(buf + RB_OUTER_AT, 24, (void *)(ep - 16)))
			return 0;
		__u64 *outer = (__u64 *)(buf + RB_OUTER_AT);
		me = outer[0];
		specval = outer[1];
		flags = outer[2];
	}
	return (flags & RB_ENV_FLAG_LOCAL) ? me : 0;
}

// rb_step records one control frame and moves to its caller (cfp + 1).
static long rb_step(__u64 i, struct rb_walk *w)
{
	if (w->cfp >= w->last) {
		w->end = IEND_COMPLETE;
		return 1;
	}
	struct interp_proc *p = w->p;
	__u8 *buf = w->buf;
	__u32 size = p->off[RB_CFP_SIZE];
	if (size < 48 || size > RB_CFP_MAX) {
		w->end = IEND_READ_FAILED;
		return 1;
	}
	if (bpf_probe_read_user(buf, size, (void *)w->cfp)) {
		w->end = IEND_READ_FAILED;
		return 1;
	}
	w->cfp += size;
	__u64 pc = *(__u64 *)(buf + (p->off[RB_CFP_PC] & 0x38));
	__u64 iseq = *(__u64 *)(buf + (p->off[RB_CFP_ISEQ] & 0x38));
	__u64 ep = *(__u64 *)(buf + (p->off[RB_CFP_EP] & 0x38));
	if (bpf_probe_read_user(buf + RB_ENV_AT, 24, (void *)(ep - 16))) {
		w->end = IEND_READ_FAILED;
		return 1;
	}
	__u64 *env = (__u64 *)(buf + RB_ENV_AT);
	__u64 flags = env[2];
	if (!(flags & 1)) { // not a Fixnum: not a frame (a half-pushed one)
		w->end = IEND_READ_FAILED;
		return 1;
	}
	// The words are computed without branches (below, opaque: see
	// unwind.bpf.h): every branch here doubled the states the verifier
	// followed through the rest of the step.
	__u64 entry = opaque((flags & RB_FRAME_FLAG_FINISH) >> 5) << 63; // RB_WORD_ENTRY
	if (!(flags & RB_FRAME_FLAG_CFRAME)) {
		if (!pc)
			return 0; // not started: Ruby's backtraces skip it too
		__u64 me = rb_local_me(w->fb);
		__u64 diff = opaque(me ^ w->me);
		__u64 same = opaque((diff | -diff) >> 63) ^ 1; // 1: the method entry of the last Ruby frame
		__u64 words = 3 - same;
		if (w->n + words > INTERP_MAX_WORDS) {
			w->end = IEND_DEPTH;
			return 1;
		}
		// Not a user address: a frame userspace cannot name.
		iseq *= below(iseq, 1ULL << RB_WORD_ADDR_BITS) & (opaque(iseq >> 63) ^ 1);
		__u32 n = w->n;
		w->trace->ips[n & (MAX_STACK_DEPTH - 1)] = iseq | RB_TAG_ISEQ << RB_WORD_TAG_SHIFT | entry | same << 60; // RB_WORD_SAME_ME
		w->trace->ips[(n + 1) & (MAX_STACK_DEPTH - 1)] = pc;
		w->trace->ips[(n + 2) & (MAX_STACK_DEPTH - 1)] = me; // overwritten next when same
		w->n = n + words;
		w->me = me;
		return 0;
	}
	if ((flags & RB_FRAME_MAGIC_MASK) != RB_FRAME_MAGIC_CFUNC)
		return 0; // a C block (IFUNC) or a dummy frame: not named by Ruby either
	if (w->n + 1 > INTERP_MAX_WORDS) {
		w->end = IEND_DEPTH;
		return 1;
	}
	__u64 me = env[0];
	me *= below(me, 1ULL << RB_WORD_ADDR_BITS) & (opaque(me >> 63) ^ 1); // not a user address: unnamed
	rb_put(w, me | RB_TAG_CFUNC << RB_WORD_TAG_SHIFT | entry);
	return 0;
}

// walk_ruby records the control frames of the thread whose execution
// context is ec into trace and returns how the walk ended. The context's
// frame pointer must lie in its VM stack, a whole number of frames from its
// end (vm_core.h:1463-1466: the frames grow down from the stack's end).
__noinline int walk_ruby(struct interp_proc *p, struct stack_trace *trace, __u64 ec)
{
	if (!p || !trace)
		return IEND_READ_FAILED;
	__u64 stack, size, cfp;
	if (bpf_probe_read_user(&stack, sizeof(stack), (void *)(ec + p->off[RB_EC_VM_STACK])) ||
	    bpf_probe_read_user(&size, sizeof(size), (void *)(ec + p->off[RB_EC_VM_STACK_SIZE])) ||
	    bpf_probe_read_user(&cfp, sizeof(cfp), (void *)(ec + p->off[RB_EC_CFP])))
		return IEND_READ_FAILED;
	__u64 fsize = p->off[RB_CFP_SIZE];
	if (!stack || !size || size > (1ULL << 28) || !fsize)
		return IEND_NO_FRAMES; // a thread starting or ending: no VM stack
	__u64 end = stack + size * 8;
	if (cfp < stack || cfp >= end || (end - cfp) % fsize)
		return IEND_BAD_THREAD;
	__u32 zero = 0;
	struct interp_frame_buf *buf = bpf_map_lookup_elem(&interp_frame, &zero);
	if (!buf)
		return IEND_READ_FAILED;
	struct rb_walk w = { .p = p, .trace = trace, .fb = buf, .buf = buf->b, .cfp = cfp, .last = end - fsize, .me = ~0ULL, .end = IEND_DEPTH };
	// Skipped frames (C blocks, dummies) take iterations but no words.
	bpf_loop(2 * INTERP_MAX_WORDS, rb_step, &w, 0);
	trace->len = w.n;
	if (!w.n && w.end == IEND_COMPLETE)
		return IEND_NO_FRAMES;
	return w.end;
}
