package symbolizer

import (
	"debug/elf"
	"debug/gosym"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
)

// goTable names Go functions from .gopclntab, which even binaries linked with -s -w keep
// because the runtime needs it for tracebacks. It also yields source file and line.
//
// Tables of Go 1.18 and later are read in place, the way the runtime reads its own: a
// binary search of the function table, then the function's record, name and pc-value
// tables, all read from the file when a lookup needs them (see objfile.go). Nothing is
// decoded up front, so a table costs a few hundred bytes until it is used, and then only
// the names it returned. Older layouts go through debug/gosym, which decodes every
// function eagerly.
type goTable struct {
	lo, hi uint64 // [entry of the first, end of the last] Go function

	f          *objFile
	base, size uint64 // the table in the file
	bo         binary.ByteOrder
	quantum    uint64 // pc deltas are in units of the minimum instruction size
	textStart  uint64 // runtime.text: function entries are offsets from it
	nfunc      uint64
	// Offsets in the table of its parts, each of which extends to its end.
	funcnames, cutab, filetab, pctab uint64
	funcdata                         uint64 // the function table, then the _func records

	// index holds the entry of every funcIndexStride-th function, so that a lookup's
	// binary search reads one stretch of the function table instead of a block per step.
	index []uint32

	legacy *legacyGoTable // Go 1.2 to 1.17 layouts

	inlineFormat bool     // a Go 1.20+ table, whose records locate inline trees
	inl          goInline // where the inline trees are, found on first use

	// mu guards the name caches, which make the names of the functions a profile keeps
	// hitting one string each instead of one per frame, and spare reading them again, and
	// the cache of inline chains (goinline.go).
	mu     sync.Mutex
	names  map[uint32]string // by offset in funcnames, demangled
	files  map[uint32]string // by offset in filetab
	chains map[uint64]inlineChain
}

// legacyGoTable is a pre-1.18 table decoded by debug/gosym.
type legacyGoTable struct {
	// mu serializes lookups: debug/gosym memoizes file names in a map without locking.
	mu  sync.Mutex
	tab *gosym.Table
}

// maxCachedNames bounds each name cache of a table; past it the cache starts over.
const maxCachedNames = 1 << 16

// funcRecordSize is the part of a Go 1.18+ _func record that lookups read: entryOff,
// nameOff, args, deferreturn, pcsp, pcfile, pcln, npcdata, cuOffset.
const funcRecordSize = 36

// pclntab magics (internal/abi): Go 1.2, 1.16, 1.18 and 1.20+ layouts.
var knownPclntabMagics = map[uint32]bool{0xfffffffb: true, 0xfffffffa: true, 0xfffffff0: true, 0xfffffff1: true}

var errMalformedPclntab = errors.New("malformed .gopclntab")

// funcIndexStride is the number of functions per entry of goTable.index: 4 bytes per 64
// functions of heap, and a search within 512 bytes of the function table.
const funcIndexStride = 64

// pclntabHeaderSize is the header of a Go 1.18+ table with 8-byte pointers, the largest.
const pclntabHeaderSize = 8 + 8*8

// newGoTable locates .gopclntab; it returns nil without error when there is none or it has
// a layout this package does not know (a future Go), so ELF symbols are used instead.
func newGoTable(f *elfFile, symtab *symbolSection) (*goTable, error) {
	sec := f.Section(".gopclntab")
	if sec == nil || sec.Type == elf.SHT_NOBITS {
		return nil, nil
	}
	if sec.Flags&elf.SHF_COMPRESSED != 0 {
		return nil, fmt.Errorf("%w: compressed", errMalformedPclntab)
	}
	if !within(sec.Offset, sec.Size, f.src.size) {
		return nil, fmt.Errorf(".gopclntab lies beyond the end of the file")
	}
	hdr := f.src.at(sec.Offset, min(sec.Size, pclntabHeaderSize))
	if len(hdr) < 16 || !knownPclntabMagics[pclntabMagic(hdr)] {
		return nil, nil
	}
	text, ok := goTextStart(f, sec.Addr, hdr, symtab)
	if !ok {
		// Without the base every Go name would be wrong; rather have none.
		return nil, nil
	}
	g, err := goTableAt(f.src, sec.Offset, sec.Size, text)
	if g != nil && g.inlineFormat {
		g.inl.locator = newGoFuncLocator(f, symtab, sec, hdr, text)
	}
	return g, err
}

