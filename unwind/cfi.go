package unwind

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The call-frame information formats: .eh_frame (the GNU/LSB form every
// x86-64 ELF object carries for exceptions and unwinders) and .debug_frame
// (DWARF's own, in debug builds). References: DWARF 5 §6.4; the Linux
// Standard Base Core Specification, "Exception Frames"; the x86-64 psABI
// §3.6 (register numbers).

// ErrMalformed is wrapped by every error about call-frame information that
// cannot be parsed.
var ErrMalformed = errors.New("malformed call-frame information")

// errUnknownAugmentation marks a CIE whose augmentation string has a
// character this parser does not know: its FDEs cannot be read, the
// section's other entries can.
var errUnknownAugmentation = errors.New("unknown augmentation")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// x86-64 DWARF register numbers (psABI, Figure 3.36).
const (
	regRSP = 7
	regRBP = 6
	regRA  = 16 // the return address column
	// numRegs is the number of general-purpose registers a CFA rule may name.
	numRegs = 16
)

// Pointer encodings of .eh_frame (DW_EH_PE_*, LSB Core "DWARF Exception
// Header Encoding").
const (
	peAbsptr  = 0x00
	peULEB128 = 0x01
	peUdata2  = 0x02
	peUdata4  = 0x03
	peUdata8  = 0x04
	peSLEB128 = 0x09
	peSdata2  = 0x0a
	peSdata4  = 0x0b
	peSdata8  = 0x0c
	pePCRel   = 0x10
	peDataRel = 0x30
	peOmit    = 0xff
)

// reader reads little-endian fields from a section, never past its end: a
// read beyond sets err and returns zeros, so parsing code checks once.
type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = malformed("%s at offset %#x runs past the end", what, r.off)
	}
	r.off = len(r.b)
}

func (r *reader) has(n int) bool {
	if n < 0 || len(r.b)-r.off < n {
		r.fail("field")
		return false
	}
	return true
}

func (r *reader) u8() uint8 {
	if !r.has(1) {
		return 0
	}
	v := r.b[r.off]
	r.off++
	return v
}

func (r *reader) u16() uint16 {
	if !r.has(2) {
		return 0
	}
	v := binary.LittleEndian.Uint16(r.b[r.off:])
	r.off += 2
	return v
}

func (r *reader) u32() uint32 {
	if !r.has(4) {
		return 0
	}
	v := binary.LittleEndian.Uint32(r.b[r.off:])
	r.off += 4
	return v
}

func (r *reader) u64() uint64 {
	if !r.has(8) {
		return 0
	}
	v := binary.LittleEndian.Uint64(r.b[r.off:])
	r.off += 8
	return v
}

func (r *reader) uleb() uint64 {
	var v uint64
	for shift := uint(0); ; shift += 7 {
		if r.off >= len(r.b) {
			r.fail("LEB128")
			return 0
		}
		c := r.b[r.off]
		r.off++
		if shift < 64 {
			v |= uint64(c&0x7f) << shift
		}
		if c < 0x80 {
			return v
		}
	}
}

func (r *reader) sleb() int64 {
	var v int64
	shift := uint(0)
	for {
		if r.off >= len(r.b) {
			r.fail("LEB128")
			return 0
		}
		c := r.b[r.off]
		r.off++
		if shift < 64 {
			v |= int64(c&0x7f) << shift
		}
		shift += 7
		if c < 0x80 {
			if shift < 64 && c&0x40 != 0 {
				v |= -1 << shift
			}
			return v
		}
	}
}

// cstring skips a NUL-terminated string and returns it without the NUL.
func (r *reader) cstring() []byte {
	for i := r.off; i < len(r.b); i++ {
		if r.b[i] == 0 {
			s := r.b[r.off:i]
			r.off = i + 1
			return s
		}
	}
	r.fail("string")
	return nil
}

