package symbolizer

import (
	"debug/elf"
	"encoding/binary"
)

// Go 1.18+ function tables hold entry points as offsets from runtime.text, the start of the
// Go code. The table header has a field for it, but the linker leaves it 0 in the file (the
// runtime uses its moduledata instead), and runtime.text is not always the start of .text:
// when an external linker (cgo) links the binary, C start-up code comes first. So it is
// found, in order of trust: in .symtab; in the runtime's moduledata (written by the linker
// into the file, or as relocations in position-independent binaries); and only for
// internally linked binaries, which have no C start-up code, at the start of .text.

// moduledata layout (runtime/symtab.go, unchanged since Go 1.16), in pointer-sized words:
// pcHeader, then the funcnametab slice, ..., and text at word 22.
const (
	mdFuncnametab = 1
	mdText        = 22
)

// goTextStart returns runtime.text; ok is false if it cannot be determined safely.
func goTextStart(f *elfFile, pclntabAddr uint64, data []byte, symtab *symbolSection) (text uint64, ok bool) {
	magic := pclntabMagic(data)
	if magic != 0xfffffff0 && magic != 0xfffffff1 {
		return 0, true // Go 1.2 to 1.17 tables hold absolute addresses
	}
	if v, ok := symtab.value("runtime.text"); ok {
		return v, true
	}
	ptrSize := uint64(data[7])
	funcnameOff, ok := pclntabWord(data, 3)
	if !ok {
		return 0, false
	}
	pcHeader, funcnametab := pclntabAddr, pclntabAddr+funcnameOff
	if v, ok := moduledataText(f, ptrSize, pcHeader, funcnametab); ok && f.inExecSegment(v) {
		return v, true
	}
	if v, ok := relocatedModuledataText(f, ptrSize, pcHeader, funcnametab); ok && f.inExecSegment(v) {
		return v, true
	}
	if text := f.Section(".text"); text != nil && f.Section(".init") == nil {
		return text.Addr, true
	}
	return 0, false
}

// pclntabWord reads pointer-sized header word i (after magic, pad, quantum and pointer size).
func pclntabWord(data []byte, i uint64) (uint64, bool) {
	ptrSize := uint64(data[7])
	off := 8 + i*ptrSize
	if off+ptrSize > uint64(len(data)) {
		return 0, false
	}
	return readWord(pclntabByteOrder(data), data[off:], ptrSize), true
}

func readWord(bo binary.ByteOrder, b []byte, ptrSize uint64) uint64 {
	if ptrSize == 8 {
		return bo.Uint64(b)
	}
	return uint64(bo.Uint32(b))
}

// moduledataText scans the data sections for the moduledata, recognized by its first two
// words (the addresses of the pclntab and of its function name table), and reads its text
// field.
func moduledataText(f *elfFile, ptrSize, pcHeader, funcnametab uint64) (uint64, bool) {
	w := newWindow(f.src)
	for _, sec := range f.Sections {
		if !mayHoldModuledata(sec) || !within(sec.Offset, sec.Size, f.src.size) {
			continue
		}
		for off := uint64(0); off+(mdText+1)*ptrSize <= sec.Size; off += ptrSize {
			b := w.at(sec.Offset+off, (mdText+1)*ptrSize)
			if b == nil {
				break
			}
			if readWord(f.ByteOrder, b, ptrSize) == pcHeader &&
				readWord(f.ByteOrder, b[mdFuncnametab*ptrSize:], ptrSize) == funcnametab {
				return readWord(f.ByteOrder, b[mdText*ptrSize:], ptrSize), true
			}
		}
	}
	return 0, false
}

// maxModuledataScan bounds the bytes of one section scanned for the moduledata.
const maxModuledataScan = 64 << 20

// mayHoldModuledata picks the sections the linker puts the moduledata in: .go.module
// since Go 1.26, .noptrdata before, .data.rel.ro in some position-independent layouts.
func mayHoldModuledata(sec *elf.Section) bool {
	switch sec.Name {
	case ".go.module", ".noptrdata", ".data", ".data.rel.ro":
		return sec.Type == elf.SHT_PROGBITS && sec.Size <= maxModuledataScan && sec.Flags&elf.SHF_COMPRESSED == 0
	}
	return false
}

// relocatedModuledataText finds the moduledata of a position-independent binary, whose
// pointers are R_*_RELATIVE relocations with the link-time address as addend: the
// relocation of its first word has the pclntab address as addend, the one of its second
// word the address of funcnametab; the one of word mdText holds runtime.text.
func relocatedModuledataText(f *elfFile, ptrSize, pcHeader, funcnametab uint64) (uint64, bool) {
	if f.Type != elf.ET_DYN || f.Class != elf.ELFCLASS64 {
		return 0, false
	}
	// Candidate moduledata addresses: the targets of relocations to the pclntab. There
	// are one or two; a corrupt file could claim many, hence the bound.
	var starts []uint64
	eachRelativeRelocation(f, func(target, addend uint64) bool {
		if addend == pcHeader {
			starts = append(starts, target)
		}
		return len(starts) < 16
	})
	for _, start := range starts {
		var haveNames, haveText bool
		var text uint64
		eachRelativeRelocation(f, func(target, addend uint64) bool {
			switch target {
			case start + mdFuncnametab*ptrSize:
				haveNames = addend == funcnametab
			case start + mdText*ptrSize:
				text, haveText = addend, true
			}
			return true
		})
		if haveNames && haveText {
			return text, true
		}
	}
	return 0, false
}

// eachRelativeRelocation calls fn with the target address and addend of every
// R_*_RELATIVE entry of the ELF64 SHT_RELA sections, until fn returns false.
func eachRelativeRelocation(f *elfFile, fn func(target, addend uint64) bool) {
	relative := relativeRelocation(f.Machine)
	if relative == 0 {
		return
	}
	w := newWindow(f.src)
	for _, sec := range f.Sections {
		if sec.Type != elf.SHT_RELA || sec.Size > maxModuledataScan || sec.Flags&elf.SHF_COMPRESSED != 0 ||
			!within(sec.Offset, sec.Size, f.src.size) {
			continue
		}
		for off := uint64(0); off+24 <= sec.Size; off += 24 {
			b := w.at(sec.Offset+off, 24)
			if b == nil {
				break
			}
			info := f.ByteOrder.Uint64(b[8:])
			if uint32(info) == relative && !fn(f.ByteOrder.Uint64(b), f.ByteOrder.Uint64(b[16:])) {
				return
			}
		}
	}
}

// inExecSegment reports whether addr lies in an executable PT_LOAD segment.
func (f *elfFile) inExecSegment(addr uint64) bool {
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && p.Flags&elf.PF_X != 0 && addr >= p.Vaddr && addr-p.Vaddr < p.Memsz {
			return true
		}
	}
	return false
}
