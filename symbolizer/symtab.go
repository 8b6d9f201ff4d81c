package symbolizer

import (
	"cmp"
	"errors"
	"math"
	"slices"
	"strings"
)

// symbolTable is a sorted list of function address ranges whose names live in one string
// arena. Each symbol costs 16 bytes plus its NUL-terminated name, which keeps the tables of
// hundreds of cached objects (and the kernel's ~100k symbols) small.
type symbolTable struct {
	syms  []symEntry
	names string
}

type symEntry struct {
	addr    uint64
	size    uint32 // bytes covered from addr; 0 covers nothing
	nameOff uint32 // offset of the NUL-terminated name in names
}

// containScan bounds how far lookup walks back for a large symbol enclosing a smaller one
// (hand-written assembly sometimes nests them); real tables need at most a step or two.
const containScan = 4

// lookup returns the index of the symbol covering addr, or -1.
func (t *symbolTable) lookup(addr uint64) int {
	// First symbol starting after addr; the candidate is the one before it.
	i, _ := slices.BinarySearchFunc(t.syms, addr, func(e symEntry, a uint64) int {
		if e.addr <= a {
			return -1
		}
		return 1
	})
	for j := i - 1; j >= 0 && j >= i-containScan; j-- {
		if e := t.syms[j]; addr-e.addr < uint64(e.size) {
			return j
		}
	}
	return -1
}

// name returns the name of symbol i.
func (t *symbolTable) name(i int) string {
	s := t.names[t.syms[i].nameOff:]
	if end := strings.IndexByte(s, 0); end >= 0 {
		return s[:end]
	}
	return s
}

func (t *symbolTable) len() int { return len(t.syms) }

// rawSymbol is a symbol candidate before aliases are merged and ranges computed.
type rawSymbol struct {
	addr  uint64
	size  uint64 // 0: unknown, covers up to the next symbol
	limit uint64 // end of the containing section, bounding unknown sizes; 0 if unknown
	name  string
	bind  uint8 // 2 global, 1 weak, 0 local: preference among aliases
}

// better reports whether a is the preferred name among aliases at the same address:
// a symbol with a size, then the public spelling (fewer leading underscores, e.g. getpid
// over __getpid), then global over weak over local, then the shorter and smaller name,
// so the choice is deterministic.
func better(a, b *rawSymbol) bool {
	if (a.size > 0) != (b.size > 0) {
		return a.size > 0
	}
	if ua, ub := leadingUnderscores(a.name), leadingUnderscores(b.name); ua != ub {
		return ua < ub
	}
	if a.bind != b.bind {
		return a.bind > b.bind
	}
	if len(a.name) != len(b.name) {
		return len(a.name) < len(b.name)
	}
	return a.name < b.name
}

func leadingUnderscores(s string) int {
	n := 0
	for n < len(s) && s[n] == '_' {
		n++
	}
	return n
}

var errArenaFull = errors.New("symbol names exceed 4 GiB")

// buildSymbolTable merges aliases, gives unsized symbols the range up to the next symbol
// (bounded by their section and by maxGap when non-zero) and copies names into an arena.
func buildSymbolTable(raw []rawSymbol, maxGap uint64) (symbolTable, error) {
	slices.SortFunc(raw, func(a, b rawSymbol) int {
		if c := cmp.Compare(a.addr, b.addr); c != 0 {
			return c
		}
		if better(&a, &b) {
			return -1
		}
		if better(&b, &a) {
			return 1
		}
		return 0
	})
	var t symbolTable
	var arena strings.Builder
	names := 0
	for i := range raw {
		names += len(raw[i].name) + 1
	}
	arena.Grow(min(names, math.MaxUint32))
	t.syms = make([]symEntry, 0, len(raw))
	for i := 0; i < len(raw); {
		best := raw[i]
		j := i + 1
		for ; j < len(raw) && raw[j].addr == best.addr; j++ {
			best.size = max(best.size, raw[j].size)
		}
		next := uint64(0)
		if j < len(raw) {
			next = raw[j].addr
		}
		i = j
		size := symbolSize(&best, next, maxGap)
		if size == 0 {
			continue
		}
		if arena.Len()+len(best.name)+1 > math.MaxUint32 {
			return symbolTable{}, errArenaFull
		}
		t.syms = append(t.syms, symEntry{addr: best.addr, size: size, nameOff: uint32(arena.Len())})
		arena.WriteString(best.name)
		arena.WriteByte(0)
	}
	t.names = arena.String()
	t.syms = slices.Clip(t.syms)
	return t, nil
}

// symbolSize is the number of bytes s covers given the address of the next symbol (0 if
// none), capped to fit the table.
func symbolSize(s *rawSymbol, next, maxGap uint64) uint32 {
	end := s.addr + s.size
	if s.size == 0 {
		end = next
		if s.limit > s.addr && (end == 0 || s.limit < end) {
			end = s.limit
		}
		if maxGap > 0 && (end == 0 || end-s.addr > maxGap) {
			end = s.addr + maxGap
		}
	}
	if end <= s.addr {
		return 0
	}
	return uint32(min(end-s.addr, math.MaxUint32))
}