// goTableFromData builds the table from .gopclntab contents with a known magic.
func goTableFromData(data []byte, textStart uint64) (*goTable, error) {
	return goTableAt(memFile(data), 0, uint64(len(data)), textStart)
}

// goTableAt builds the table of the .gopclntab at [base, base+size) in f.
func goTableAt(f *objFile, base, size, textStart uint64) (*goTable, error) {
	hdr := f.at(base, min(size, pclntabHeaderSize))
	if err := checkPclntabHeader(hdr, size); err != nil {
		return nil, fmt.Errorf("%w: %v", errMalformedPclntab, err)
	}
	switch pclntabMagic(hdr) {
	case 0xfffffff0, 0xfffffff1:
		return newGo118Table(f, base, size, hdr, textStart)
	}
	data := f.read(base, size)
	if data == nil {
		return nil, fmt.Errorf("%w: unreadable", errMalformedPclntab)
	}
	return newLegacyGoTable(data, textStart)
}

// newGo118Table checks the header of a Go 1.18+ table and locates its parts. The header
// is the magic, two zero bytes, the minimum instruction size, the pointer size, then
// pointer-sized words: nfunc, nfiles, (unused) textStart, and the offsets of funcnametab,
// cutab, filetab, pctab and the function table.
func newGo118Table(f *objFile, base, size uint64, hdr []byte, textStart uint64) (*goTable, error) {
	var words [8]uint64
	for i := range words {
		w, ok := pclntabWord(hdr, uint64(i))
		if !ok {
			return nil, fmt.Errorf("%w: truncated header", errMalformedPclntab)
		}
		if i >= 3 && w > size {
			return nil, fmt.Errorf("%w: table %d at %#x lies beyond its end", errMalformedPclntab, i, w)
		}
		words[i] = w
	}
	g := &goTable{f: f, base: base, size: size, bo: pclntabByteOrder(hdr), quantum: uint64(hdr[6]),
		textStart: textStart, nfunc: words[0], inlineFormat: pclntabMagic(hdr) == 0xfffffff1,
		funcnames: words[3], cutab: words[4], filetab: words[5], pctab: words[6], funcdata: words[7]}
	if g.quantum == 0 {
		return nil, fmt.Errorf("%w: instruction size 0", errMalformedPclntab)
	}
	if g.nfunc == 0 {
		return nil, errMalformedPclntab
	}
	// checkPclntabHeader made sure that the nfunc+1 pairs fit.
	var c tableCursor
	first, ok1 := c.u32(g, g.funcdata)
	end, ok2 := c.u32(g, g.funcdata+8*g.nfunc)
	if !ok1 || !ok2 {
		return nil, fmt.Errorf("%w: unreadable function table", errMalformedPclntab)
	}
	g.lo, g.hi = textStart+uint64(first), textStart+uint64(end)
	if end <= first || g.lo < textStart || g.hi < textStart {
		return nil, fmt.Errorf("%w: empty text range", errMalformedPclntab)
	}
	if g.nfunc > funcIndexStride {
		w := newWindow(f)
		g.index = make([]uint32, 0, (g.nfunc+funcIndexStride-1)/funcIndexStride)
		for i := uint64(0); i < g.nfunc; i += funcIndexStride {
			b := w.at(base+g.funcdata+8*i, 4)
			if b == nil {
				return nil, fmt.Errorf("%w: unreadable function table", errMalformedPclntab)
			}
			g.index = append(g.index, g.bo.Uint32(b))
		}
	}
	return g, nil
}

