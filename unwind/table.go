package unwind

import (
	"cmp"
	"fmt"
	"slices"
)

// Row is one entry of a compiled table: the rule for the addresses from PC
// up to the next row's PC. Its layout is struct unwind_row of
// bpf/unwind.h, which the BPF sampler reads; keep them in step.
type Row struct {
	PC uint32 // offset from the table's Base
	// CFAOffset is the CFA's offset from its base register in units of 8
	// bytes, or for CFAPLT the threshold of the low four bits of the PC.
	CFAOffset int16
	CFAKind   CFAKind
	// RBP says where the caller's frame pointer is: RBPSame, RBPAtRBP,
	// RBPUnknown, or, when negative, saved at CFA + 8×RBP.
	RBP int8
}

// CFAKind is how a row computes the CFA, the caller's stack pointer. The
// return address is always the word just below it (x86-64 psABI §3.6.2),
// except in a signal frame.
type CFAKind uint8

// Keep in step with enum cfa_kind of bpf/unwind.h.
const (
	// CFANone: no call-frame information covers the address; the sampler
	// walks the frame pointer (Go code, JIT code, hand-written assembly).
	CFANone CFAKind = 0
	CFARSP  CFAKind = 1 // CFA = rsp + 8×CFAOffset
	CFARBP  CFAKind = 2 // CFA = rbp + 8×CFAOffset
	// CFAPLT: a PLT stub: CFA = rsp + 8, plus 8 more when (rip & 15) >=
	// CFAOffset (the push of the lazy-binding entry).
	CFAPLT CFAKind = 3
	// CFADerefRBP: a realigned stack (GCC's DRAP): CFA = [rbp + 8×CFAOffset].
	CFADerefRBP CFAKind = 4
	// CFAEnd: the outermost frame (_start, a thread's start): the return
	// address is undefined and the stack complete.
	CFAEnd CFAKind = 5
	// CFASignal: a signal trampoline (__restore_rt); the interrupted
	// registers are in the ucontext at rsp.
	CFASignal CFAKind = 6
	// CFAUnsupported: a rule the sampler cannot follow; the stack ends there
	// and is marked truncated.
	CFAUnsupported CFAKind = 7
	// CFARegBase+r: CFA = register r + 8×CFAOffset, r a DWARF register
	// number below 16: only usable at the leaf, where every register is
	// known (a function's entry, before GCC's DRAP moves the CFA to rbp).
	CFARegBase CFAKind = 16
)

// Where the caller's frame pointer is, besides "saved at CFA + 8×RBP"
// (negative values). Keep in step with bpf/unwind.h.
const (
	RBPSame    int8 = 0 // unchanged: the function did not save it (or restored it)
	RBPAtRBP   int8 = 1 // saved at [rbp] (GCC's DRAP prologue)
	RBPUnknown int8 = 2 // not recoverable
)

// RowSize is the bytes of one Row in the kernel.
const RowSize = 8

// Table is the compiled unwind table of one object.
type Table struct {
	// Base is the object address (ELF virtual address) Row.PC counts from.
	Base uint64
	// Rows are sorted by PC; the last one is a CFANone row where the
	// covered code ends.
	Rows []Row
	// Unsupported counts rows with a rule the sampler cannot follow.
	Unsupported int
	// Segments are the object's loadable segments, to place it in a
	// process (Bias).
	Segments []Segment
}

// Segment is a loadable segment (PT_LOAD) of an object.
type Segment struct {
	Off, Vaddr, Filesz uint64
	Exec               bool
}

// Bias returns what a process's executable mapping [start, limit) of file
// offset off adds to the object's addresses: runtime address = object
// address + bias. ok is false when no executable segment lies in the
// mapping's part of the file.
//
// The segment is the executable one whose file range overlaps the
// mapping's, not the first whose range holds off: linkers that pack
// segments (LLD) put the end of a read-only segment and the start of the
// code in one file page, mapped twice at different addresses.
func (t *Table) Bias(start, limit, off uint64) (bias uint64, ok bool) {
	end := off + (limit - start)
	for _, s := range t.Segments {
		if s.Exec && s.Off < end && off < s.Off+s.Filesz {
			return start - (off - s.Off + s.Vaddr), true
		}
	}
	return 0, false
}

