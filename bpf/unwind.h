/* SPDX-License-Identifier: GPL-2.0 */
/* Unwind tables as the sampler reads them; shared, through bpf2go, with the
 * Go side (profiler/unwind.go writes them, unwind.Row has struct
 * unwind_row's layout). */
#ifndef CGSCOPE_UNWIND_H
#define CGSCOPE_UNWIND_H

/* Rows per leaf: a leaf is a 4 KiB kernel allocation with the hash map's
 * element header (48 bytes), its key and the allocator's list node. */
#define UNWIND_LEAF_ROWS 504
/* Frames the walker records: MAX_STACK_DEPTH less the three it clears
 * after the last (the hash reads whole blocks of four). */
#define UNWIND_MAX_DEPTH 124
/* Executable mappings per process the walker knows (a power of two, for
 * the search); a 4 KiB allocation. */
#define UNWIND_MAX_RANGES 128
/* Leaves of one table the walker's index search reaches. */
#define UNWIND_MAX_LEAVES 16384

/* Rows each CPU keeps at hand (a power of two): 12 KiB per CPU. */
#define UNWIND_ROW_CACHE_SLOTS 512

/* How a row computes the CFA; keep in step with unwind.CFAKind. */
enum cfa_kind {
	CFA_NONE = 0,        /* no rule: walk the frame pointer */
	CFA_RSP = 1,         /* rsp + 8*off */
	CFA_RBP = 2,         /* rbp + 8*off */
	CFA_PLT = 3,         /* rsp + 8, + 8 when (rip & 15) >= off */
	CFA_DEREF_RBP = 4,   /* [rbp + 8*off] */
	CFA_END = 5,         /* the outermost frame */
	CFA_SIGNAL = 6,      /* a signal trampoline */
	CFA_UNSUPPORTED = 7, /* a rule the walker cannot follow */
	CFA_REG_BASE = 16,   /* + DWARF register r: r + 8*off, at the leaf only */
};

/* Where the caller's rbp is, besides "at CFA + 8*rbp" (negative). */
enum rbp_rule {
	RBP_SAME = 0,
	RBP_AT_RBP = 1,
	RBP_UNKNOWN = 2,
};

struct unwind_row {
	__u32 pc;      /* from the table's base */
	__s16 cfa_off; /* in units of 8 bytes; CFA_PLT: the threshold */
	__u8 cfa_kind;
	__s8 rbp;
};

struct unwind_leaf_key {
	__u32 table;
	__u32 leaf;
};

struct unwind_leaf {
	struct unwind_row rows[UNWIND_LEAF_ROWS];
};

/* A table: its rows are in leaves (table, 0..nleaves-1); index[first..+n)
 * holds the first pc of each leaf, to find the leaf of a pc. */
struct unwind_table {
	__u64 base;        /* object address of pc 0 */
	__u32 nleaves;
	__u32 index_first; /* in unwind_index */
};

/* unwind_range.table of an object whose table is compiled only once the
 * walker meets its code (its call-frame information is large, and most
 * objects a process maps never run): the walker walks frame pointers there
 * and asks for it (PROC_TABLE_ASKED). Keep in step with unwind.TableOnDemand. */
#define UNWIND_TABLE_ON_DEMAND 0xffffffffu

/* One executable mapping of a process: addresses [start, start+len) are
 * object addresses + bias. table 0: no table (frame pointers);
 * UNWIND_TABLE_ON_DEMAND: none yet. */
struct unwind_range {
	__u64 start;
	__u64 bias;
	__u32 len;
	__u32 table;
};

/* unwind_proc.flags */
enum unwind_proc_flags {
	/* The walker met a pc outside every range and asked userspace to
	 * read the process's mappings again (once per load of the ranges). */
	PROC_REFRESH_ASKED = 1,
	/* The walker met code of a range whose table is compiled on demand,
	 * and asked userspace for it (once per load of the ranges); bits
	 * PROC_WANTED_SHIFT.. hold 1 + that range's index. */
	PROC_TABLE_ASKED = 2,
	PROC_WANTED_SHIFT = 8,
};

/* A recorded user pc with this bit set is the exact address of an
 * interrupted instruction (the frame a signal interrupted), not a return
 * address: userspace names it as it is, not by the call before it. */
#define PC_EXACT (1ULL << 63)

struct unwind_proc {
	__u64 cookie; /* of the image these ranges are of: see known_procs; first (image_entry) */
	__u32 nranges;
	__u32 flags; /* enum unwind_proc_flags */
	struct unwind_range ranges[UNWIND_MAX_RANGES]; /* sorted by start */
};

/* How the walk of a user stack ended; keep in step with profiler.StackEnds. */
enum stack_end {
	END_COMPLETE = 0,    /* reached the outermost frame */
	END_DEPTH,           /* MAX_STACK_DEPTH frames */
	END_READ_FAILED,     /* a saved register could not be read */
	END_UNSUPPORTED,     /* a rule the walker cannot follow */
	END_NO_MAPPING,      /* pcs outside every known executable mapping (two in a row) */
	END_BAD_FRAME,       /* the stack pointer did not move up */
	END_FRAME_POINTERS,  /* no tables for this process (yet): bpf_get_stack's frame-pointer walk */
	END_MAX,
};

#endif