// newLegacyGoTable decodes a Go 1.2 to 1.17 table with debug/gosym.
func newLegacyGoTable(data []byte, textStart uint64) (*goTable, error) {
	tab, err := gosym.NewTable(nil, gosym.NewLineTable(data, textStart))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errMalformedPclntab, err)
	}
	if len(tab.Funcs) == 0 {
		return nil, errMalformedPclntab
	}
	g := &goTable{legacy: &legacyGoTable{tab: tab}, lo: tab.Funcs[0].Entry, hi: tab.Funcs[len(tab.Funcs)-1].End}
	if g.hi <= g.lo {
		return nil, fmt.Errorf("%w: empty text range", errMalformedPclntab)
	}
	return g, nil
}

// checkPclntabHeader checks that the function table the header describes lies inside the
// data. debug/gosym allocates a Func per claimed function before noticing, and a corrupt
// count of four billion would exhaust memory, which no recover can catch.
func checkPclntabHeader(data []byte, size uint64) error {
	if len(data) < 16 || data[4] != 0 || data[5] != 0 {
		return errors.New("bad header")
	}
	ptrSize := uint64(data[7])
	if ptrSize != 4 && ptrSize != 8 {
		return fmt.Errorf("pointer size %d", ptrSize)
	}
	nfunc, ok := pclntabWord(data, 0)
	if !ok {
		return errors.New("truncated header")
	}
	// Where the function table starts and how wide its fields are, per layout.
	var tabOff, fieldSize uint64
	switch pclntabMagic(data) {
	case 0xfffffff0, 0xfffffff1: // Go 1.18+: 32-bit text offsets
		tabOff, ok = pclntabWord(data, 7)
		fieldSize = 4
	case 0xfffffffa: // Go 1.16
		tabOff, ok = pclntabWord(data, 6)
		fieldSize = ptrSize
	default: // Go 1.2
		tabOff, ok, fieldSize = 8+ptrSize, true, ptrSize
	}
	if !ok {
		return errors.New("truncated header")
	}
	if nfunc > size/(2*fieldSize) || !within(tabOff, (2*nfunc+1)*fieldSize, size) {
		return fmt.Errorf("function table of %d entries does not fit", nfunc)
	}
	return nil
}

func pclntabByteOrder(data []byte) binary.ByteOrder {
	if knownPclntabMagics[binary.LittleEndian.Uint32(data)] {
		return binary.LittleEndian
	}
	return binary.BigEndian
}

// pclntabMagic reads the magic in whichever byte order the table uses; the magics are
// chosen so that the two readings cannot be confused.
func pclntabMagic(data []byte) uint32 {
	if le := binary.LittleEndian.Uint32(data); knownPclntabMagics[le] {
		return le
	}
	return binary.BigEndian.Uint32(data)
}

// covers reports whether pc lies in the Go part of the text.
func (g *goTable) covers(pc uint64) bool {
	return pc >= g.lo && pc < g.hi
}

// tableCursor reads uint32s of a table, keeping the last block it read so that reads
// close together (the last steps of a binary search) cost no cache lookup.
type tableCursor struct {
	blk uint64
	b   []byte
}

// u32 reads the uint32 at off in the table.
func (c *tableCursor) u32(g *goTable, off uint64) (uint32, bool) {
	if !within(off, 4, g.size) {
		return 0, false
	}
	abs := g.base + off
	bi, lo := abs/blockSize, abs%blockSize
	if lo > blockSize-4 { // straddles two blocks
		b := g.f.at(abs, 4)
		if b == nil {
			return 0, false
		}
		return g.bo.Uint32(b), true
	}
	if c.b == nil || c.blk != bi {
		c.b, c.blk = g.f.block(bi), bi
	}
	if uint64(len(c.b)) < lo+4 {
		return 0, false
	}
	return g.bo.Uint32(c.b[lo:]), true
}

