package symbolizer

import (
	"debug/elf"
	"encoding/binary"
	"sync"
)

// Go 1.20+ tables record the calls the compiler inlined, as the runtime's tracebacks show
// them (runtime/symtabinl.go). A function's pc-data table PCDATA_InlTreeIndex gives, for
// each pc, the index of the innermost inlined call there in the function's inline tree
// (-1: none), which its funcdata FUNCDATA_InlTree locates as an offset from the
// moduledata's gofunc. Each tree entry names the inlined function and the offset of an
// instruction of the caller whose position is the call site, from which the walk goes on
// to the caller's own inlined call, until the physical function is reached.
//
// gofunc is not in the table: it is the address of the symbol go:func.* when .symtab is
// there, else read from the runtime's moduledata, found in the data sections. It is found
// on the first lookup that needs it, so objects never asked about inlined code pay nothing.

// InlinedCall is a call the compiler inlined at a frame's address.
type InlinedCall struct {
	Function string // demangled
	File     string
	Line     int
}

const (
	goFuncHeaderSize   = 44 // _func up to nfuncdata (Go 1.20+)
	pcdataInlTreeIndex = 2  // internal/abi PCDATA_InlTreeIndex
	funcdataInlTree    = 3  // internal/abi FUNCDATA_InlTree
	inlinedCallSize    = 16 // funcID uint8, pad [3]byte, nameOff, parentPc, startLine int32
	// maxInlineDepth bounds a walk of the inline tree; a corrupt tree could loop.
	maxInlineDepth = 64
	// The moduledata fields (Go 1.20 to 1.26, pointer-sized words) that are read or
	// checked besides mdFuncnametab and mdText (gotext.go): funcnametab's length and
	// capacity, which the linker makes equal, rodata and gofunc. Go 1.26 added epclntab
	// after gofunc; nothing after gofunc is relied on.
	mdFuncnametabLen = 2
	mdFuncnametabCap = 3
	mdRodata         = 39
	mdGofunc         = 40
)

// goFuncData is where the inline trees are: gofunc's offset in the table's file, and the
// end of the section holding it, which no tree may cross.
type goFuncData struct {
	off, end uint64
	ok       bool
}

// goFuncLocator is what finding gofunc needs of the ELF file, kept from parsing it: a few
// section ranges, not the parsed file.
type goFuncLocator struct {
	symtab *symbolSection // nil when stripped
	bo     binary.ByteOrder
	ptr    uint64 // pointer size
	// The moduledata's fields it is recognized and checked by.
	pcHeader, funcnametab, text uint64
	secs                        []locatorSection
	relative                    uint32 // R_*_RELATIVE of the machine in ET_DYN files, else 0
}

// locatorSection is a section with contents in the file.
type locatorSection struct {
	addr, off, size uint64
	moduledata      bool // may hold the moduledata (mayHoldModuledata)
	rela            bool // SHT_RELA
}

// goInline is the inline expansion state of a goTable.
type goInline struct {
	once    sync.Once
	locator *goFuncLocator // nil once used, or when gofunc cannot be found
	data    goFuncData
}

// newGoFuncLocator keeps what resolving gofunc will need; nil when the table has no
// inline trees this package reads (before Go 1.20).
func newGoFuncLocator(f *elfFile, symtab *symbolSection, pclntab *elf.Section, hdr []byte, text uint64) *goFuncLocator {
	if pclntabMagic(hdr) != 0xfffffff1 {
		return nil
	}
	funcnameOff, ok := pclntabWord(hdr, 3)
	if !ok {
		return nil
	}
	l := &goFuncLocator{symtab: symtab, bo: f.ByteOrder, ptr: uint64(hdr[7]), pcHeader: pclntab.Addr,
		funcnametab: pclntab.Addr + funcnameOff, text: text}
	if f.Type == elf.ET_DYN && f.Class == elf.ELFCLASS64 {
		l.relative = relativeRelocation(f.Machine)
	}
	for _, s := range f.Sections {
		if s.Flags&elf.SHF_COMPRESSED != 0 || !within(s.Offset, s.Size, f.src.size) {
			continue
		}
		switch {
		case s.Type == elf.SHT_PROGBITS && s.Flags&elf.SHF_ALLOC != 0:
			l.secs = append(l.secs, locatorSection{addr: s.Addr, off: s.Offset, size: s.Size, moduledata: mayHoldModuledata(s)})
		case s.Type == elf.SHT_RELA && l.relative != 0 && s.Size <= maxModuledataScan:
			l.secs = append(l.secs, locatorSection{off: s.Offset, size: s.Size, rela: true})
		}
	}
	return l
}

