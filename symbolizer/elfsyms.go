package symbolizer

import (
	"debug/elf"
	"encoding/binary"
	"fmt"
	"math"
)

// symbolSection is a .symtab or .dynsym section and its string table, located in the
// object file and read when a table is built. Entries are decoded by hand rather than with
// elf.File.Symbols so that only functions are kept, not a string per symbol of every kind.
// It holds what decoding needs, not the elf.File, so that it can be kept until the table
// is first needed.
type symbolSection struct {
	f         *objFile
	bo        binary.ByteOrder
	machine   elf.Machine
	off, size uint64 // the entries in the file
	strOff    uint64 // the string table in the file
	strSize   uint64
	entSize   uint64
	decode    func(binary.ByteOrder, []byte) elfSym
	secs      []secRange // address range of each section, by index
}

// secRange is the address range of a section.
type secRange struct{ addr, size uint64 }

// sectionRanges returns the address range of every section of f.
func sectionRanges(f *elfFile) []secRange {
	secs := make([]secRange, len(f.Sections))
	for i, s := range f.Sections {
		secs[i] = secRange{s.Addr, s.Size}
	}
	return secs
}

// loadSymbolSection locates the first section of type typ (SHT_SYMTAB or SHT_DYNSYM) and
// checks its header; nil if there is none.
func loadSymbolSection(f *elfFile, typ elf.SectionType, secs []secRange) (*symbolSection, error) {
	sec := firstSection(f, typ)
	if sec == nil {
		return nil, nil
	}
	strSec, err := checkSymbolSection(f, sec)
	if err != nil {
		return nil, err
	}
	s := &symbolSection{f: f.src, bo: f.ByteOrder, machine: f.Machine, off: sec.Offset, size: sec.Size,
		strOff: strSec.Offset, strSize: min(strSec.Size, math.MaxUint32), entSize: 24, decode: decodeSym64, secs: secs}
	if f.Class == elf.ELFCLASS32 {
		s.entSize, s.decode = 16, decodeSym32
	}
	return s, nil
}

// count is the number of entries, the reserved null symbol included.
func (s *symbolSection) count() uint64 {
	if s == nil {
		return 0
	}
	return s.size / s.entSize
}

// funcTable builds the table of the section's defined functions, leaving out those for
// which skip (if not nil) is true. It also returns the number of functions before that
// filter. The table reads names from the string table in the file.
//
// Building it reads the symbol entries in one sequential pass and no names, except those
// of aliases (symbols at the same address) to choose among them: a string table is not in
// symbol order (.dynsym is in hash order), so reading every name meant a random read per
// symbol, which made the 36k functions of libLLVM cost 150-200 ms.
func (s *symbolSection) funcTable(skip func(addr uint64) bool) (symbolTable, int, error) {
	if s == nil {
		return symbolTable{}, 0, nil
	}
	syms := newWindow(s.f)
	// Sized for the usual share of functions among symbols, so that a big table is not
	// copied over and over while it grows.
	raw := make([]rawSymbol, 0, min(s.count(), 1<<16))
	funcs := 0
	for i := uint64(1); i < s.count(); i++ {
		b := syms.at(s.off+i*s.entSize, s.entSize)
		if b == nil {
			break // the file is shorter than when it was checked
		}
		sym := s.decode(s.bo, b)
		r, ok := s.funcSymbol(&sym)
		if !ok {
			continue
		}
		funcs++
		if skip == nil || !skip(r.addr) {
			raw = append(raw, r)
		}
	}
	if len(raw) == 0 {
		return symbolTable{}, funcs, nil
	}
	// Alias names are read through a block-sized window of the build's own: the shared
	// block cache serves the lookups of every object, and its blocks are allocated.
	aliases := &windowNames{w: newBlockWindow(s.f), off: s.strOff, size: s.strSize}
	t, err := buildSymbolTable(raw, aliases, 0, keepNames)
	t.names = &fileNames{f: s.f, off: s.strOff, size: s.strSize} // lookups read through the block cache
	return t, funcs, err
}

// windowNames are the names of an ELF string table, read through a window.
type windowNames struct {
	w         *window
	off, size uint64 // the string table in the file
}

func (n *windowNames) name(off uint32) (string, bool) {
	return n.w.cString(n.off+uint64(off), n.off+n.size)
}