// lookup returns the function containing pc, with file and line when known. Every offset
// read from the table is checked against it, so that a corrupt table yields no name or a
// wrong one, never a panic.
func (g *goTable) lookup(pc uint64) (fn, file string, line int) {
	fn, file, line, _ = g.lookupFrame(pc, false)
	return fn, file, line
}

// lookupFrame is lookup that also returns, if wantInlined, the calls inlined at pc
// (innermost first); file and line are then those of the outermost call site.
func (g *goTable) lookupFrame(pc uint64, wantInlined bool) (fn, file string, line int, inlined []InlinedCall) {
	if !g.covers(pc) {
		return "", "", 0, nil
	}
	if g.legacy != nil {
		fn, file, line = g.legacy.lookup(pc)
		return fn, file, line, nil
	}
	f, ok := g.findFunc(pc)
	if !ok {
		return "", "", 0, nil
	}
	if fn = g.funcName(f.nameOff); fn == "" {
		return "", "", 0, nil
	}
	if wantInlined {
		if c, ok := g.cachedChain(pc); ok {
			return fn, c.file, c.line, c.calls
		}
		site := pc
		if inlined, site = g.inlined(&f, pc); inlined != nil {
			file, line = g.fileLine(&f, site)
			g.cacheChain(pc, inlineChain{calls: inlined, file: file, line: line})
			return fn, file, line, inlined
		}
	}
	file, line = g.fileLine(&f, pc)
	return fn, file, line, nil
}

