package symbolizer

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// Object is the symbolization data of one parsed ELF file: its loadable segments (to turn
// runtime addresses into object addresses), its build ID and its function names. It holds
// no file handle and is safe for concurrent use.
type Object struct {
	buildID string
	class   elf.Class
	machine elf.Machine
	loads   []loadSegment
	goTab   *goTable    // nil unless the file has a usable .gopclntab
	syms    symbolTable // .symtab functions, else .dynsym ones (outside the Go range)

	// demangled memoizes demangled names by symbol index: demangling is far too slow to do
	// for every symbol up front, and profiles hit the same few functions over and over.
	mu        sync.Mutex
	demangled map[int]string
}

// loadSegment is a PT_LOAD program header.
type loadSegment struct {
	off, filesz, vaddr, memsz, align uint64
	exec                             bool
}

// ErrMalformedObject is wrapped by every error of OpenObject: the file is not an ELF object
// this package can use (corrupt, truncated, or not ELF at all).
var ErrMalformedObject = errors.New("malformed ELF object")

// maxLoadSegments bounds a header table that a sane linker never makes long.
const maxLoadSegments = 64

// OpenObject parses an ELF file. It reads only headers, notes, symbol tables and .gopclntab,
// copies what it keeps, and does not retain r. Corrupt input yields an error wrapping
// ErrMalformedObject, never a panic.
func OpenObject(r io.ReaderAt) (*Object, error) {
	f, err := openELF(r)
	if err != nil {
		return nil, err
	}
	return newObject(f, readBuildID(f))
}

// elfFile is a parsed ELF header with the file size, when known, to check section bounds
// before reading: debug/elf allocates what a section header claims before finding out
// that the file is shorter.
type elfFile struct {
	*elf.File
	size int64 // -1 if unknown
}

// sectionData reads a section after checking that it lies inside the file.
func (f *elfFile) sectionData(sec *elf.Section) ([]byte, error) {
	if sec.Type == elf.SHT_NOBITS {
		return nil, fmt.Errorf("%s has no file data", sec.Name)
	}
	if f.size >= 0 && !within(sec.Offset, sec.FileSize, uint64(f.size)) {
		return nil, fmt.Errorf("%s lies beyond the end of the file", sec.Name)
	}
	return sec.Data()
}

// openELF parses the ELF header and section table.
func openELF(r io.ReaderAt) (f *elfFile, err error) {
	defer recoverMalformed(&err)
	size := readerSize(r)
	if size >= 0 {
		if err := checkTableBounds(r, uint64(size)); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrMalformedObject, err)
		}
	}
	ef, err := elf.NewFile(r)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedObject, err)
	}
	return &elfFile{File: ef, size: size}, nil
}

// readerSize returns the size of r if it can tell, else -1.
func readerSize(r io.ReaderAt) int64 {
	switch r := r.(type) {
	case interface{ Size() int64 }: // bytes.Reader, strings.Reader, io.SectionReader
		return r.Size()
	case interface{ Stat() (os.FileInfo, error) }:
		if fi, err := r.Stat(); err == nil && fi.Mode().IsRegular() {
			return fi.Size()
		}
	}
	return -1
}

// checkTableBounds checks that the program and section header tables and the section name
// table lie inside the file. debug/elf would find out too, but only after allocating
// buffers as large as the (corrupt) header claims, up to megabytes per file.
func checkTableBounds(r io.ReaderAt, size uint64) error {
	var hdr [64]byte
	if _, err := r.ReadAt(hdr[:], 0); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	var bo binary.ByteOrder = binary.LittleEndian
	if hdr[elf.EI_DATA] == byte(elf.ELFDATA2MSB) {
		bo = binary.BigEndian
	}
	var t elfTables
	switch elf.Class(hdr[elf.EI_CLASS]) {
	case elf.ELFCLASS64:
		t = elfTables{bo.Uint64(hdr[0x20:]), uint64(bo.Uint16(hdr[0x36:])), uint64(bo.Uint16(hdr[0x38:])),
			bo.Uint64(hdr[0x28:]), uint64(bo.Uint16(hdr[0x3a:])), uint64(bo.Uint16(hdr[0x3c:])), uint64(bo.Uint16(hdr[0x3e:]))}
	case elf.ELFCLASS32:
		t = elfTables{uint64(bo.Uint32(hdr[0x1c:])), uint64(bo.Uint16(hdr[0x2a:])), uint64(bo.Uint16(hdr[0x2c:])),
			uint64(bo.Uint32(hdr[0x20:])), uint64(bo.Uint16(hdr[0x2e:])), uint64(bo.Uint16(hdr[0x30:])), uint64(bo.Uint16(hdr[0x32:]))}
	default:
		return nil // let debug/elf report it
	}
	if !within(t.phoff, t.phnum*t.phentsize, size) {
		return errors.New("program header table beyond end of file")
	}
	if !within(t.shoff, t.shnum*t.shentsize, size) {
		return errors.New("section header table beyond end of file")
	}
	return checkNameTable(r, bo, elf.Class(hdr[elf.EI_CLASS]), &t, size)
}

