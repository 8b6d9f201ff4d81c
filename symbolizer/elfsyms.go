package symbolizer

import (
	"debug/elf"
	"encoding/binary"
	"fmt"
	"strings"
)

// symbolSection is the raw contents of a .symtab or .dynsym section and its string table.
// Entries are decoded by hand rather than with elf.File.Symbols so that only the names of
// functions are copied, not a string per symbol of every kind.
type symbolSection struct {
	f       *elfFile
	data    []byte
	strs    string // one copy of the string table; the table builder copies what it keeps
	entSize int
	decode  func(binary.ByteOrder, []byte) elfSym
}

// loadSymbolSection reads the first section of type typ (SHT_SYMTAB or SHT_DYNSYM); nil
// if there is none.
func loadSymbolSection(f *elfFile, typ elf.SectionType) (*symbolSection, error) {
	sec := firstSection(f, typ)
	if sec == nil {
		return nil, nil
	}
	data, strs, err := symbolSectionData(f, sec)
	if err != nil {
		return nil, err
	}
	s := &symbolSection{f: f, data: data, strs: string(strs), entSize: 24, decode: decodeSym64}
	if f.Class == elf.ELFCLASS32 {
		s.entSize, s.decode = 16, decodeSym32
	}
	return s, nil
}

// each calls fn for every entry but the reserved null symbol at index 0.
func (s *symbolSection) each(fn func(elfSym)) {
	if s == nil {
		return
	}
	for off := s.entSize; off+s.entSize <= len(s.data); off += s.entSize {
		fn(s.decode(s.f.ByteOrder, s.data[off:off+s.entSize]))
	}
}

// funcTable builds the table of the section's defined functions.
func (s *symbolSection) funcTable() (symbolTable, error) {
	var raw []rawSymbol
	s.each(func(sym elfSym) {
		if r, ok := funcSymbol(s.f, &sym, s.strs); ok {
			raw = append(raw, r)
		}
	})
	return buildSymbolTable(raw, 0)
}

// value returns the value of the defined symbol called name.
func (s *symbolSection) value(name string) (v uint64, ok bool) {
	s.each(func(sym elfSym) {
		if ok || sym.shndx == uint16(elf.SHN_UNDEF) {
			return
		}
		if n, valid := cString(s.strs, sym.name); valid && n == name {
			v, ok = sym.value, true
		}
	})
	return v, ok
}

func firstSection(f *elfFile, typ elf.SectionType) *elf.Section {
	for _, s := range f.Sections {
		if s.Type == typ {
			return s
		}
	}
	return nil
}

// symbolSectionData reads a symbol section and its linked string table after checking
// the header fields a corrupt file could get wrong.
func symbolSectionData(f *elfFile, sec *elf.Section) (data, strs []byte, err error) {
	entSize := uint64(24)
	if f.Class == elf.ELFCLASS32 {
		entSize = 16
	}
	if sec.Size%entSize != 0 {
		return nil, nil, fmt.Errorf("%s: size %d is not a multiple of %d", sec.Name, sec.Size, entSize)
	}
	if int(sec.Link) <= 0 || int(sec.Link) >= len(f.Sections) {
		return nil, nil, fmt.Errorf("%s: bad string table link %d", sec.Name, sec.Link)
	}
	strSec := f.Sections[sec.Link]
	if strSec.Type != elf.SHT_STRTAB {
		return nil, nil, fmt.Errorf("%s: linked section %s is not a string table", sec.Name, strSec.Name)
	}
	for _, s := range []*elf.Section{sec, strSec} {
		if s.Flags&elf.SHF_COMPRESSED != 0 {
			// Never legitimate for these sections; refuse rather than inflate a bomb.
			return nil, nil, fmt.Errorf("%s: compressed symbol data", s.Name)
		}
	}
	if data, err = f.sectionData(sec); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", sec.Name, err)
	}
	if strs, err = f.sectionData(strSec); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", strSec.Name, err)
	}
	return data, strs, nil
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
// absolute and unnamed symbols and all non-functions are dropped.
func funcSymbol(f *elfFile, s *elfSym, strs string) (rawSymbol, bool) {
	typ := elf.SymType(s.info & 0xf)
	if typ != elf.STT_FUNC && typ != elf.STT_GNU_IFUNC {
		return rawSymbol{}, false
	}
	if s.value == 0 || s.shndx == uint16(elf.SHN_UNDEF) || s.shndx >= uint16(elf.SHN_LORESERVE) {
		return rawSymbol{}, false
	}
	name, ok := cString(strs, s.name)
	if !ok || name == "" {
		return rawSymbol{}, false
	}
	r := rawSymbol{addr: s.value, size: s.size, name: name, bind: bindRank(elf.SymBind(s.info >> 4))}
	if f.Machine == elf.EM_ARM {
		r.addr &^= 1 // the low bit only marks Thumb code
	}
	if int(s.shndx) < len(f.Sections) {
		sec := f.Sections[s.shndx]
		if sec.Addr <= r.addr && r.addr-sec.Addr < sec.Size {
			r.limit = sec.Addr + sec.Size
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

// cString returns the NUL-terminated string at off in strs.
func cString(strs string, off uint32) (string, bool) {
	if uint64(off) >= uint64(len(strs)) {
		return "", false
	}
	s := strs[off:]
	if i := strings.IndexByte(s, 0); i >= 0 {
		return s[:i], true
	}
	return "", false
}