// findFunc reads the record of the function containing pc.
func (g *goTable) findFunc(pc uint64) (goFunc, bool) {
	// The last function whose entry is at or before pc: first the stretch of the function
	// table from the index, then the function within it.
	var c tableCursor
	off := pc - g.textStart
	lo, hi := uint64(0), g.nfunc
	if len(g.index) > 0 {
		i, j := 0, len(g.index)
		for i < j {
			m := int(uint(i+j) >> 1)
			if uint64(g.index[m]) <= off {
				i = m + 1
			} else {
				j = m
			}
		}
		if i == 0 {
			return goFunc{}, false
		}
		lo = uint64(i-1) * funcIndexStride
		hi = min(lo+funcIndexStride, g.nfunc)
	}
	for lo < hi {
		m := lo + (hi-lo)/2
		e, ok := c.u32(g, g.funcdata+8*m)
		if !ok {
			return goFunc{}, false
		}
		if uint64(e) <= off {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == 0 {
		return goFunc{}, false
	}
	rec, ok1 := c.u32(g, g.funcdata+8*(lo-1)+4)
	next, ok2 := c.u32(g, g.funcdata+8*lo) // the function table ends with the end of the last
	size := uint64(funcRecordSize)
	if g.inlineFormat {
		size = goFuncHeaderSize
	}
	if !ok1 || !ok2 || !within(g.funcdata+uint64(rec), size, g.size) {
		return goFunc{}, false
	}
	b := g.f.at(g.base+g.funcdata+uint64(rec), size)
	if b == nil {
		return goFunc{}, false
	}
	f := goFunc{entry: g.textStart + uint64(g.bo.Uint32(b[0:])), end: g.textStart + uint64(next),
		nameOff: g.bo.Uint32(b[4:]), pcfile: g.bo.Uint32(b[20:]), pcln: g.bo.Uint32(b[24:]),
		cu: uint64(g.bo.Uint32(b[32:])), rec: uint64(rec)}
	if g.inlineFormat {
		f.npcdata, f.nfuncdata, f.haveInlineMetadata = uint64(g.bo.Uint32(b[28:])), uint64(b[43]), true
	}
	return f, true
}

// fileLine returns the source position of pc in f, "" and 0 where unknown.
func (g *goTable) fileLine(f *goFunc, pc uint64) (file string, line int) {
	if l := g.pcvalue(f.pcln, f.entry, pc); l > 0 {
		line = int(l)
	}
	if fno := g.pcvalue(f.pcfile, f.entry, pc); fno >= 0 {
		var c tableCursor
		if fileOff, ok := c.u32(g, g.cutab+(f.cu+uint64(fno))*4); ok && fileOff != ^uint32(0) {
			file = g.fileName(fileOff)
		}
	}
	return file, line
}

// pcvalue decodes the pc-value table at off in pctab for the function entering at entry,
// and returns the value at targetpc, or -1. A table is a sequence of (value delta, pc
// delta) pairs of varints, the value delta zig-zag encoded and the pc delta in units of
// the instruction size, ended by a zero value delta (except in the first pair).
func (g *goTable) pcvalue(off uint32, entry, targetpc uint64) int32 {
	if off == 0 {
		return -1
	}
	r := byteReader{g: g, off: g.pctab + uint64(off)}
	pc, val := entry, int32(-1)
	for {
		uv, ok := r.uvarint()
		if !ok || (uv == 0 && pc != entry) {
			return -1
		}
		val += int32(-(uv & 1) ^ (uv >> 1))
		pcDelta, ok := r.uvarint()
		if !ok {
			return -1
		}
		pc += uint64(pcDelta) * g.quantum
		if targetpc < pc {
			return val
		}
	}
}

// byteReader reads a table's bytes in sequence, a block at a time.
type byteReader struct {
	g   *goTable
	off uint64 // in the table, of the byte after buf
	buf []byte
}

// uvarint decodes a varint of at most 5 bytes.
func (r *byteReader) uvarint() (uint32, bool) {
	var v uint32
	for shift := 0; shift < 35; shift += 7 {
		if len(r.buf) == 0 && !r.fill() {
			return 0, false
		}
		b := r.buf[0]
		r.buf = r.buf[1:]
		v |= uint32(b&0x7f) << shift
		if b < 0x80 {
			return v, true
		}
	}
	return 0, false
}

func (r *byteReader) fill() bool {
	if r.off >= r.g.size {
		return false
	}
	abs := r.g.base + r.off
	n := min(r.g.size-r.off, blockSize-abs%blockSize)
	r.buf = r.g.f.at(abs, n)
	r.off += n
	return r.buf != nil
}

// funcName returns the (demangled) name at off in funcnametab, "" if there is none.
func (g *goTable) funcName(off uint32) string {
	g.mu.Lock()
	name, ok := g.names[off]
	g.mu.Unlock()
	if ok {
		return name
	}
	raw, ok := g.f.cString(g.base+g.funcnames+uint64(off), g.base+g.size)
	if !ok || raw == "" {
		return ""
	}
	// C and C++ code linked into a Go binary (cgo, the race runtime) appears here too,
	// with raw symbol names.
	name = Demangle(raw)
	g.mu.Lock()
	cacheName(&g.names, off, name)
	g.mu.Unlock()
	return name
}

// fileName returns the file name at off in filetab.
func (g *goTable) fileName(off uint32) string {
	g.mu.Lock()
	name, ok := g.files[off]
	g.mu.Unlock()
	if ok {
		return name
	}
	name, ok = g.f.cString(g.base+g.filetab+uint64(off), g.base+g.size)
	if !ok {
		return ""
	}
	g.mu.Lock()
	cacheName(&g.files, off, name)
	g.mu.Unlock()
	return name
}

// cacheName adds a name to a bounded cache.
func cacheName[K comparable](m *map[K]string, k K, name string) {
	if *m == nil || len(*m) >= maxCachedNames {
		*m = make(map[K]string)
	}
	(*m)[k] = name
}

// lookup returns the function containing pc, with file and line when known. debug/gosym
// recovers from most corrupt-table panics itself; the recover here is the last resort.
func (l *legacyGoTable) lookup(pc uint64) (fn, file string, line int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	defer func() {
		if recover() != nil {
			fn, file, line = "", "", 0
		}
	}()
	file, line, f := l.tab.PCToLine(pc)
	if f == nil {
		return "", "", 0
	}
	if line < 0 {
		line = 0
	}
	return Demangle(f.Name), file, line
}
