// SPDX-License-Identifier: GPL-2.0
//
// Interpreter stacks: for processes userspace found an interpreter in
// (interp_procs, written by profiler/interp.go from interp.State), the
// samplers read the interpreter's own call stack of the sampled thread from
// its thread and frame structures, and record one word per interpreted frame
// (what the word holds is the runtime's: for CPython, the code object and
// the instruction, see PY_WORD_*). Nothing is named here: userspace reads
// the names, files and line tables of the recorded objects later, and
// merges the frames into the native stack where the interpreter loop runs.
//
// Every runtime reaches its thread state the same way: from the thread
// pointer (the x86-64 fs base, task->thread.fsbase, at an offset userspace
// took from the kernel's BTF, so this object has no CO-RE relocation and
// loads without the kernel's BTF), at the offset of a thread-local
// variable or thread-specific slot. Each runtime then has a walker of its
// own, a global function the verifier checks once. Included by
// stacks.bpf.h.

// interp_procs: the interpreter of each process that has one the walkers
// can read, stamped with the image's cookie.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct interp_proc);
} interp_procs SEC(".maps");

// A frame's bytes, read at once: fields are taken from it at offsets the
// verifier sees bounded by the masks below.
#define INTERP_FRAME_BYTES 136

struct interp_frame_buf {
	__u8 b[INTERP_FRAME_BYTES];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct interp_frame_buf);
} interp_frame SEC(".maps");

// frame_word is the pointer-sized field at off in a frame read into buf
// (pointers are 8-aligned: the mask keeps the load inside the buffer).
static __always_inline __u64 frame_word(__u8 *buf, __u16 off)
{
	return *(__u64 *)(buf + (off & 0x78));
}

// py_walk is the state of one CPython walk, on the BPF stack (bpf_loop's
// context must be).
struct py_walk {
	struct interp_proc *p;
	struct stack_trace *trace;
	__u8 *buf;
	__u64 frame; // the next frame to record; 0: the outermost was
	__u32 n;     // words recorded
	__u8 end;    // enum interp_end, once the walk stopped
};

// py_step records one _PyInterpreterFrame and moves to its caller
// (Include/internal/pycore_frame.h). Each activation of the interpreter
// loop is marked on its first frame: 3.11 flags it (is_entry); from 3.12
// on, the loop pushes a frame of its own on the C stack (owner
// FRAME_OWNED_BY_CSTACK) behind it, which is skipped and marks the frame
// recorded just before it.
static long py_step(__u64 i, struct py_walk *w)
{
	if (w->n >= INTERP_MAX_WORDS) {
		w->end = IEND_DEPTH;
		return 1;
	}
	if (!w->frame) {
		w->end = IEND_COMPLETE;
		return 1;
	}
	struct interp_proc *p = w->p;
	__u8 *buf = w->buf;
	if (bpf_probe_read_user(buf, p->off[PY_FRAME_SIZE] & 0x7f, (void *)w->frame)) {
		w->end = IEND_READ_FAILED;
		return 1;
	}
	__u64 code = frame_word(buf, p->off[PY_FRAME_CODE]);
	__u64 instr = frame_word(buf, p->off[PY_FRAME_INSTR]);
	__u8 entry = buf[p->off[PY_FRAME_ENTRY] & 0x7f];
	w->frame = frame_word(buf, p->off[PY_FRAME_PREVIOUS]);
	__u64 owner = p->val[PY_ENTRY_OWNER];
	if (owner) {
		if (entry == owner) {
			if (w->n)
				w->trace->ips[(w->n - 1) & (MAX_STACK_DEPTH - 1)] |= PY_WORD_ENTRY;
			return 0;
		}
		entry = 0;
	}
	// The instruction's index in code units (2 bytes), as
	// _PyInterpreterFrame_LASTI computes it; -1 before the first.
	__s64 lasti = (__s64)(instr - code - p->off[PY_CODE_ADAPTIVE]) >> 1;
	__u64 v = lasti < -1 ? 0 : lasti + 1 > PY_WORD_LASTI_MAX ? PY_WORD_LASTI_MAX : (__u64)(lasti + 1);
	if (code >= (1ULL << PY_WORD_ADDR_BITS))
		code = 0; // not a user address: recorded as a frame userspace cannot name
	w->trace->ips[w->n & (MAX_STACK_DEPTH - 1)] = code | v << PY_WORD_LASTI_SHIFT | (entry ? PY_WORD_ENTRY : 0);
	w->n++;
	return 0;
}