// pointer reads a pointer in encoding enc; vaddr is the address the section
// is loaded at, for pc-relative encodings.
func (r *reader) pointer(enc uint8, vaddr uint64) uint64 {
	if enc == peOmit {
		return 0
	}
	at := vaddr + uint64(r.off)
	var v uint64
	switch enc & 0x0f {
	case peAbsptr, peUdata8, peSdata8:
		v = r.u64()
	case peULEB128:
		v = r.uleb()
	case peUdata2:
		v = uint64(r.u16())
	case peUdata4:
		v = uint64(r.u32())
	case peSLEB128:
		v = uint64(r.sleb())
	case peSdata2:
		v = uint64(int64(int16(r.u16())))
	case peSdata4:
		v = uint64(int64(int32(r.u32())))
	default:
		if r.err == nil {
			r.err = malformed("pointer encoding %#x", enc)
		}
		return 0
	}
	switch enc & 0x70 {
	case 0:
	case pePCRel:
		v += at
	case peDataRel:
		// Only meaningful in .eh_frame_hdr, relative to its start; never in FDEs
		// of x86-64 objects.
		if r.err == nil {
			r.err = malformed("data-relative pointer in a frame entry")
		}
	default:
		if r.err == nil {
			r.err = malformed("pointer application %#x", enc&0x70)
		}
	}
	return v
}

// cie is a Common Information Entry: what the FDEs referring to it share.
type cie struct {
	codeAlign    uint64
	dataAlign    int64
	raReg        uint64
	fdeEncoding  uint8
	hasAugData   bool // "z": FDEs carry an augmentation-data length
	signalFrame  bool // "S": the FDEs describe a signal trampoline
	initial      []byte
	initialState *state // after the initial instructions; computed on first use
}

// fde is a Frame Description Entry: the rules of one code range.
type fde struct {
	cie          *cie
	begin, end   uint64
	instructions []byte
}

// sectionKind tells the two formats apart where they differ.
type sectionKind int

const (
	ehFrame sectionKind = iota
	debugFrame
)

// frameSection parses one .eh_frame or .debug_frame section. vaddr is the
// section's load address (for pc-relative pointers in .eh_frame).
type frameSection struct {
	data  []byte
	vaddr uint64
	kind  sectionKind
	cies  map[int]*cie // by offset in the section
}

// entries calls fn for every FDE, in section order, until fn returns
// false. An entry whose length cannot be trusted ends the walk with an
// error: neither can the position of the next one. Entries that are only
// unusable are skipped: an FDE of a discarded function (address 0 or a
// tombstone, a range that wraps) or of a CIE with an augmentation this
// parser does not know.
func (s *frameSection) entries(fn func(*fde) bool) error {
	s.cies = map[int]*cie{}
	r := reader{b: s.data}
	var f fde // reused: fn must copy what it keeps
	for r.off < len(r.b) {
		start := r.off
		length := uint64(r.u32())
		if r.err != nil {
			return r.err
		}
		if length == 0 {
			if s.kind == ehFrame {
				return nil // the terminator
			}
			continue
		}
		is64 := length == 0xffffffff
		if is64 {
			length = r.u64()
		}
		bodyStart := r.off
		if r.err != nil || length > uint64(len(r.b)-bodyStart) {
			return malformed("entry at %#x: length %d past the end of the section", start, length)
		}
		body := reader{b: r.b[:bodyStart+int(length)], off: bodyStart}
		r.off = bodyStart + int(length)

		idPos := body.off
		var id uint64
		if is64 {
			id = body.u64()
		} else {
			id = uint64(body.u32())
		}
		if s.isCIE(id, is64) {
			c, err := s.parseCIE(&body)
			if errors.Is(err, errUnknownAugmentation) {
				s.cies[start] = nil // its FDEs are skipped
				continue
			}
			if err != nil {
				return fmt.Errorf("CIE at %#x: %w", start, err)
			}
			s.cies[start] = c
			continue
		}
		cieOff := s.cieOffset(id, idPos)
		c, ok := s.cies[cieOff]
		if !ok {
			c2, err := s.parseCIEAt(cieOff)
			if err != nil && !errors.Is(err, errUnknownAugmentation) {
				return fmt.Errorf("FDE at %#x: CIE at %#x: %w", start, cieOff, err)
			}
			c = c2
		}
		if c == nil {
			continue
		}
		if err := s.parseFDE(&body, c, &f); err != nil {
			return fmt.Errorf("FDE at %#x: %w", start, err)
		}
		if f.begin == 0 || f.begin >= 1<<63 || f.end <= f.begin {
			continue // a discarded function's entry
		}
		if !fn(&f) {
			return nil
		}
	}
	return nil
}

