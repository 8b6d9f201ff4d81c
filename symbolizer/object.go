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
// runtime addresses into object addresses), its build ID and its function names. It is
// safe for concurrent use.
//
// Its tables are not loaded: lookups read them from the file (see objfile.go), which for
// an Object of the Symbolizer's cache is the open file, closed once the object is evicted
// and no lookup uses it any more.
type Object struct {
	id      uint64 // unique in the process, from 1; the frame cache's key
	buildID string
	class   elf.Class
	machine elf.Machine
	loads   []loadSegment
	goTab   *goTable // nil unless the file has a usable .gopclntab

	// syms are the .symtab functions, else the .dynsym ones (outside the Go range),
	// indexed on first use (from symSrc, then dropped): Go binaries rarely need them.
	symsOnce sync.Once
	symSrc   *symbolSources
	syms     symbolTable

	// names memoizes names by symbol index: demangling is far too slow to do for every
	// symbol up front, names are read from the file, and profiles hit the same few
	// functions over and over.
	mu    sync.Mutex
	names map[int]string
}

// symbolSources are the symbol sections the ELF table is built from.
type symbolSources struct {
	symtab, dynsym *symbolSection
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

// OpenObject parses an ELF file. It copies r into memory (it is meant for small objects
// such as the vDSO; the Symbolizer reads the files it caches in place) and does not retain
// r. Corrupt input yields an error wrapping ErrMalformedObject, never a panic.
func OpenObject(r io.ReaderAt) (*Object, error) {
	data, err := readAll(r)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedObject, err)
	}
	src := memFile(data)
	f, err := openELF(src)
	if err != nil {
		return nil, err
	}
	return newObject(f, readBuildID(f))
}

// maxObjectCopy bounds what OpenObject copies of a reader of unknown size.
const maxObjectCopy = 1 << 30

// readAll copies the contents of r.
func readAll(r io.ReaderAt) ([]byte, error) {
	if size := readerSize(r); size >= 0 {
		data := make([]byte, size)
		if _, err := r.ReadAt(data, 0); err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		return data, nil
	}
	return io.ReadAll(io.NewSectionReader(r, 0, maxObjectCopy))
}

// parseObject parses the object file src, whose build ID is known.
func parseObject(src *objFile, buildID string) (*Object, error) {
	f, err := openELF(src)
	if err != nil {
		return nil, err
	}
	return newObject(f, buildID)
}

// elfFile is a parsed ELF header with the file size, when known, to check section bounds
// before reading: debug/elf allocates what a section header claims before finding out
// that the file is shorter. src is set when the file is an objFile, which tables are
// read from.
type elfFile struct {
	*elf.File
	size int64 // -1 if unknown
	src  *objFile
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
	f = &elfFile{File: ef, size: size}
	if src, ok := r.(*objFile); ok {
		f.src = src
	}
	return f, nil
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

// newObject checks the headers of an ELF file opened from an objFile and locates the
// tables that lookups read.
func newObject(f *elfFile, buildID string) (obj *Object, err error) {
	defer recoverMalformed(&err)
	if f.src == nil {
		return nil, fmt.Errorf("%w: no file to read", ErrMalformedObject)
	}
	loads, err := loadSegments(f)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedObject, err)
	}
	secs := sectionRanges(f)
	symtab, err := loadSymbolSection(f, elf.SHT_SYMTAB, secs)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedObject, err)
	}
	dynsym, err := loadSymbolSection(f, elf.SHT_DYNSYM, secs)
	if err != nil {
		if symtab == nil {
			return nil, fmt.Errorf("%w: %v", ErrMalformedObject, err)
		}
		dynsym = nil // only needed if .symtab has no functions; then it names nothing
	}
	goTab, err := newGoTable(f, symtab)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedObject, err)
	}
	return &Object{id: objectIDs.Add(1), buildID: buildID, class: f.Class, machine: f.Machine, loads: loads, goTab: goTab,
		symSrc: &symbolSources{symtab: symtab, dynsym: dynsym}}, nil
}

// symbols returns the ELF function table: the functions of .symtab, or of .dynsym when
// .symtab has none (stripped files). In Go binaries the symbols of Go functions duplicate
// .gopclntab and are left out, leaving those of C code in cgo binaries. The table is built
// on first use.
func (o *Object) symbols() *symbolTable {
	o.symsOnce.Do(func() {
		src := o.symSrc
		o.symSrc = nil
		var notGo func(uint64) bool
		if o.goTab != nil {
			notGo = o.goTab.covers
		}
		syms, funcs, _ := src.symtab.funcTable(notGo)
		if funcs == 0 {
			syms, _, _ = src.dynsym.funcTable(notGo)
		}
		o.syms = syms
	})
	return &o.syms
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
	fn, file, line, _ = o.lookupFrame(objAddr, false)
	return fn, file, line
}

// LookupFrame is Lookup that also returns the calls inlined at objAddr, innermost first,
// each inlined into the next and the last into fn; file and line are then the position
// of the call the outermost of them was inlined at. inlined is nil when there are none
// or the object does not record them (only Go 1.20+ tables do), and is shared: it must
// not be modified.
func (o *Object) LookupFrame(objAddr uint64) (fn, file string, line int, inlined []InlinedCall) {
	return o.lookupFrame(objAddr, true)
}

func (o *Object) lookupFrame(objAddr uint64, wantInlined bool) (fn, file string, line int, inlined []InlinedCall) {
	// Every offset read from the file is checked; the recover is a last line of defence
	// against a corrupt file, since any executable on the host gets read.
	defer func() {
		if recover() != nil {
			fn, file, line, inlined = "", "", 0, nil
		}
	}()
	return o.lookup(objAddr, wantInlined)
}

func (o *Object) lookup(objAddr uint64, wantInlined bool) (fn, file string, line int, inlined []InlinedCall) {
	if o.goTab != nil && o.goTab.covers(objAddr) {
		if fn, file, line, inlined = o.goTab.lookupFrame(objAddr, wantInlined); fn != "" {
			return fn, file, line, inlined
		}
	}
	syms := o.symbols()
	i := syms.lookup(objAddr)
	if i < 0 {
		return "", "", 0, nil
	}
	return o.symbolName(syms, i), "", 0, nil
}

// symbolName returns the demangled name of symbol i.
func (o *Object) symbolName(syms *symbolTable, i int) string {
	o.mu.Lock()
	name, ok := o.names[i]
	o.mu.Unlock()
	if ok {
		return name
	}
	name = Demangle(syms.name(i))
	o.mu.Lock()
	cacheName(&o.names, i, name)
	o.mu.Unlock()
	return name
}

// NumSymbols is the number of ELF function symbols kept (Go functions not included).
func (o *Object) NumSymbols() int { return o.symbols().len() }

// HasGoTable reports whether names come from a Go .gopclntab.
func (o *Object) HasGoTable() bool { return o.goTab != nil }