// elfTables are the header fields locating the program and section header tables.
type elfTables struct {
	phoff, phentsize, phnum           uint64
	shoff, shentsize, shnum, shstrndx uint64
}

// checkNameTable checks that the section name string table lies inside the file.
func checkNameTable(r io.ReaderAt, bo binary.ByteOrder, class elf.Class, t *elfTables, size uint64) error {
	if t.shnum == 0 || t.shstrndx >= t.shnum || t.shentsize < 40 {
		return nil // no sections, extended numbering or a bad header: debug/elf decides
	}
	var sh [64]byte
	n := min(t.shentsize, uint64(len(sh)))
	if _, err := r.ReadAt(sh[:n], int64(t.shoff+t.shstrndx*t.shentsize)); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	typ := elf.SectionType(bo.Uint32(sh[4:]))
	off, sz := uint64(bo.Uint32(sh[0x10:])), uint64(bo.Uint32(sh[0x14:]))
	if class == elf.ELFCLASS64 {
		off, sz = bo.Uint64(sh[0x18:]), bo.Uint64(sh[0x20:])
	}
	if typ != elf.SHT_NOBITS && !within(off, sz, size) {
		return errors.New("section name table beyond end of file")
	}
	return nil
}

// within reports whether [off, off+n) lies inside a file of the given size.
func within(off, n, size uint64) bool {
	return off <= size && n <= size-off
}

// recoverMalformed is the last line of defence against a parser panicking on a corrupt
// file; the checks before each read are the first.
func recoverMalformed(err *error) {
	if p := recover(); p != nil {
		*err = fmt.Errorf("%w: parser panic: %v", ErrMalformedObject, p)
	}
}

// newObject loads the symbolization data of an opened ELF file.
func newObject(f *elfFile, buildID string) (obj *Object, err error) {
	defer recoverMalformed(&err)
	loads, err := loadSegments(f)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedObject, err)
	}
	symtab, err := loadSymbolSection(f, elf.SHT_SYMTAB)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedObject, err)
	}
	goTab, err := newGoTable(f, symtab)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedObject, err)
	}
	syms, err := functionSymbols(f, symtab, goTab)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedObject, err)
	}
	return &Object{buildID: buildID, class: f.Class, machine: f.Machine, loads: loads, goTab: goTab, syms: syms}, nil
}

// functionSymbols reads .symtab, or .dynsym when .symtab has no functions (stripped files).
// In Go binaries the symbols of Go functions duplicate .gopclntab and are dropped.
func functionSymbols(f *elfFile, symtab *symbolSection, goTab *goTable) (symbolTable, error) {
	syms, err := symtab.funcTable()
	if err != nil {
		return symbolTable{}, err
	}
	if syms.len() == 0 {
		dynsym, err := loadSymbolSection(f, elf.SHT_DYNSYM)
		if err != nil {
			return symbolTable{}, err
		}
		if syms, err = dynsym.funcTable(); err != nil {
			return symbolTable{}, err
		}
	}
	if goTab != nil {
		syms = withoutGoFuncs(syms, goTab)
	}
	return syms, nil
}

// withoutGoFuncs drops the symbols of functions that .gopclntab describes, leaving those of
// C code in cgo binaries. Their names stay in the arena; the entries are what add up.
func withoutGoFuncs(t symbolTable, g *goTable) symbolTable {
	kept := t.syms[:0]
	for _, e := range t.syms {
		if !g.covers(e.addr) || g.tab.PCToFunc(e.addr) == nil {
			kept = append(kept, e)
		}
	}
	if len(kept) == 0 {
		return symbolTable{}
	}
	t.syms = kept
	return t
}

