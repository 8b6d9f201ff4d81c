// SPDX-License-Identifier: GPL-2.0
//
// The user-stack walker: for processes userspace gave unwind tables to
// (unwind_procs), the sampler walks the user stack itself, one frame per
// bpf_loop iteration: find the executable mapping of the pc, the row of its
// object's table covering it, compute the CFA (the caller's stack pointer),
// read the return address below it and the caller's frame pointer where the
// row says it was saved. Code no table covers (Go, JIT code, objects
// without call-frame information) is walked by its frame pointer. Signal
// frames continue in the interrupted context. Included by profile.bpf.c.

// unwind_procs: the executable mappings of each process with tables.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct unwind_proc);
} unwind_procs SEC(".maps");

// unwind_proc_of returns the ranges the walker uses for process pid, whose
// image is cookie: its own, or its parent's (image_entry). NULL: none,
// frame pointers.
static __always_inline struct unwind_proc *unwind_proc_of(__u32 pid, __u64 cookie, bool *inherited)
{
	return image_entry(&unwind_procs, pid, cookie, inherited);
}

// unwind_tables: each table's base, leaves and index slice, by table id.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct unwind_table);
} unwind_tables SEC(".maps");

// unwind_index: the first pc of every leaf, tables in slices. An array, so
// the binary search's lookups are inlined loads.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, __u32);
} unwind_index SEC(".maps");

// unwind_leaves: the rows, UNWIND_LEAF_ROWS per leaf, sorted by pc; the
// unused tail of a table's last leaf holds pc 0xffffffff.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 4096);
	__type(key, struct unwind_leaf_key);
	__type(value, struct unwind_leaf);
} unwind_leaves SEC(".maps");

// unwind_row_cache: per CPU, the rows found last, by (table, object
// address). A CPU samples the same few stacks over and over: a hit spares
// the two hash lookups and the two searches of find_row, most of a
// frame's cost. Table ids are never reused, and a row is a fact of its
// object, so an entry never goes stale; each program has its own copy (the
// maps are not shared), so an entry is never read while half written.
struct unwind_cached_row {
	__u64 addr;
	__u32 table; // 0: empty
	__u32 pad;
	struct unwind_row row;
};

struct unwind_row_cache {
	struct unwind_cached_row slots[UNWIND_ROW_CACHE_SLOTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct unwind_row_cache);
} unwind_row_cache SEC(".maps");

// The general-purpose registers of the frame whose pc is exact (the leaf,
// or the context a signal interrupted), in DWARF order, for rows whose CFA
// is based on a register other than rsp and rbp; and room for reading a
// signal frame's saved registers.
struct unwind_regs {
	__u64 r[16];
	__u64 sigcontext[17]; // r8..r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct unwind_regs);
} unwind_regs SEC(".maps");


// The searches are global functions, and branchless: the verifier checks
// each once, with its arguments unknown, and follows one path through it,
// instead of every outcome of every comparison at every frame of the walk
// (which exceeds its budget and costs start-up time).

// below is 1 when a < b, for values under 2^63, without a branch: the
// empty asm keeps clang from turning the sign bit back into a comparison,
// which BPF could only branch on (every branch doubles the paths the
// verifier follows).
static __always_inline __u64 opaque(__u64 x)
{
	asm volatile("" : "+r"(x));
	return x;
}

static __always_inline __u64 below(__u64 a, __u64 b)
{
	return opaque(opaque(a - b) >> 63);
}

// find_range returns the index of the range of p holding pc, or
// UNWIND_MAX_RANGES when none does. hint is the range found last: frames of
// one object follow each other.
__noinline __u32 find_range(struct unwind_proc *p, __u64 pc, __u32 hint)
{
	if (!p)
		return UNWIND_MAX_RANGES;
	if (hint < UNWIND_MAX_RANGES && pc - p->ranges[hint].start < p->ranges[hint].len)
		return hint;
	__u64 n = p->nranges, lo = 0;
	// The last range starting at or below pc; slots past n count as above
	// everything.
	for (__u64 step = UNWIND_MAX_RANGES / 2; step > 0; step /= 2) { // 64 .. 1
		__u64 i = lo + step, valid = below(i, n), slot = i * valid;
		if (slot >= UNWIND_MAX_RANGES)
			return UNWIND_MAX_RANGES;
		lo += step * opaque(valid & (below(pc, p->ranges[slot].start) ^ 1));
	}
	if (n == 0 || lo >= UNWIND_MAX_RANGES || pc < p->ranges[0].start || pc - p->ranges[lo].start >= p->ranges[lo].len)
		return UNWIND_MAX_RANGES;
	return lo;
}