// Bytes is the table's size in the kernel.
func (t *Table) Bytes() int { return len(t.Rows) * RowSize }

// Lookup returns the row covering object address addr (what the BPF
// sampler does, for tests and tools), and false when addr is outside the
// table.
func (t *Table) Lookup(addr uint64) (Row, bool) {
	if len(t.Rows) == 0 || addr < t.Base || addr-t.Base >= 1<<32 {
		return Row{}, false
	}
	pc := uint32(addr - t.Base)
	i, found := slices.BinarySearchFunc(t.Rows, pc, func(r Row, pc uint32) int { return cmp.Compare(r.PC, pc) })
	if !found {
		i--
	}
	if i < 0 || i == len(t.Rows)-1 {
		return Row{}, false
	}
	return t.Rows[i], true
}

// String describes a row as readelf's frames-interp would, for tests and
// messages.
func (r Row) String() string {
	var cfa string
	switch {
	case r.CFAKind == CFARSP:
		cfa = fmt.Sprintf("rsp+%d", int(r.CFAOffset)*8)
	case r.CFAKind == CFARBP:
		cfa = fmt.Sprintf("rbp+%d", int(r.CFAOffset)*8)
	case r.CFAKind == CFAPLT:
		cfa = fmt.Sprintf("plt(%d)", r.CFAOffset)
	case r.CFAKind == CFADerefRBP:
		cfa = fmt.Sprintf("[rbp%+d]", int(r.CFAOffset)*8)
	case r.CFAKind == CFAEnd:
		cfa = "end"
	case r.CFAKind == CFASignal:
		cfa = "signal"
	case r.CFAKind == CFAUnsupported:
		cfa = "unsupported"
	case r.CFAKind == CFANone:
		cfa = "none"
	case r.CFAKind >= CFARegBase && r.CFAKind < CFARegBase+numRegs:
		cfa = fmt.Sprintf("r%d%+d", r.CFAKind-CFARegBase, int(r.CFAOffset)*8)
	default:
		cfa = fmt.Sprintf("kind%d", r.CFAKind)
	}
	switch {
	case r.RBP == RBPSame:
		return cfa + " rbp=same"
	case r.RBP == RBPAtRBP:
		return cfa + " rbp=[rbp]"
	case r.RBP == RBPUnknown:
		return cfa + " rbp=?"
	}
	return fmt.Sprintf("%s rbp=c%d", cfa, int(r.RBP)*8)
}

// rowOf compiles the rules of one address into a Row (PC not set).
func rowOf(st *state, signal bool) Row {
	if signal {
		return Row{CFAKind: CFASignal, RBP: RBPUnknown}
	}
	switch {
	case st.ra.kind == ruleUndefined:
		return Row{CFAKind: CFAEnd}
	case st.ra.kind != ruleOffset || st.ra.offset != -8:
		return Row{CFAKind: CFAUnsupported, RBP: RBPUnknown}
	}
	row := Row{RBP: rbpRule(&st.rbp)}
	row.CFAKind, row.CFAOffset = cfaOf(&st.cfa)
	if row.CFAKind == CFAUnsupported {
		row.RBP = RBPUnknown
	}
	return row
}

func cfaOf(c *cfaRule) (CFAKind, int16) {
	if c.expr != nil {
		return cfaExpressionOf(c.expr)
	}
	off, ok := eighths(c.offset)
	if !ok || c.reg >= numRegs {
		return CFAUnsupported, 0
	}
	switch c.reg {
	case regRSP:
		return CFARSP, off
	case regRBP:
		return CFARBP, off
	}
	return CFARegBase + CFAKind(c.reg), off
}

// eighths expresses a byte offset in units of 8, if it is a multiple of 8
// that fits.
func eighths(off int64) (int16, bool) {
	if off%8 != 0 || off/8 < -1<<15 || off/8 >= 1<<15 {
		return 0, false
	}
	return int16(off / 8), true
}

