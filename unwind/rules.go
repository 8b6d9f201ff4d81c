package unwind

// The interpreter of call-frame instructions (DWARF 5 §6.4.2). It tracks
// only what the sampler needs: the CFA rule and the rules of the frame
// pointer and the return address. Other registers cannot be known past the
// leaf in BPF anyway.

// Call-frame instructions (DW_CFA_*).
const (
	cfaAdvanceLoc        = 0x40 // high two bits; low six: delta
	cfaOffset            = 0x80 // high two bits; low six: register
	cfaRestore           = 0xc0 // high two bits; low six: register
	cfaNop               = 0x00
	cfaSetLoc            = 0x01
	cfaAdvanceLoc1       = 0x02
	cfaAdvanceLoc2       = 0x03
	cfaAdvanceLoc4       = 0x04
	cfaOffsetExtended    = 0x05
	cfaRestoreExtended   = 0x06
	cfaUndefined         = 0x07
	cfaSameValue         = 0x08
	cfaRegister          = 0x09
	cfaRememberState     = 0x0a
	cfaRestoreState      = 0x0b
	cfaDefCFA            = 0x0c
	cfaDefCFARegister    = 0x0d
	cfaDefCFAOffset      = 0x0e
	cfaDefCFAExpression  = 0x0f
	cfaExpression        = 0x10
	cfaOffsetExtendedSF  = 0x11
	cfaDefCFASF          = 0x12
	cfaDefCFAOffsetSF    = 0x13
	cfaValOffset         = 0x14
	cfaValOffsetSF       = 0x15
	cfaValExpression     = 0x16
	cfaGNUWindowSave     = 0x2d
	cfaGNUArgsSize       = 0x2e
	cfaGNUNegOffsetExtSF = 0x2f
)

// ruleKind is how a register's value in the caller is found.
type ruleKind uint8

const (
	ruleSame          ruleKind = iota // unchanged (the default for callee-saved registers)
	ruleUndefined                     // not recoverable; for the return address: the outermost frame
	ruleOffset                        // saved at CFA + offset
	ruleValOffset                     // is CFA + offset
	ruleRegister                      // in another register
	ruleExpression                    // saved at the address an expression computes
	ruleValExpression                 // is what an expression computes
)

type regRule struct {
	kind   ruleKind
	offset int64
	reg    uint64
	expr   []byte
}

// cfaRule is the CFA: a register plus an offset, or an expression.
type cfaRule struct {
	reg    uint64
	offset int64
	expr   []byte // non-nil: the CFA is this expression's value
}

// state is the row being built: the rules in effect at one address.
type state struct {
	cfa cfaRule
	rbp regRule
	ra  regRule
}

// maxRememberDepth bounds DW_CFA_remember_state nesting; compilers nest one
// or two deep.
const maxRememberDepth = 16

// maxInstructions bounds the instructions interpreted per entry, so that a
// crafted table cannot make compilation slow.
const maxInstructions = 1 << 16

// interpreter runs the instructions of one FDE, reusing its buffers across
// FDEs, and adds the rows to out (nil while running a CIE's initial
// instructions, which may not advance the location).
type interpreter struct {
	stack  []state
	out    *builder
	signal bool // the FDE's CIE describes a signal frame
}

// initialState returns the state after c's initial instructions, computed
// once per CIE.
func (in *interpreter) initialState(c *cie) (*state, error) {
	if c.initialState != nil {
		return c.initialState, nil
	}
	st := &state{}
	out := in.out
	in.out = nil
	err := in.run(c, c.initial, st, st, 0, ^uint64(0))
	in.out = out
	if err != nil {
		return nil, err
	}
	c.initialState = st
	return st, nil
}

// rows adds every row of f to in.out: at f.begin, and wherever the rules
// change. Rows at or past f.end are not added.
func (in *interpreter) rows(f *fde) error {
	init, err := in.initialState(f.cie)
	if err != nil {
		return err
	}
	st := *init
	in.signal = f.cie.signalFrame
	return in.run(f.cie, f.instructions, &st, init, f.begin, f.end)
}

// emit adds the row of st at loc.
func (in *interpreter) emit(loc uint64, st *state) {
	in.out.add(loc, rowOf(st, in.signal))
}