// walk_cpython records the frames of the thread whose PyThreadState is ts
// into trace and returns how the walk ended. The state must name the
// thread it was found for (thread_id is its pthread_self(), which is the
// thread pointer on x86-64 glibc): the slot of a thread that is not
// Python's holds garbage or nothing.
__noinline int walk_cpython(struct interp_proc *p, struct stack_trace *trace, __u64 tp, __u64 ts)
{
	if (!p || !trace)
		return IEND_READ_FAILED;
	__u64 v;
	if (bpf_probe_read_user(&v, sizeof(v), (void *)(ts + p->off[PY_TSTATE_THREAD_ID])))
		return IEND_READ_FAILED;
	if (v != tp)
		return IEND_BAD_THREAD;
	__u64 frame;
	if (bpf_probe_read_user(&frame, sizeof(frame), (void *)(ts + p->off[PY_TSTATE_FRAME])))
		return IEND_READ_FAILED;
	if (p->off[PY_CFRAME_FRAME] != INTERP_NO_OFFSET) {
		if (!frame)
			return IEND_NO_FRAMES;
		if (bpf_probe_read_user(&frame, sizeof(frame), (void *)(frame + p->off[PY_CFRAME_FRAME])))
			return IEND_READ_FAILED;
	}
	if (!frame)
		return IEND_NO_FRAMES;
	__u32 zero = 0;
	struct interp_frame_buf *buf = bpf_map_lookup_elem(&interp_frame, &zero);
	if (!buf)
		return IEND_READ_FAILED;
	struct py_walk w = { .p = p, .trace = trace, .buf = buf->b, .frame = frame, .end = IEND_DEPTH };
	// Skipped entry frames take iterations but no words: twice the words
	// covers one per activation.
	bpf_loop(2 * INTERP_MAX_WORDS, py_step, &w, 0);
	trace->len = w.n;
	if (!w.n && w.end == IEND_COMPLETE)
		return IEND_NO_FRAMES;
	return w.end;
}

#include "interp_ruby.bpf.h"
#include "interp_php.bpf.h"

// interp_walk records the interpreter stack of the current thread into
// trace when pid's image (cookie) has an interpreter the walkers know, and
// says so in key->flags (how the walk ended, and the runtime). It returns
// whether trace holds words to store. A global function: the verifier
// checks it once for both samplers' callers.
__noinline int interp_walk(struct stack_trace *trace, struct sample_key *key, __u64 cookie)
{
	if (!trace || !key)
		return 0;
	trace->len = 0;
	// Forked without an exec, its own not loaded yet: the parent's
	// interpreter, at the same addresses (image_entry).
	bool inherited;
	struct interp_proc *p = image_entry(&interp_procs, key->pid, cookie, &inherited);
	if (!p)
		return 0;
	__u32 kind = p->kind & (INTERP_KINDS - 1);
	// The walk's own time, for cgscope_interpreter_walk_seconds_total:
	// what interpreted processes cost the sampler beyond their native
	// stacks (two clock reads, only for them).
	__u64 t0 = bpf_ktime_get_ns();
	__u64 task = bpf_get_current_task();
	__u64 tp = 0, ts = 0;
	int end;
	if (bpf_probe_read_kernel(&tp, sizeof(tp), (void *)(task + p->task_tp)) || !tp)
		end = IEND_READ_FAILED;
	else if (kind == INTERP_PHP)
		end = walk_php(p, trace); // a per-process global, no thread state
	else if (bpf_probe_read_user(&ts, sizeof(ts), (void *)(tp + p->tls)))
		end = IEND_READ_FAILED;
	else if (ts && (p->flags & INTERP_TLS_TWO_LEVEL) && bpf_probe_read_user(&ts, sizeof(ts), (void *)(ts + p->tls2)))
		end = IEND_READ_FAILED;
	else if (!ts)
		end = IEND_NO_THREAD;
	else if (kind == INTERP_CPYTHON)
		end = walk_cpython(p, trace, tp, ts);
	else if (kind == INTERP_RUBY)
		end = walk_ruby(p, trace, ts);
	else
		end = IEND_NO_THREAD; // a runtime these samplers cannot walk yet
	if (end < 0 || end >= IEND_MAX)
		end = IEND_READ_FAILED;
	count_stat(STAT_INTERP_STACK + kind * IEND_MAX + end);
	count_stats(STAT_INTERP_NS + kind, bpf_ktime_get_ns() - t0);
	key->flags |= (__u32)end << FLAG_INTERP_END_SHIFT | kind << FLAG_INTERP_KIND_SHIFT;
	__u32 n = trace->len;
	if (!n)
		return 0;
	// hash_stack reads whole blocks of four words: clear the rest of the
	// last block (the walk stops INTERP_MAX_WORDS words in, which leaves
	// room for it).
	trace->ips[n & (MAX_STACK_DEPTH - 1)] = 0;
	trace->ips[(n + 1) & (MAX_STACK_DEPTH - 1)] = 0;
	trace->ips[(n + 2) & (MAX_STACK_DEPTH - 1)] = 0;
	return 1;
}
