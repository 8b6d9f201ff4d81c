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
type goTable struct {
	// mu serializes lookups: debug/gosym memoizes file names in a map without locking.
	mu     sync.Mutex
	tab    *gosym.Table
	lo, hi uint64 // [entry of the first, end of the last] Go function
}

// pclntab magics (internal/abi): Go 1.2, 1.16, 1.18 and 1.20+ layouts.
var knownPclntabMagics = map[uint32]bool{0xfffffffb: true, 0xfffffffa: true, 0xfffffff0: true, 0xfffffff1: true}

var errMalformedPclntab = errors.New("malformed .gopclntab")

// newGoTable loads .gopclntab; it returns nil without error when there is none or it has a
// layout this package does not know (a future Go), so ELF symbols are used instead.
func newGoTable(f *elfFile, symtab *symbolSection) (*goTable, error) {
	sec := f.Section(".gopclntab")
	if sec == nil || sec.Type == elf.SHT_NOBITS {
		return nil, nil
	}
	if sec.Flags&elf.SHF_COMPRESSED != 0 {
		return nil, fmt.Errorf("%w: compressed", errMalformedPclntab)
	}
	data, err := f.sectionData(sec)
	if err != nil {
		return nil, fmt.Errorf(".gopclntab: %w", err)
	}
	if len(data) < 16 || !knownPclntabMagics[pclntabMagic(data)] {
		return nil, nil
	}
	text, ok := goTextStart(f, sec.Addr, data, symtab)
	if !ok {
		// Without the base every Go name would be wrong; rather have none.
		return nil, nil
	}
	return goTableFromData(data, text)
}

// goTableFromData builds the table from .gopclntab contents with a known magic.
func goTableFromData(data []byte, textStart uint64) (*goTable, error) {
	if err := checkPclntabHeader(data); err != nil {
		return nil, fmt.Errorf("%w: %v", errMalformedPclntab, err)
	}
	tab, err := gosym.NewTable(nil, gosym.NewLineTable(data, textStart))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errMalformedPclntab, err)
	}
	if len(tab.Funcs) == 0 {
		return nil, errMalformedPclntab
	}
	g := &goTable{tab: tab, lo: tab.Funcs[0].Entry, hi: tab.Funcs[len(tab.Funcs)-1].End}
	if g.hi <= g.lo {
		return nil, fmt.Errorf("%w: empty text range", errMalformedPclntab)
	}
	return g, nil
}

// checkPclntabHeader checks that the function table the header describes lies inside the
// data. debug/gosym allocates a Func per claimed function before noticing, and a corrupt
// count of four billion would exhaust memory, which no recover can catch.
func checkPclntabHeader(data []byte) error {
	if len(data) < 16 || data[4] != 0 || data[5] != 0 {
		return errors.New("bad header")
	}
	ptrSize := uint64(data[7])
	if ptrSize != 4 && ptrSize != 8 {
		return fmt.Errorf("pointer size %d", ptrSize)
	}
	bo := pclntabByteOrder(data)
	word := func(i uint64) (uint64, bool) {
		off := 8 + i*ptrSize
		if off+ptrSize > uint64(len(data)) {
			return 0, false
		}
		if ptrSize == 8 {
			return bo.Uint64(data[off:]), true
		}
		return uint64(bo.Uint32(data[off:])), true
	}
	nfunc, ok := word(0)
	if !ok {
		return errors.New("truncated header")
	}
	// Where the function table starts and how wide its fields are, per layout.
	var tabOff, fieldSize uint64
	switch pclntabMagic(data) {
	case 0xfffffff0, 0xfffffff1: // Go 1.18+: 32-bit text offsets
		tabOff, ok = word(7)
		fieldSize = 4
	case 0xfffffffa: // Go 1.16
		tabOff, ok = word(6)
		fieldSize = ptrSize
	default: // Go 1.2
		tabOff, ok, fieldSize = 8+ptrSize, true, ptrSize
	}
	if !ok {
		return errors.New("truncated header")
	}
	if nfunc > uint64(len(data))/(2*fieldSize) || !within(tabOff, (2*nfunc+1)*fieldSize, uint64(len(data))) {
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

// lookup returns the function containing pc, with file and line when known. debug/gosym
// recovers from most corrupt-table panics itself; the recover here is the last resort.
func (g *goTable) lookup(pc uint64) (fn, file string, line int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	defer func() {
		if recover() != nil {
			fn, file, line = "", "", 0
		}
	}()
	file, line, f := g.tab.PCToLine(pc)
	if f == nil {
		return "", "", 0
	}
	if line < 0 {
		line = 0
	}
	// C and C++ code linked into a Go binary (cgo, the race runtime) appears here too,
	// with raw symbol names.
	return Demangle(f.Name), file, line
}