// value returns the value of the defined symbol called name.
func (s *symbolSection) value(name string) (v uint64, ok bool) {
	if s == nil {
		return 0, false
	}
	syms, strs := newWindow(s.f), newWindow(s.f)
	for i := uint64(1); i < s.count(); i++ {
		b := syms.at(s.off+i*s.entSize, s.entSize)
		if b == nil {
			return 0, false
		}
		sym := s.decode(s.bo, b)
		if sym.shndx == uint16(elf.SHN_UNDEF) || uint64(sym.name)+uint64(len(name)) >= s.strSize {
			continue
		}
		if n := strs.at(s.strOff+uint64(sym.name), uint64(len(name))+1); n != nil && n[len(name)] == 0 && string(n[:len(name)]) == name {
			return sym.value, true
		}
	}
	return 0, false
}

func firstSection(f *elfFile, typ elf.SectionType) *elf.Section {
	for _, s := range f.Sections {
		if s.Type == typ {
			return s
		}
	}
	return nil
}

// checkSymbolSection checks the header fields of a symbol section and of its string table
// that a corrupt file could get wrong, and returns the string table.
func checkSymbolSection(f *elfFile, sec *elf.Section) (*elf.Section, error) {
	entSize := uint64(24)
	if f.Class == elf.ELFCLASS32 {
		entSize = 16
	}
	if sec.Size%entSize != 0 {
		return nil, fmt.Errorf("%s: size %d is not a multiple of %d", sec.Name, sec.Size, entSize)
	}
	if int(sec.Link) <= 0 || int(sec.Link) >= len(f.Sections) {
		return nil, fmt.Errorf("%s: bad string table link %d", sec.Name, sec.Link)
	}
	strSec := f.Sections[sec.Link]
	if strSec.Type != elf.SHT_STRTAB {
		return nil, fmt.Errorf("%s: linked section %s is not a string table", sec.Name, strSec.Name)
	}
	for _, s := range []*elf.Section{sec, strSec} {
		if s.Flags&elf.SHF_COMPRESSED != 0 {
			// Never legitimate for these sections; refuse rather than inflate a bomb.
			return nil, fmt.Errorf("%s: compressed symbol data", s.Name)
		}
		if s.Type == elf.SHT_NOBITS || !within(s.Offset, s.Size, f.src.size) {
			return nil, fmt.Errorf("%s lies beyond the end of the file", s.Name)
		}
	}
	return strSec, nil
}

// elfSym is the part of an ELF symbol entry that symbolization uses.
type elfSym struct {
	name  uint32
	info  byte
	shndx uint16
	value uint64
	size  uint64
}

func decodeSym64(bo binary.ByteOrder, b []byte) elfSym {
	return elfSym{
		name:  bo.Uint32(b[0:4]),
		info:  b[4],
		shndx: bo.Uint16(b[6:8]),
		value: bo.Uint64(b[8:16]),
		size:  bo.Uint64(b[16:24]),
	}
}

func decodeSym32(bo binary.ByteOrder, b []byte) elfSym {
	return elfSym{
		name:  bo.Uint32(b[0:4]),
		value: uint64(bo.Uint32(b[4:8])),
		size:  uint64(bo.Uint32(b[8:12])),
		info:  b[12],
		shndx: bo.Uint16(b[14:16]),
	}
}

// funcSymbol turns a defined function symbol into a table candidate; imports (undefined),
// absolute and unnamed symbols (name offset 0, the empty string, or outside the string
// table) and all non-functions are dropped. The name itself is not read: a non-zero offset
// naming an empty string only happens in hand-made files, and its symbol then names
// nothing.
func (s *symbolSection) funcSymbol(sym *elfSym) (rawSymbol, bool) {
	typ := elf.SymType(sym.info & 0xf)
	if typ != elf.STT_FUNC && typ != elf.STT_GNU_IFUNC {
		return rawSymbol{}, false
	}
	if sym.value == 0 || sym.shndx == uint16(elf.SHN_UNDEF) || sym.shndx >= uint16(elf.SHN_LORESERVE) {
		return rawSymbol{}, false
	}
	if sym.name == 0 || uint64(sym.name) >= s.strSize {
		return rawSymbol{}, false
	}
	r := rawSymbol{addr: sym.value, size: sym.size, nameOff: sym.name, bind: bindRank(elf.SymBind(sym.info >> 4))}
	if s.machine == elf.EM_ARM {
		r.addr &^= 1 // the low bit only marks Thumb code
	}
	if int(sym.shndx) < len(s.secs) {
		sec := s.secs[sym.shndx]
		if sec.addr <= r.addr && r.addr-sec.addr < sec.size {
			r.limit = sec.addr + sec.size
		}
	}
	return r, true
}

func bindRank(b elf.SymBind) uint8 {
	switch b {
	case elf.STB_GLOBAL:
		return 2
	case elf.STB_WEAK:
		return 1
	}
	return 0
}