// goFunc returns where the inline trees are, finding it on first use.
func (g *goTable) goFunc() goFuncData {
	g.inl.once.Do(func() {
		l := g.inl.locator
		g.inl.locator = nil
		if l == nil {
			return
		}
		if addr, ok := l.gofunc(g.f); ok {
			g.inl.data = l.fileRange(addr)
		}
	})
	return g.inl.data
}

// gofunc returns the address of go:func.*, from the symbol table or the moduledata.
func (l *goFuncLocator) gofunc(f *objFile) (uint64, bool) {
	if v, ok := l.symtab.value("go:func.*"); ok {
		return v, true
	}
	if v, ok := l.moduledataGofunc(f); ok {
		return v, true
	}
	return l.relocatedModuledataGofunc(f)
}

// fileRange converts gofunc to a file offset through the section holding it.
func (l *goFuncLocator) fileRange(addr uint64) goFuncData {
	for _, s := range l.secs {
		if !s.rela && addr >= s.addr && addr-s.addr < s.size {
			return goFuncData{off: s.off + addr - s.addr, end: s.off + s.size, ok: true}
		}
	}
	return goFuncData{}
}

// moduledataGofunc scans the data sections for the moduledata, a word equal to the
// pclntab's address followed by fields that must agree with the table, and reads gofunc.
func (l *goFuncLocator) moduledataGofunc(f *objFile) (uint64, bool) {
	w := newWindow(f)
	n := (mdGofunc + 1) * l.ptr
	for _, s := range l.secs {
		if !s.moduledata {
			continue
		}
		for off := uint64(0); off+n <= s.size; off += l.ptr {
			b := w.at(s.off+off, n)
			if b == nil {
				break
			}
			word := func(i uint64) uint64 { return readWord(l.bo, b[i*l.ptr:], l.ptr) }
			if word(0) == l.pcHeader && word(mdFuncnametab) == l.funcnametab && word(mdText) == l.text &&
				word(mdFuncnametabLen) != 0 && word(mdFuncnametabLen) == word(mdFuncnametabCap) &&
				l.plausibleGofunc(word(mdRodata), word(mdGofunc)) {
				return word(mdGofunc), true
			}
		}
	}
	return 0, false
}

// plausibleGofunc checks the gofunc of a candidate moduledata: at or after rodata, in a
// section of the file. Another layout, with other fields before it, fails this.
func (l *goFuncLocator) plausibleGofunc(rodata, gofunc uint64) bool {
	return rodata != 0 && rodata <= gofunc && l.fileRange(gofunc).ok
}

// relocatedModuledataGofunc finds the moduledata of a position-independent binary whose
// pointers the file leaves to R_*_RELATIVE relocations (see relocatedModuledataText).
func (l *goFuncLocator) relocatedModuledataGofunc(f *objFile) (uint64, bool) {
	if l.relative == 0 {
		return 0, false
	}
	var starts []uint64
	l.eachRelative(f, func(target, addend uint64) bool {
		if addend == l.pcHeader {
			starts = append(starts, target)
		}
		return len(starts) < 16
	})
	for _, start := range starts {
		var names, text bool
		var rodata, gofunc uint64
		l.eachRelative(f, func(target, addend uint64) bool {
			switch target {
			case start + mdFuncnametab*l.ptr:
				names = addend == l.funcnametab
			case start + mdText*l.ptr:
				text = addend == l.text
			case start + mdRodata*l.ptr:
				rodata = addend
			case start + mdGofunc*l.ptr:
				gofunc = addend
			}
			return true
		})
		if names && text && l.plausibleGofunc(rodata, gofunc) {
			return gofunc, true
		}
	}
	return 0, false
}

// eachRelative calls fn with the target and addend of every relative relocation of the
// ELF64 SHT_RELA sections, until fn returns false.
func (l *goFuncLocator) eachRelative(f *objFile, fn func(target, addend uint64) bool) {
	w := newWindow(f)
	for _, s := range l.secs {
		if !s.rela {
			continue
		}
		for off := uint64(0); off+24 <= s.size; off += 24 {
			b := w.at(s.off+off, 24)
			if b == nil {
				break
			}
			if uint32(l.bo.Uint64(b[8:])) == l.relative && !fn(l.bo.Uint64(b), l.bo.Uint64(b[16:])) {
				return
			}
		}
	}
}