// leaf_row returns the index of the last row of leaf at or below pc; the
// leaf's first row is, since the index chose the leaf by it.
__noinline __u32 leaf_row(struct unwind_leaf *leaf, __u32 pc)
{
	if (!leaf)
		return 0;
	__u64 lo = 0;
	for (__u64 step = 256; step > 0; step /= 2) {
		__u64 i = lo + step, valid = below(i, UNWIND_LEAF_ROWS), slot = i * valid;
		if (slot >= UNWIND_LEAF_ROWS)
			return 0;
		lo += step * opaque(valid & (below(pc, leaf->rows[slot].pc) ^ 1));
	}
	return lo;
}

// row_cache_slot returns the slot of unwind_row_cache holding (id, addr)
// if any: a multiplicative hash of both.
static __always_inline __u32 row_cache_slot(__u32 id, __u64 addr)
{
	__u64 h = (addr ^ ((__u64)id << 40)) * 0x9E3779B97F4A7C15ULL;
	return (h >> 32) & (UNWIND_ROW_CACHE_SLOTS - 1);
}

// find_row copies into *out the row of table id covering object address
// addr and returns 1, or returns 0 when the table does not cover it (or
// was evicted meanwhile and the row is not cached).
__noinline int find_row(__u32 id, __u64 addr, struct unwind_row *out)
{
	if (!out)
		return 0;
	__u32 zero = 0;
	struct unwind_row_cache *cache = bpf_map_lookup_elem(&unwind_row_cache, &zero);
	struct unwind_cached_row *cached = 0;
	if (cache) {
		cached = &cache->slots[row_cache_slot(id, addr)];
		if (cached->table == id && cached->addr == addr) {
			*out = cached->row;
			return 1;
		}
	}
	struct unwind_table *t = bpf_map_lookup_elem(&unwind_tables, &id);
	if (!t || addr < t->base || addr - t->base > 0xffffffffULL)
		return 0;
	__u64 pc = addr - t->base, n = t->nleaves, first = t->index_first;

	// The last leaf whose first pc is at or below pc, by a branchless
	// search over UNWIND_MAX_LEAVES slots: slots past n count as above
	// everything.
	__u64 lo = 0;
	for (__u64 step = UNWIND_MAX_LEAVES / 2; step > 0; step /= 2) {
		__u64 i = lo + step, valid = below(i, n);
		__u32 slot = first + i * valid;
		__u32 *leaf_pc = bpf_map_lookup_elem(&unwind_index, &slot);
		if (!leaf_pc)
			return 0;
		lo += step * opaque(valid & (below(pc, *leaf_pc) ^ 1));
	}
	// Slot 0 itself was not compared.
	__u32 slot0 = first;
	__u32 *first_pc = bpf_map_lookup_elem(&unwind_index, &slot0);
	if (!first_pc || n == 0 || pc < *first_pc)
		return 0;

	struct unwind_leaf_key key = { .table = id, .leaf = lo };
	struct unwind_leaf *leaf = bpf_map_lookup_elem(&unwind_leaves, &key);
	if (!leaf)
		return 0;
	__u32 i = leaf_row(leaf, pc);
	if (i >= UNWIND_LEAF_ROWS)
		return 0;
	*out = leaf->rows[i];
	if (cached) {
		cached->table = 0; // not a whole entry until table is written last
		cached->addr = addr;
		cached->row = *out;
		cached->table = id;
	}
	return 1;
}

// frame is where the walk is: the registers of the frame being left.
struct frame {
	__u64 pc, sp, bp;
	__u32 range;    // the range found last: frames of one object follow each other
	__u8 exact;     // pc is where execution stopped (leaf, interrupted by a signal), not a return address
	__u8 fp;        // the last step found the caller by the frame pointer
	__u8 bp_known;  // bp holds the frame's rbp (a row may say it is not recoverable)
	__u8 outside;   // pcs in a row outside every known range
	__u8 wanted;    // 1 + the first range met whose table is compiled on demand
};