func (s *frameSection) isCIE(id uint64, is64 bool) bool {
	if s.kind == ehFrame {
		return id == 0
	}
	if is64 {
		return id == 0xffffffffffffffff
	}
	return id == 0xffffffff
}

// cieOffset turns an FDE's CIE pointer into a section offset: .eh_frame
// counts back from the pointer itself, .debug_frame from the section start.
func (s *frameSection) cieOffset(id uint64, idPos int) int {
	if s.kind == ehFrame {
		return idPos - int(id)
	}
	return int(id)
}

// parseCIEAt parses the CIE at off, for an FDE that refers to one not seen
// yet (allowed, if unusual).
func (s *frameSection) parseCIEAt(off int) (*cie, error) {
	if off < 0 || off >= len(s.data) {
		return nil, malformed("CIE pointer out of the section")
	}
	r := reader{b: s.data, off: off}
	length := uint64(r.u32())
	is64 := length == 0xffffffff
	if is64 {
		length = r.u64()
	}
	if r.err != nil || length == 0 || length > uint64(len(r.b)-r.off) {
		return nil, malformed("CIE length")
	}
	body := reader{b: r.b[:r.off+int(length)], off: r.off}
	var id uint64
	if is64 {
		id = body.u64()
	} else {
		id = uint64(body.u32())
	}
	if !s.isCIE(id, is64) {
		return nil, malformed("FDE refers to another FDE")
	}
	c, err := s.parseCIE(&body)
	if errors.Is(err, errUnknownAugmentation) {
		s.cies[off] = nil
	}
	if err != nil {
		return nil, err
	}
	s.cies[off] = c
	return c, nil
}

func (s *frameSection) parseCIE(r *reader) (*cie, error) {
	c := &cie{fdeEncoding: peAbsptr}
	version := r.u8()
	if version != 1 && version != 3 && version != 4 {
		return nil, malformed("CIE version %d", version)
	}
	aug := r.cstring()
	if version == 4 {
		if addrSize := r.u8(); addrSize != 8 {
			return nil, malformed("address size %d", addrSize)
		}
		r.u8() // segment selector size
	}
	c.codeAlign = r.uleb()
	c.dataAlign = r.sleb()
	if version == 1 {
		c.raReg = uint64(r.u8())
	} else {
		c.raReg = r.uleb()
	}
	if len(aug) > 0 && aug[0] == 'z' {
		c.hasAugData = true
		n := r.uleb()
		if r.err != nil || n > uint64(len(r.b)-r.off) {
			return nil, malformed("augmentation data length")
		}
		ar := reader{b: r.b[:r.off+int(n)], off: r.off}
		r.off += int(n)
		for _, a := range aug[1:] {
			switch a {
			case 'R':
				c.fdeEncoding = ar.u8()
			case 'P':
				enc := ar.u8()
				ar.pointer(enc&^0x80, s.vaddr) // the personality routine; not needed
			case 'L':
				ar.u8() // LSDA encoding; the pointer is in each FDE's augmentation data
			case 'S':
				c.signalFrame = true
			case 'B', 'G':
				// AArch64 pointer authentication key, memory tagging: no data.
			default:
				return nil, fmt.Errorf("%w %q", errUnknownAugmentation, aug)
			}
		}
		if ar.err != nil {
			return nil, ar.err
		}
	} else if len(aug) > 0 {
		return nil, malformed("augmentation %q", aug) // pre-"z" forms, e.g. GCC 2's "eh"
	}
	if r.err != nil {
		return nil, r.err
	}
	if c.codeAlign == 0 || c.raReg != regRA {
		return nil, malformed("code alignment %d, return address column %d", c.codeAlign, c.raReg)
	}
	c.initial = r.b[r.off:]
	return c, nil
}

func (s *frameSection) parseFDE(r *reader, c *cie, f *fde) error {
	*f = fde{cie: c}
	enc := c.fdeEncoding
	if s.kind == debugFrame {
		enc = peUdata8
	}
	f.begin = r.pointer(enc, s.vaddr)
	length := r.pointer(enc&0x0f, 0) // the range has the format but no application
	f.end = f.begin + length
	if c.hasAugData {
		n := r.uleb()
		if r.err != nil || n > uint64(len(r.b)-r.off) {
			return malformed("augmentation data length")
		}
		r.off += int(n)
	}
	if r.err != nil {
		return r.err
	}
	f.instructions = r.b[r.off:]
	return nil
}