// goFunc is a function record of the table, as a lookup reads it.
type goFunc struct {
	entry, end         uint64 // pcs; end is the next function's entry
	nameOff            uint32
	pcfile, pcln       uint32
	cu                 uint64
	rec                uint64 // offset of the record in the table
	npcdata, nfuncdata uint64
	haveInlineMetadata bool // the record is a Go 1.20+ one with the counts above
}

// inlined returns the calls inlined at pc in fn, innermost first, and the pc of the
// outermost call site, which the physical function's position is that of. It returns
// nil and pc when there are none or the data is not consistent.
func (g *goTable) inlined(fn *goFunc, pc uint64) ([]InlinedCall, uint64) {
	if !fn.haveInlineMetadata || fn.npcdata <= pcdataInlTreeIndex || fn.nfuncdata <= funcdataInlTree {
		return nil, pc
	}
	var c tableCursor
	arrays := g.funcdata + fn.rec + goFuncHeaderSize
	indexTab, ok1 := c.u32(g, arrays+4*pcdataInlTreeIndex)
	treeOff, ok2 := c.u32(g, arrays+4*(fn.npcdata+funcdataInlTree))
	if !ok1 || !ok2 || treeOff == ^uint32(0) {
		return nil, pc
	}
	idx := g.pcvalue(indexTab, fn.entry, pc)
	if idx < 0 {
		return nil, pc
	}
	gf := g.goFunc()
	if !gf.ok || !within(gf.off, uint64(treeOff), gf.end) {
		return nil, pc
	}
	tree := gf.off + uint64(treeOff)
	var calls []InlinedCall
	for ; idx >= 0; idx = g.pcvalue(indexTab, fn.entry, pc) {
		if len(calls) == maxInlineDepth {
			return nil, pc
		}
		at := tree + uint64(idx)*inlinedCallSize
		if !within(at, inlinedCallSize, gf.end) {
			return nil, pc
		}
		b := g.f.at(at, inlinedCallSize)
		if b == nil {
			return nil, pc
		}
		nameOff, parentPc := int32(g.bo.Uint32(b[4:])), int32(g.bo.Uint32(b[8:]))
		parent := fn.entry + uint64(parentPc)
		if nameOff < 0 || parentPc < 0 || parent >= fn.end {
			return nil, pc
		}
		name := g.funcName(uint32(nameOff))
		if name == "" {
			return nil, pc
		}
		file, line := g.fileLine(fn, pc)
		calls = append(calls, InlinedCall{Function: name, File: file, Line: line})
		pc = parent
	}
	return calls, pc
}

// relativeRelocation is the R_*_RELATIVE type of a machine, 0 if unknown.
func relativeRelocation(m elf.Machine) uint32 {
	switch m {
	case elf.EM_X86_64:
		return uint32(elf.R_X86_64_RELATIVE)
	case elf.EM_AARCH64:
		return uint32(elf.R_AARCH64_RELATIVE)
	case elf.EM_RISCV:
		return uint32(elf.R_RISCV_RELATIVE)
	case elf.EM_PPC64:
		return uint32(elf.R_PPC64_RELATIVE)
	case elf.EM_S390:
		return uint32(elf.R_390_RELATIVE)
	}
	return 0
}

// inlineChain is what a lookup with inlined calls returns: the calls and the position of
// the outermost call site.
type inlineChain struct {
	calls []InlinedCall
	file  string
	line  int
}

// maxCachedChains bounds the inline chains a table remembers (by pc): each is a few
// pc-value tables decoded per inlined call, which the few hot addresses of a profile
// would otherwise pay on every drain. About 100 bytes each.
const maxCachedChains = 2048

func (g *goTable) cachedChain(pc uint64) (inlineChain, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	c, ok := g.chains[pc]
	return c, ok
}

func (g *goTable) cacheChain(pc uint64, c inlineChain) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.chains == nil || len(g.chains) >= maxCachedChains {
		g.chains = make(map[uint64]inlineChain)
	}
	g.chains[pc] = c
}