// DWARF expression operations that the recognised CFA expressions use
// (DWARF 5 §2.5.1).
const (
	opDeref = 0x06
	opAnd   = 0x1a
	opShl   = 0x24
	opPlus  = 0x22
	opGe    = 0x2a
	opLit0  = 0x30
	opBreg0 = 0x70
)

// cfaExpressionOf recognises the two CFA expressions compilers emit on
// x86-64: the PLT stubs' (binutils' elf_x86_64_eh_frame_plt) and the
// realigned stack's (GCC's DRAP: [rbp - 8]).
func cfaExpressionOf(e []byte) (CFAKind, int16) {
	// DW_OP_breg7 (rsp) 8; DW_OP_breg16 (rip) 0; DW_OP_lit15; DW_OP_and;
	// DW_OP_lit<n>; DW_OP_ge; DW_OP_lit3; DW_OP_shl; DW_OP_plus
	if len(e) == 11 && e[0] == opBreg0+regRSP && e[1] == 8 && e[2] == opBreg0+regRA && e[3] == 0 &&
		e[4] == opLit0+15 && e[5] == opAnd && e[6] >= opLit0 && e[6] <= opLit0+15 && e[7] == opGe &&
		e[8] == opLit0+3 && e[9] == opShl && e[10] == opPlus {
		return CFAPLT, int16(e[6] - opLit0)
	}
	// DW_OP_breg6 (rbp) N; DW_OP_deref
	if len(e) >= 3 && e[0] == opBreg0+regRBP && e[len(e)-1] == opDeref {
		r := reader{b: e[1 : len(e)-1]}
		n := r.sleb()
		if off, ok := eighths(n); ok && r.err == nil && r.off == len(r.b) {
			return CFADerefRBP, off
		}
	}
	return CFAUnsupported, 0
}

// rbpRule compiles the frame pointer's rule.
func rbpRule(r *regRule) int8 {
	switch r.kind {
	case ruleSame:
		return RBPSame
	case ruleOffset:
		if r.offset < 0 && r.offset%8 == 0 && r.offset/8 >= -128 {
			return int8(r.offset / 8)
		}
	case ruleExpression:
		// DW_OP_breg6 (rbp) 0: saved where rbp points (GCC's DRAP).
		if len(r.expr) == 2 && r.expr[0] == opBreg0+regRBP && r.expr[1] == 0 {
			return RBPAtRBP
		}
	}
	return RBPUnknown
}

// builder collects rows in address order, merging a row into the previous
// one when their rules are the same. Its rows become the Table's: sized
// from the section up front, they are not copied as they grow (a million
// rows, 9 MB, for libLLVM).
type builder struct {
	base uint64 // the lowest address; rows hold offsets from it
	rows []Row
	// end is where the code covered so far ends.
	end uint64
	err error
}

func (b *builder) add(addr uint64, r Row) {
	if addr < b.base || addr-b.base >= 1<<32 {
		if b.err == nil {
			b.err = malformed("code spans more than 4 GiB")
		}
		return
	}
	r.PC = uint32(addr - b.base)
	if n := len(b.rows); n > 0 {
		last := &b.rows[n-1]
		if r.PC < last.PC {
			if b.err == nil {
				b.err = malformed("rows out of address order")
			}
			return
		}
		if last.PC == r.PC {
			*last = r // a later rule for the same address wins
			return
		}
		if sameRule(last, &r) {
			return
		}
	}
	b.rows = append(b.rows, r)
}

func sameRule(a, b *Row) bool {
	return a.CFAKind == b.CFAKind && a.CFAOffset == b.CFAOffset && a.RBP == b.RBP
}

// finish turns the rows into a Table, closing it with a CFANone row.
func (b *builder) finish() (*Table, error) {
	if b.err != nil {
		return nil, b.err
	}
	if len(b.rows) == 0 {
		return &Table{}, nil
	}
	b.add(b.end, Row{CFAKind: CFANone})
	if b.err != nil {
		return nil, b.err
	}
	t := &Table{Base: b.base, Rows: b.rows}
	for i := range t.Rows {
		if t.Rows[i].CFAKind == CFAUnsupported {
			t.Unsupported++
		}
	}
	return t, nil
}