// CONTINUE is what the steps return when the walk goes on; otherwise they
// return how it ended (enum stack_end).
#define CONTINUE -1

// step_frame_pointer moves to the caller by the frame-pointer chain: the
// frame pointer holds the caller's frame pointer, the return address is
// just above it. There is no check that the frame is above the stack
// pointer: Go switches stacks (a cgo call runs on the system stack, its Go
// caller's frames on the goroutine's). A chain that points astray ends at
// the next pc, outside every mapping, or at the depth limit.
static __always_inline int step_frame_pointer(struct frame *f)
{
	__u64 frame[2]; // saved rbp, return address
	if (!f->bp_known)
		return END_UNSUPPORTED; // a row said rbp cannot be recovered: no chain to follow
	if (f->bp == 0)
		return END_COMPLETE; // the chain's end (_start and Go clear rbp)
	if (bpf_probe_read_user(frame, sizeof(frame), (void *)f->bp))
		return END_READ_FAILED;
	f->fp = 1;
	f->sp = f->bp + 16;
	f->bp = frame[0];
	f->pc = frame[1];
	f->exact = 0;
	return f->pc == 0 ? END_COMPLETE : CONTINUE;
}

// step_signal continues in the context a signal interrupted. The frame is
// the signal trampoline's (__restore_rt): the handler returned to it by
// popping the return address, so rsp points at the struct ucontext of the
// kernel's struct rt_sigframe (arch/x86/include/asm/sigframe.h), whose
// uc_mcontext (struct sigcontext, arch/x86/include/uapi/asm/sigcontext.h)
// follows uc_flags, uc_link and uc_stack: 40 bytes in.
static __always_inline int step_signal(struct frame *f, struct unwind_regs *regs)
{
	if (bpf_probe_read_user(regs->sigcontext, sizeof(regs->sigcontext), (void *)(f->sp + 40)))
		return END_READ_FAILED;
	__u64 *sc = regs->sigcontext;
	// DWARF numbering: rax rdx rcx rbx rsi rdi rbp rsp r8..r15.
	regs->r[0] = sc[13];
	regs->r[1] = sc[12];
	regs->r[2] = sc[14];
	regs->r[3] = sc[11];
	regs->r[4] = sc[9];
	regs->r[5] = sc[8];
	regs->r[6] = sc[10];
	regs->r[7] = sc[15];
	for (int i = 0; i < 8; i++)
		regs->r[8 + i] = sc[i];
	f->bp = sc[10];
	f->bp_known = 1;
	f->sp = sc[15];
	f->pc = sc[16];
	f->exact = 1; // the interrupted instruction, not a return address
	return f->pc == 0 ? END_COMPLETE : CONTINUE;
}