// run interprets instructions from address loc, adding a row before each
// advance of loc.
func (in *interpreter) run(c *cie, code []byte, st, init *state, loc, end uint64) error {
	r := reader{b: code}
	in.stack = in.stack[:0]
	// advance emits the row at loc and moves loc; false ends the run.
	advance := func(delta uint64) bool {
		if in.out == nil {
			r.err = malformed("location advance in a CIE")
			return false
		}
		in.emit(loc, st)
		loc += delta * c.codeAlign
		return loc < end
	}
	for n := 0; r.off < len(r.b) && r.err == nil; n++ {
		if n == maxInstructions {
			return malformed("more than %d call-frame instructions", maxInstructions)
		}
		op := r.u8()
		switch op & 0xc0 {
		case cfaAdvanceLoc:
			if !advance(uint64(op & 0x3f)) {
				return r.err
			}
			continue
		case cfaOffset:
			in.setRule(st, uint64(op&0x3f), regRule{kind: ruleOffset, offset: int64(r.uleb()) * c.dataAlign})
			continue
		case cfaRestore:
			in.restore(st, init, uint64(op&0x3f))
			continue
		}
		switch op {
		case cfaNop, cfaGNUWindowSave:
		case cfaSetLoc:
			enc := c.fdeEncoding
			to := r.pointer(enc, 0)
			if to < loc {
				return malformed("DW_CFA_set_loc backwards")
			}
			if in.out == nil {
				return malformed("location set in a CIE")
			}
			in.emit(loc, st)
			if loc = to; loc >= end {
				return r.err
			}
		case cfaAdvanceLoc1:
			if !advance(uint64(r.u8())) {
				return r.err
			}
		case cfaAdvanceLoc2:
			if !advance(uint64(r.u16())) {
				return r.err
			}
		case cfaAdvanceLoc4:
			if !advance(uint64(r.u32())) {
				return r.err
			}
		case cfaOffsetExtended:
			reg := r.uleb()
			in.setRule(st, reg, regRule{kind: ruleOffset, offset: int64(r.uleb()) * c.dataAlign})
		case cfaOffsetExtendedSF:
			reg := r.uleb()
			in.setRule(st, reg, regRule{kind: ruleOffset, offset: r.sleb() * c.dataAlign})
		case cfaGNUNegOffsetExtSF:
			reg := r.uleb()
			in.setRule(st, reg, regRule{kind: ruleOffset, offset: -int64(r.uleb()) * c.dataAlign})
		case cfaValOffset:
			reg := r.uleb()
			in.setRule(st, reg, regRule{kind: ruleValOffset, offset: int64(r.uleb()) * c.dataAlign})
		case cfaValOffsetSF:
			reg := r.uleb()
			in.setRule(st, reg, regRule{kind: ruleValOffset, offset: r.sleb() * c.dataAlign})
		case cfaRestoreExtended:
			in.restore(st, init, r.uleb())
		case cfaUndefined:
			in.setRule(st, r.uleb(), regRule{kind: ruleUndefined})
		case cfaSameValue:
			in.setRule(st, r.uleb(), regRule{kind: ruleSame})
		case cfaRegister:
			reg := r.uleb()
			in.setRule(st, reg, regRule{kind: ruleRegister, reg: r.uleb()})
		case cfaRememberState:
			if len(in.stack) == maxRememberDepth {
				return malformed("DW_CFA_remember_state nested more than %d deep", maxRememberDepth)
			}
			in.stack = append(in.stack, *st)
		case cfaRestoreState:
			if len(in.stack) == 0 {
				return malformed("DW_CFA_restore_state without a remembered state")
			}
			// The CFA rule is restored too (DWARF 5 §6.4.2.4).
			*st = in.stack[len(in.stack)-1]
			in.stack = in.stack[:len(in.stack)-1]
		case cfaDefCFA:
			st.cfa = cfaRule{reg: r.uleb(), offset: int64(r.uleb())}
		case cfaDefCFASF:
			st.cfa = cfaRule{reg: r.uleb(), offset: r.sleb() * c.dataAlign}
		case cfaDefCFARegister:
			st.cfa.reg, st.cfa.expr = r.uleb(), nil
		case cfaDefCFAOffset:
			st.cfa.offset, st.cfa.expr = int64(r.uleb()), nil
		case cfaDefCFAOffsetSF:
			st.cfa.offset, st.cfa.expr = r.sleb()*c.dataAlign, nil
		case cfaDefCFAExpression:
			st.cfa = cfaRule{expr: r.block()}
		case cfaExpression:
			reg := r.uleb()
			in.setRule(st, reg, regRule{kind: ruleExpression, expr: r.block()})
		case cfaValExpression:
			reg := r.uleb()
			in.setRule(st, reg, regRule{kind: ruleValExpression, expr: r.block()})
		case cfaGNUArgsSize:
			r.uleb()
		default:
			return malformed("call-frame instruction %#x", op)
		}
	}
	if r.err != nil {
		return r.err
	}
	if in.out != nil && loc < end {
		in.emit(loc, st)
	}
	return nil
}

// block reads a length-prefixed expression.
func (r *reader) block() []byte {
	n := r.uleb()
	if r.err != nil || n > uint64(len(r.b)-r.off) {
		r.fail("expression")
		return nil
	}
	b := r.b[r.off : r.off+int(n) : r.off+int(n)]
	r.off += int(n)
	return b
}

func (in *interpreter) setRule(st *state, reg uint64, rule regRule) {
	switch reg {
	case regRBP:
		st.rbp = rule
	case regRA:
		st.ra = rule
	}
}

func (in *interpreter) restore(st, init *state, reg uint64) {
	switch reg {
	case regRBP:
		st.rbp = init.rbp
	case regRA:
		st.ra = init.ra
	}
}