// loadSegments returns the PT_LOAD headers after checking that they describe a file a
// loader could map: sizes that do not wrap, file size within memory size, and virtual
// ranges that do not overlap.
func loadSegments(f *elfFile) ([]loadSegment, error) {
	var loads []loadSegment
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD {
			continue
		}
		if len(loads) == maxLoadSegments {
			return nil, fmt.Errorf("more than %d PT_LOAD segments", maxLoadSegments)
		}
		s := loadSegment{off: p.Off, filesz: p.Filesz, vaddr: p.Vaddr, memsz: p.Memsz, align: p.Align, exec: p.Flags&elf.PF_X != 0}
		if s.filesz > s.memsz || s.off+s.filesz < s.off || s.vaddr+s.memsz < s.vaddr {
			return nil, fmt.Errorf("bad PT_LOAD off=%#x filesz=%#x vaddr=%#x memsz=%#x", s.off, s.filesz, s.vaddr, s.memsz)
		}
		for _, o := range loads {
			if s.vaddr < o.vaddr+o.memsz && o.vaddr < s.vaddr+s.memsz {
				return nil, fmt.Errorf("overlapping PT_LOAD segments at %#x and %#x", o.vaddr, s.vaddr)
			}
		}
		loads = append(loads, s)
	}
	if len(loads) == 0 {
		return nil, errors.New("no PT_LOAD segments")
	}
	return loads, nil
}

// BuildID is the lowercase hex GNU build ID, else the hex of the Go build ID, else "".
func (o *Object) BuildID() string { return o.buildID }

// ObjAddress converts a runtime address inside mapping m into the object's own virtual
// address space: addr - Start + Offset is the file offset, which the PT_LOAD segment
// containing it maps to a virtual address. This is right for PIE executables and shared
// libraries (loaded at a random base) and non-PIE executables (loaded at their link address)
// alike. ok is false when no segment holds that file offset.
func (o *Object) ObjAddress(m *Mapping, addr uint64) (objAddr uint64, ok bool) {
	if addr < m.Start || addr >= m.Limit {
		return 0, false
	}
	fileOff := addr - m.Start + m.Offset
	if s := o.segmentAt(fileOff); s != nil {
		return fileOff - s.off + s.vaddr, true
	}
	return 0, false
}

// segmentAt finds the segment whose file bytes contain off. Failing that, it accepts an
// executable segment whose page-aligned start precedes off: the loader maps whole pages, so
// code can sit in the page part before p_offset.
func (o *Object) segmentAt(off uint64) *loadSegment {
	for i := range o.loads {
		if s := &o.loads[i]; off >= s.off && off-s.off < s.filesz {
			return s
		}
	}
	for i := range o.loads {
		s := &o.loads[i]
		if s.exec && off >= pageStart(s) && off < s.off+s.filesz {
			return s
		}
	}
	return nil
}

func pageStart(s *loadSegment) uint64 {
	align := s.align
	if align == 0 || align&(align-1) != 0 || align > 1<<20 {
		align = 4096
	}
	return s.off &^ (align - 1)
}

// Lookup names the function containing objAddr (an address in the object's own address
// space): from .gopclntab, with file and line, for Go code; else from the ELF symbol table,
// demangled. fn is "" when no symbol covers the address.
func (o *Object) Lookup(objAddr uint64) (fn, file string, line int) {
	if o.goTab != nil && o.goTab.covers(objAddr) {
		if fn, file, line = o.goTab.lookup(objAddr); fn != "" {
			return fn, file, line
		}
	}
	i := o.syms.lookup(objAddr)
	if i < 0 {
		return "", "", 0
	}
	return o.demangledName(i), "", 0
}

func (o *Object) demangledName(i int) string {
	raw := o.syms.name(i)
	if !mangled(raw) {
		return raw
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if name, ok := o.demangled[i]; ok {
		return name
	}
	name := Demangle(raw)
	if o.demangled == nil {
		o.demangled = make(map[int]string)
	}
	o.demangled[i] = name
	return name
}

// NumSymbols is the number of ELF function symbols kept (Go functions not included).
func (o *Object) NumSymbols() int { return o.syms.len() }

// HasGoTable reports whether names come from a Go .gopclntab.
func (o *Object) HasGoTable() bool { return o.goTab != nil }