// unwind_frame moves f from a frame to its caller by the unwind table of
// the frame's object, or by the frame pointer where no table covers it.
// It returns CONTINUE, or how the walk ended. A global function: the
// verifier checks its many paths once, not at every frame.
__noinline int unwind_frame(struct frame *f, struct unwind_proc *proc, struct unwind_regs *regs)
{
	if (!f || !proc || !regs)
		return END_READ_FAILED;
	f->fp = 0;
	// A return address follows its call: look the call up.
	__u64 pc = f->exact ? f->pc : f->pc - 1;
	__u32 ri = find_range(proc, pc, f->range);
	if (ri >= UNWIND_MAX_RANGES) {
		// Code mapped since the ranges were read (a JIT's, a library
		// loaded later) keeps frame pointers more often than not; two
		// such pcs in a row are more likely a chain gone astray.
		if (++f->outside > 1)
			return END_NO_MAPPING;
		return step_frame_pointer(f);
	}
	f->outside = 0;
	f->range = ri;
	struct unwind_range *r = &proc->ranges[ri];
	if (r->table == UNWIND_TABLE_ON_DEMAND) {
		if (!f->wanted)
			f->wanted = ri + 1;
		return step_frame_pointer(f);
	}
	struct unwind_row row = {};
	if (!r->table || !find_row(r->table, pc - r->bias, &row) || row.cfa_kind == CFA_NONE)
		return step_frame_pointer(f);

	__s64 off = (__s64)row.cfa_off * 8;
	__u64 cfa;
	__u8 kind = row.cfa_kind;
	if ((kind == CFA_RBP || kind == CFA_DEREF_RBP || row.rbp == RBP_AT_RBP) && !f->bp_known)
		return END_UNSUPPORTED;
	switch (kind) {
	case CFA_RSP:
		cfa = f->sp + off;
		break;
	case CFA_RBP:
		cfa = f->bp + off;
		break;
	case CFA_PLT:
		cfa = f->sp + 8 + ((f->pc & 15) >= (__u64)row.cfa_off ? 8 : 0);
		break;
	case CFA_DEREF_RBP:
		if (bpf_probe_read_user(&cfa, sizeof(cfa), (void *)(f->bp + off)))
			return END_READ_FAILED;
		break;
	case CFA_END:
		return END_COMPLETE;
	case CFA_SIGNAL:
		return step_signal(f, regs);
	default:
		if (kind < CFA_REG_BASE || kind >= CFA_REG_BASE + 16 || !f->exact)
			return END_UNSUPPORTED;
		cfa = regs->r[(kind - CFA_REG_BASE) & 15] + off;
	}
	if (cfa <= f->sp)
		return END_BAD_FRAME;

	__u64 ra;
	if (bpf_probe_read_user(&ra, sizeof(ra), (void *)(cfa - 8)))
		return END_READ_FAILED;
	if (row.rbp < 0) {
		if (bpf_probe_read_user(&f->bp, sizeof(f->bp), (void *)(cfa + (__s64)row.rbp * 8)))
			return END_READ_FAILED;
		f->bp_known = 1;
	} else if (row.rbp == RBP_AT_RBP) {
		if (bpf_probe_read_user(&f->bp, sizeof(f->bp), (void *)f->bp))
			return END_READ_FAILED;
	} else if (row.rbp == RBP_UNKNOWN) {
		f->bp_known = 0;
	}
	f->sp = cfa;
	f->pc = ra;
	f->exact = 0;
	return ra == 0 ? END_COMPLETE : CONTINUE;
}

// walk is the state of one stack walk, on the BPF stack (bpf_loop's
// context must be).
struct walk {
	struct stack_trace *trace;
	struct unwind_proc *proc;
	struct unwind_regs *regs;
	struct frame f;
	__u32 n;       // frames recorded
	__u32 table_frames, fp_frames;
	__u8 end;      // enum stack_end, once the walk stopped
	__u8 leaf_fp;  // the leaf's caller was found by frame pointer
	__u8 pc_outside; // a pc of the walk is outside every known range
};

// walk_step records frame i and moves to its caller. The frame's index is
// bpf_loop's, not a count kept in w: the verifier treats it as unknown, so
// it checks the callback once rather than once per possible depth.
static long walk_step(__u64 i, struct walk *w)
{
	if (i >= UNWIND_MAX_DEPTH) {
		w->end = END_DEPTH;
		return 1;
	}
	// An interrupted instruction past the leaf is marked, so that userspace
	// names it as it is rather than by the call before it.
	w->trace->ips[i & (MAX_STACK_DEPTH - 1)] = w->f.pc | (w->f.exact && i ? PC_EXACT : 0);
	w->n = i + 1;
	if (i + 1 == UNWIND_MAX_DEPTH) {
		w->end = END_DEPTH;
		return 1;
	}
	int end = unwind_frame(&w->f, w->proc, w->regs);
	if (w->f.fp) {
		w->fp_frames++;
		w->leaf_fp |= i == 0;
	} else {
		w->table_frames++;
	}
	// Any frame, not only the leaf: a process first sampled while the
	// dynamic loader ran was read before its libraries were mapped, and
	// its later leaves mostly lie in the main program, whose callers in
	// those libraries would otherwise never be walked by their tables.
	w->pc_outside |= w->f.outside;
	if (end == CONTINUE)
		return 0;
	w->end = end;
	return 1;
}

