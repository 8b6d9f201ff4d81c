package unwind

import (
	"encoding/binary"
	"errors"
	"testing"
)

// ehBuilder writes an .eh_frame section by hand, for the forms compilers
// rarely emit in test binaries (realigned stacks, signal trampolines) and
// for malformed input.
type ehBuilder struct {
	b []byte
}

func (e *ehBuilder) entry(body []byte) int {
	off := len(e.b)
	e.b = binary.LittleEndian.AppendUint32(e.b, uint32(len(body)))
	e.b = append(e.b, body...)
	return off
}

// cie appends a CIE with augmentation aug ("zR" or "zRS"), code alignment
// 1, data alignment -8, return address column 16, pc-relative sdata4 FDE
// pointers, and the standard x86-64 initial rules: CFA = rsp+8, return
// address at CFA-8.
func (e *ehBuilder) cie(aug string) int {
	body := []byte{0, 0, 0, 0, 1}
	body = append(body, aug...)
	body = append(body, 0, 1, 0x78 /* sleb -8 */, 16, 1 /* aug length */, peSdata4|pePCRel)
	body = append(body, cfaDefCFA, regRSP, 8, cfaOffset|regRA, 1)
	for len(body)%8 != 4 {
		body = append(body, cfaNop)
	}
	return e.entry(body)
}

// fde appends an FDE for [begin, begin+n) with instructions code, the
// section loaded at vaddr.
func (e *ehBuilder) fde(cieOff int, vaddr, begin uint64, n uint32, code ...byte) {
	pos := len(e.b) + 4 // where the CIE pointer goes
	body := binary.LittleEndian.AppendUint32(nil, uint32(pos-cieOff))
	pcField := vaddr + uint64(pos+4)
	body = binary.LittleEndian.AppendUint32(body, uint32(int32(int64(begin)-int64(pcField))))
	body = binary.LittleEndian.AppendUint32(body, n)
	body = append(body, 0) // augmentation data length
	body = append(body, code...)
	e.entry(body)
}

func (e *ehBuilder) compile(t *testing.T, vaddr uint64) *Table {
	t.Helper()
	tab, err := compileSections([]frameSection{{data: append(e.b, 0, 0, 0, 0), vaddr: vaddr, kind: ehFrame}})
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

func wantRows(t *testing.T, tab *Table, want map[uint64]string) {
	t.Helper()
	for addr, w := range want {
		r, ok := tab.Lookup(addr)
		got := "outside"
		if ok {
			got = r.String()
		}
		if got != w {
			t.Errorf("%#x: %s, want %s", addr, got, w)
		}
	}
}

func TestSyntheticRules(t *testing.T) {
	const vaddr = 0x2000
	var e ehBuilder
	c := e.cie("zR")
	// A PLT stub, as binutils describes .plt.
	e.fde(c, vaddr, 0x1000, 0x20, cfaDefCFAOffset, 16, cfaAdvanceLoc|6,
		cfaDefCFAExpression, 11, opBreg0+regRSP, 8, opBreg0+regRA, 0, opLit0+15, opAnd, opLit0+11, opGe, opLit0+3, opShl, opPlus)
	// GCC's realigned-stack prologue: CFA in r10, then [rbp-8]; rbp saved at [rbp].
	e.fde(c, vaddr, 0x1100, 0x40,
		cfaAdvanceLoc|4, cfaDefCFA, 10, 0,
		cfaAdvanceLoc|8, cfaExpression, regRBP, 2, opBreg0+regRBP, 0,
		cfaAdvanceLoc|4, cfaDefCFAExpression, 3, opBreg0+regRBP, 0x78 /* -8 */, opDeref)
	// push rbp; mov rbp,rsp; ... with remember/restore around an epilogue.
	e.fde(c, vaddr, 0x1200, 0x30,
		cfaAdvanceLoc|1, cfaDefCFAOffset, 16, cfaOffset|regRBP, 2,
		cfaAdvanceLoc|3, cfaDefCFARegister, regRBP,
		cfaAdvanceLoc|16, cfaRememberState, cfaDefCFA, regRSP, 8, cfaRestore|regRBP,
		cfaAdvanceLoc|1, cfaRestoreState)
	// The outermost frame: return address undefined.
	e.fde(c, vaddr, 0x1300, 0x10, cfaUndefined, regRA)
	// A large frame: sub $0x12340, %rsp.
	e.fde(c, vaddr, 0x1400, 0x10, cfaAdvanceLoc|7, cfaDefCFAOffset, 0xc0, 0xc6, 0x04)
	// An odd CFA offset cannot be expressed in eighths.
	e.fde(c, vaddr, 0x1500, 0x10, cfaAdvanceLoc|1, cfaDefCFAOffset, 13)
	s := e.cie("zRS")
	e.fde(s, vaddr, 0x1600, 0x10)
	tab := e.compile(t, vaddr)
	wantRows(t, tab, map[uint64]string{
		0x1000: "rsp+16 rbp=same", 0x1005: "rsp+16 rbp=same", 0x1006: "plt(11) rbp=same", 0x101f: "plt(11) rbp=same",
		0x1020: "none rbp=same", // the gap up to the next entry
		0x1100: "rsp+8 rbp=same", 0x1104: "r10+0 rbp=same", 0x110c: "r10+0 rbp=[rbp]", 0x1110: "[rbp-8] rbp=[rbp]",
		0x1200: "rsp+8 rbp=same", 0x1201: "rsp+16 rbp=c-16", 0x1204: "rbp+16 rbp=c-16",
		0x1214: "rsp+8 rbp=same", 0x1215: "rbp+16 rbp=c-16",
		0x1300: "end rbp=same",
		0x1407: "rsp+74560 rbp=same",
		0x1501: "unsupported rbp=?",
		0x1600: "signal rbp=?",
		0x1610: "outside",
	})
}

// Malformed call-frame information is an error for that object, never a
// panic or a hang.
func TestMalformedFrames(t *testing.T) {
	var good ehBuilder
	c := good.cie("zR")
	good.fde(c, 0, 0x1000, 0x10, cfaAdvanceLoc|1, cfaDefCFAOffset, 16)
	cases := map[string][]byte{
		"length past the end":      {0xff, 0xff, 0xff, 0x0f, 0, 0, 0, 0},
		"truncated CIE":            good.b[:10],
		"truncated FDE":            good.b[:len(good.b)-3],
		"FDE without its CIE":      append([]byte{12, 0, 0, 0, 0x40, 0, 0, 0}, make([]byte, 8)...),
		"restore without remember": mustFDE(c, good.b[:c+len(good.b[c:])], cfaRestoreState),
		"unknown instruction":      mustFDE(c, good.b, 0x3f),
		"advance in a CIE": func() []byte {
			var e ehBuilder
			body := []byte{0, 0, 0, 0, 1, 'z', 'R', 0, 1, 0x78, 16, 1, peSdata4 | pePCRel, cfaAdvanceLoc | 1}
			e.entry(body)
			e.fde(0, 0, 0x1000, 0x10)
			return e.b
		}(),
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := compileSections([]frameSection{{data: data, kind: ehFrame}})
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v, want ErrMalformed", err)
			}
		})
	}
}

