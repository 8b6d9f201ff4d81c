package unwind

import (
	"cmp"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"slices"
)

// MaxRows bounds a table: 4 Mi rows (32 MiB in the kernel) is eight times
// what libLLVM, the largest object on common hosts, needs.
const MaxRows = 4 << 20

// maxSectionBytes bounds a call-frame section read into memory: MaxRows
// need some 20 to 40 MiB of call-frame information.
const maxSectionBytes = 64 << 20

// maxCompression bounds how much a compressed .debug_frame may inflate:
// call-frame information compresses four to eight times, a crafted file
// far more.
const maxCompression = 64

// ErrNoFrameInfo is returned for an object without call-frame information
// (its code is walked by frame pointers).
var ErrNoFrameInfo = errors.New("no call-frame information")

// errOnDemand is returned instead of a table for an object whose
// call-frame information is as large as the caller asked to leave for on
// demand.
var errOnDemand = errors.New("large call-frame information: compiled on demand")

// Compile reads the call-frame information of the ELF object r and
// compiles its unwind table.
func Compile(r io.ReaderAt) (*Table, error) { return compileBelow(r, 0) }

// compileBelow is Compile, except that an object with limit bytes of
// call-frame information or more (limit > 0) is not compiled: it returns
// errOnDemand, having read only the ELF headers.
func compileBelow(r io.ReaderAt, limit int) (*Table, error) {
	f, err := elf.NewFile(r)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if f.Machine != elf.EM_X86_64 || f.Class != elf.ELFCLASS64 {
		return nil, fmt.Errorf("%w: %s %s objects are not supported", ErrNoFrameInfo, f.Class, f.Machine)
	}
	if limit > 0 && frameInfoBytes(f) >= uint64(limit) {
		return nil, errOnDemand
	}
	sections, err := frameSections(f, r)
	if err != nil {
		return nil, err
	}
	if len(sections) == 0 {
		return nil, ErrNoFrameInfo
	}
	t, err := compileSections(sections)
	if err != nil {
		return nil, err
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			t.Segments = append(t.Segments, Segment{Off: p.Off, Vaddr: p.Vaddr, Filesz: p.Filesz, Exec: p.Flags&elf.PF_X != 0})
		}
	}
	return t, nil
}

// isGo reports whether f was built by the Go toolchain.
func isGo(f *elf.File) bool {
	return f.Section(".go.buildinfo") != nil || f.Section(".gopclntab") != nil || f.Section(".note.go.buildid") != nil
}

// frameSections returns the object's .eh_frame, and its .debug_frame
// unless it is a Go object (whose .debug_frame describes the runtime's
// stack switches wrongly; Go code is walked by frame pointers).
func frameSections(f *elf.File, r io.ReaderAt) ([]frameSection, error) {
	var out []frameSection
	eh, debug := frameSectionHeaders(f)
	if eh != nil {
		data, err := sectionData(eh)
		if err != nil {
			return nil, err
		}
		out = append(out, frameSection{data: data, vaddr: eh.Addr, kind: ehFrame})
	} else if len(f.Sections) == 0 {
		// Section headers stripped: .eh_frame_hdr still points to .eh_frame.
		sec, err := ehFrameFromSegments(f, r)
		if err != nil {
			return nil, err
		}
		if sec != nil {
			out = append(out, *sec)
		}
	}
	if debug != nil {
		data, err := sectionData(debug)
		if err != nil {
			return nil, err
		}
		out = append(out, frameSection{data: data, kind: debugFrame})
	}
	return out, nil
}

// frameSectionHeaders returns the headers of the sections frameSections
// reads, nil for those f lacks: .eh_frame, and .debug_frame unless f is a
// Go object.
func frameSectionHeaders(f *elf.File) (eh, debug *elf.Section) {
	if s := f.Section(".eh_frame"); s != nil && s.Type != elf.SHT_NOBITS {
		eh = s
	}
	if s := f.Section(".debug_frame"); s != nil && s.Type != elf.SHT_NOBITS && !isGo(f) {
		debug = s
	}
	return eh, debug
}

// frameInfoBytes is the size of the sections frameSections reads, by the
// section headers (0 when they are stripped: such objects are rare, and
// compiled at once).
func frameInfoBytes(f *elf.File) uint64 {
	eh, debug := frameSectionHeaders(f)
	n := uint64(0)
	for _, s := range []*elf.Section{eh, debug} {
		if s != nil {
			n += s.Size
		}
	}
	return n
}

func sectionData(s *elf.Section) ([]byte, error) {
	if s.Size > maxSectionBytes {
		return nil, malformed("%s of %d bytes", s.Name, s.Size)
	}
	if s.Flags&elf.SHF_COMPRESSED != 0 && s.Size > maxCompression*max(s.FileSize, 1) {
		return nil, malformed("%s inflates from %d to %d bytes", s.Name, s.FileSize, s.Size)
	}
	data, err := s.Data()
	if err != nil {
		return nil, fmt.Errorf("%w: reading %s: %v", ErrMalformed, s.Name, err)
	}
	return data, nil
}