// walk_user_stack unwinds the user stack of a process with tables into
// trace and returns how the walk ended. *leaf_fp tells whether the leaf's
// caller was found through the frame pointer (then the caller of a
// frameless leaf is missing, and the sampler looks for it at the stack
// pointer), *pc_outside whether a pc of the walk lies outside every known
// range (then the process's mappings are read again, once per load of its
// ranges), and *wanted 1 + the index of the first range met whose table is
// compiled on demand (0: none).
static __always_inline __u8 walk_user_stack(struct unwind_proc *proc, struct stack_trace *trace, bool *leaf_fp,
					    bool *pc_outside, __u32 *wanted)
{
	__u32 zero = 0;
	struct unwind_regs *regs = bpf_map_lookup_elem(&unwind_regs, &zero);
	if (!regs)
		return END_READ_FAILED;
	// The user registers, saved at the top of the task's kernel stack when
	// it entered the kernel (by this interrupt, if it hit user mode).
	struct user_regs *u = (struct user_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	if (!u)
		return END_READ_FAILED;
	// DWARF numbering: rax rdx rcx rbx rsi rdi rbp rsp r8..r15.
	regs->r[0] = u->ax;
	regs->r[1] = u->dx;
	regs->r[2] = u->cx;
	regs->r[3] = u->bx;
	regs->r[4] = u->si;
	regs->r[5] = u->di;
	regs->r[6] = u->bp;
	regs->r[7] = u->sp;
	regs->r[8] = u->r8;
	regs->r[9] = u->r9;
	regs->r[10] = u->r10;
	regs->r[11] = u->r11;
	regs->r[12] = u->r12;
	regs->r[13] = u->r13;
	regs->r[14] = u->r14;
	regs->r[15] = u->r15;
	struct walk w = { .trace = trace, .proc = proc, .regs = regs, .end = END_DEPTH };
	w.f.pc = u->ip;
	w.f.sp = u->sp;
	w.f.bp = u->bp;
	w.f.exact = 1;
	w.f.bp_known = 1;
	w.f.range = UNWIND_MAX_RANGES;
	bpf_loop(UNWIND_MAX_DEPTH, walk_step, &w, 0);
	trace->len = w.n;
	// bpf_get_stack zeroes the rest of the buffer; hash_stack reads whole
	// blocks of four frames, so clear the tail of the last block (the walk
	// stops UNWIND_MAX_DEPTH frames deep, which leaves room for it).
	trace->ips[w.n & (MAX_STACK_DEPTH - 1)] = 0;
	trace->ips[(w.n + 1) & (MAX_STACK_DEPTH - 1)] = 0;
	trace->ips[(w.n + 2) & (MAX_STACK_DEPTH - 1)] = 0;
	count_stats(STAT_FRAMES_TABLE, w.table_frames);
	count_stats(STAT_FRAMES_FP, w.fp_frames);
	*leaf_fp = w.leaf_fp;
	*pc_outside = w.pc_outside;
	*wanted = w.f.wanted;
	return w.end;
}

// unwind_probe looks a pc of a process up as the walker does: which range
// holds it and which row of its table covers it. Tests run it with
// BPF_PROG_TEST_RUN to check the kernel side of the tables against the
// tables compiled in userspace; the sampler never loads it.
struct unwind_probe_args {
	__u32 pid;
	__u32 found; // 0: no range holds pc; 1: a range without a row for it; 2: a row
	__u64 pc;
	__u32 range;
	__u32 table;
	struct unwind_row row;
};

SEC("syscall")
int unwind_probe(struct unwind_probe_args *a)
{
	__u32 pid = a->pid;
	__u64 pc = a->pc;
	struct unwind_proc *proc = bpf_map_lookup_elem(&unwind_procs, &pid);
	a->found = 0;
	if (!proc)
		return 0;
	__u32 ri = find_range(proc, pc, UNWIND_MAX_RANGES);
	if (ri >= UNWIND_MAX_RANGES)
		return 0;
	struct unwind_range *r = &proc->ranges[ri];
	struct unwind_row row = {};
	a->range = ri;
	a->table = r->table;
	a->found = 1;
	if (r->table && find_row(r->table, pc - r->bias, &row)) {
		a->row = row;
		a->found = 2;
	}
	return 0;
}