// Entries that are only unusable are skipped, not fatal: the FDEs of a
// CIE with an unknown augmentation, a discarded function's FDE (address 0,
// a tombstone, a range that wraps); a .debug_frame that does not parse
// leaves .eh_frame's rows.
func TestUnusableEntriesAreSkipped(t *testing.T) {
	var e ehBuilder
	bad := e.entry([]byte{0, 0, 0, 0, 1, 'z', 'Q', 0, 1, 0x78, 16, 0})
	e.fde(bad, 0, 0x1000, 0x10)
	good := e.cie("zR")
	e.fde(good, 0, 0x2000, 0x10, cfaAdvanceLoc|1, cfaDefCFAOffset, 16)
	e.fde(good, 0, 0, 0x10)                   // address 0
	e.fde(good, 0, 0xffffffffffffff00, 0x200) // wraps
	eh := append(e.b, 0, 0, 0, 0)
	tab, err := compileSections([]frameSection{{data: eh, kind: ehFrame}, {data: []byte{0xff, 0xff}, kind: debugFrame}})
	if err != nil {
		t.Fatal(err)
	}
	wantRows(t, tab, map[uint64]string{0x2000: "rsp+8 rbp=same", 0x2001: "rsp+16 rbp=same", 0x1000: "outside"})
}

// mustFDE appends to a copy of base an FDE of the CIE at cieOff with code.
func mustFDE(cieOff int, base []byte, code ...byte) []byte {
	e := ehBuilder{b: append([]byte(nil), base...)}
	e.fde(cieOff, 0, 0x2000, 0x10, code...)
	return e.b
}

// FuzzCompileSection feeds arbitrary bytes to the parser and interpreter
// as .eh_frame and as .debug_frame: an error is fine, a panic or a table
// that is not sorted is not.
func FuzzCompileSection(f *testing.F) {
	var e ehBuilder
	c := e.cie("zR")
	e.fde(c, 0x2000, 0x1000, 0x20, cfaAdvanceLoc|1, cfaDefCFAOffset, 16, cfaOffset|regRBP, 2, cfaAdvanceLoc|3, cfaDefCFARegister, regRBP,
		cfaRememberState, cfaAdvanceLoc|2, cfaDefCFA, regRSP, 8, cfaRestoreState)
	s := e.cie("zRS")
	e.fde(s, 0x2000, 0x1100, 0x10, cfaDefCFAExpression, 3, opBreg0+regRBP, 0x78, opDeref)
	f.Add(e.b, uint64(0x2000), false)
	f.Add(e.b, uint64(0), true)
	f.Fuzz(func(t *testing.T, data []byte, vaddr uint64, debug bool) {
		kind := ehFrame
		if debug {
			kind = debugFrame
		}
		tab, err := compileSections([]frameSection{{data: data, vaddr: vaddr, kind: kind}})
		if err != nil {
			return
		}
		for i := 1; i < len(tab.Rows); i++ {
			if tab.Rows[i].PC <= tab.Rows[i-1].PC {
				t.Fatalf("rows not sorted at %d: %v", i, tab.Rows[i-1:i+1])
			}
		}
		if len(tab.Rows) > MaxRows+1 {
			t.Fatalf("%d rows", len(tab.Rows))
		}
	})
}