// ehFrameFromSegments finds .eh_frame through PT_GNU_EH_FRAME (the
// .eh_frame_hdr, whose second field points to .eh_frame) and reads it up
// to the end of the segment holding it; the walk stops at its terminator.
func ehFrameFromSegments(f *elf.File, r io.ReaderAt) (*frameSection, error) {
	var hdr *elf.Prog
	for _, p := range f.Progs {
		if p.Type == elf.PT_GNU_EH_FRAME {
			hdr = p
		}
	}
	if hdr == nil || hdr.Filesz < 8 {
		return nil, nil
	}
	var head [16]byte
	if _, err := r.ReadAt(head[:], int64(hdr.Off)); err != nil {
		return nil, fmt.Errorf("%w: reading .eh_frame_hdr: %v", ErrMalformed, err)
	}
	hr := reader{b: head[:], off: 4}
	if head[0] != 1 {
		return nil, malformed(".eh_frame_hdr version %d", head[0])
	}
	ehAddr := hr.pointer(head[1], hdr.Vaddr)
	if hr.err != nil {
		return nil, hr.err
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD || ehAddr < p.Vaddr || ehAddr >= p.Vaddr+p.Filesz {
			continue
		}
		n := p.Vaddr + p.Filesz - ehAddr
		off := p.Off + ehAddr - p.Vaddr
		if sized, ok := r.(interface{ Size() int64 }); ok && off < uint64(sized.Size()) {
			n = min(n, uint64(sized.Size())-off) // no more than the file holds
		}
		if n > maxSectionBytes {
			return nil, malformed(".eh_frame of %d bytes", n)
		}
		data := make([]byte, n)
		got, err := r.ReadAt(data, int64(off))
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: reading .eh_frame: %v", ErrMalformed, err)
		}
		return &frameSection{data: data[:got], vaddr: ehAddr, kind: ehFrame}, nil
	}
	return nil, malformed(".eh_frame at %#x outside every segment", ehAddr)
}

// fdeRef is an FDE found in a section, to be interpreted in address order:
// small, since libLLVM has 118,000 of them.
type fdeRef struct {
	begin   uint64
	end     uint64
	cie     *cie
	instr   uint32 // offset of the instructions in the section
	n       uint32 // their length
	section int
}

// compileSections interprets the FDEs of every section in address order.
// Where ranges overlap, the first one (.eh_frame's, by section order)
// wins. A .debug_frame that does not parse is left out: .eh_frame, which
// unwinders at run time depend on, is the one whose errors are fatal.
func compileSections(sections []frameSection) (*Table, error) {
	n, size := 0, 0
	for i := range sections {
		n += len(sections[i].data) / 48 // FDEs of common sizes; only a hint
		size += len(sections[i].data)
	}
	refs := make([]fdeRef, 0, min(n, MaxRows))
	for i := range sections {
		s := &sections[i]
		before := len(refs)
		err := s.entries(func(f *fde) bool {
			if len(refs) == MaxRows {
				return false
			}
			off := cap(s.data) - cap(f.instructions)
			refs = append(refs, fdeRef{begin: f.begin, end: f.end, cie: f.cie, instr: uint32(off), n: uint32(len(f.instructions)), section: i})
			return true
		})
		if err != nil && s.kind == debugFrame {
			refs = refs[:before]
			continue
		}
		if err != nil {
			return nil, err
		}
		if len(refs) == MaxRows {
			return nil, malformed("more than %d entries", MaxRows)
		}
	}
	if len(refs) == 0 {
		return nil, ErrNoFrameInfo
	}
	if !slices.IsSortedFunc(refs, compareRefs) {
		slices.SortStableFunc(refs, compareRefs)
	}
	// About one row for five bytes of call-frame information in the objects
	// of Debian 12 (libc, python3, libLLVM); a quarter more, so that a large
	// table is rarely copied as it grows.
	b := builder{base: refs[0].begin, rows: make([]Row, 0, min(size/4+16, MaxRows+1))}
	in := interpreter{out: &b}
	for i := range refs {
		ref := &refs[i]
		if ref.begin < b.end {
			continue // overlaps the previous entry
		}
		if len(b.rows) > 0 && ref.begin > b.end {
			b.add(b.end, Row{CFAKind: CFANone}) // a gap: frame pointers there
		}
		f := fde{cie: ref.cie, begin: ref.begin, end: ref.end, instructions: sections[ref.section].data[ref.instr : ref.instr+ref.n]}
		if err := in.rows(&f); err != nil {
			return nil, fmt.Errorf("FDE for %#x-%#x: %w", f.begin, f.end, err)
		}
		b.end = f.end
		if len(b.rows) > MaxRows {
			return nil, malformed("more than %d rows", MaxRows)
		}
	}
	return b.finish()
}

func compareRefs(a, b fdeRef) int {
	return cmp.Or(cmp.Compare(a.begin, b.begin), cmp.Compare(a.section, b.section))
}
