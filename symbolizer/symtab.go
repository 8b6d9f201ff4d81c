package symbolizer

import (
	"cmp"
	"errors"
	"math"
	"math/bits"
	"slices"
	"strings"
	"unsafe"
)

// symbolTable is a sorted list of function address ranges whose names are NUL-terminated
// strings in one block: an arena the table owns, or the string table of an object file,
// read on lookup. Each symbol costs 16 bytes, plus its name when the table owns them,
// which keeps the tables of hundreds of cached objects (and the kernel's ~100k symbols)
// small.
type symbolTable struct {
	syms  []symEntry
	names nameSource
	// aliases holds the symbols an entry stands for when there are several at its
	// address, by entry index; its name is chosen among theirs when asked for.
	aliases map[int32][]rawSymbol
}

// nameSource holds the NUL-terminated names of symbols, by offset.
type nameSource interface {
	name(off uint32) (string, bool)
}

// arenaNames are names in memory; a name is a substring of the arena.
type arenaNames string

func (a arenaNames) name(off uint32) (string, bool) { return cString(string(a), off) }

// fileNames are the names of an ELF string table, read from the file when asked for.
type fileNames struct {
	f         *objFile
	off, size uint64 // the string table in the file
}

func (n *fileNames) name(off uint32) (string, bool) {
	return n.f.cString(n.off+uint64(off), n.off+n.size)
}

type symEntry struct {
	addr    uint64
	size    uint32 // bytes covered from addr; 0 covers nothing
	nameOff uint32 // offset of the NUL-terminated name in names
}

// containScan bounds how far lookup walks back for a large symbol enclosing a smaller one
// (hand-written assembly sometimes nests them); real tables need at most a step or two.
const containScan = 4

// maxSymbolName bounds the length of a name read from a file: one that is longer (or not
// terminated, in a file modified since it was checked) is cut there.
const maxSymbolName = 64 << 10

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

// name returns the name of symbol i, "" if it cannot be read. For an entry that stands
// for aliases, it is the preferred one's (see better), which reads all their names: callers
// that look up the same symbol often remember names (Object.symbolName does).
func (t *symbolTable) name(i int) string {
	if run, ok := t.aliases[int32(i)]; ok {
		var buf []string
		s, _ := t.names.name(bestAlias(run, t.names, &buf).nameOff)
		return s
	}
	s, _ := t.names.name(t.syms[i].nameOff)
	return s
}

func (t *symbolTable) len() int { return len(t.syms) }

// rawSymbol is a symbol candidate before aliases are merged and ranges computed. Its name
// is the NUL-terminated string at nameOff in the names the table is built from.
type rawSymbol struct {
	addr    uint64
	size    uint64 // 0: unknown, covers up to the next symbol
	limit   uint64 // end of the containing section, bounding unknown sizes; 0 if unknown
	nameOff uint32
	bind    uint8 // 2 global, 1 weak, 0 local: preference among aliases
}

// better reports whether a is the preferred name among aliases at the same address:
// a named symbol, then one with a size, then the public spelling (fewer leading
// underscores, e.g. getpid over __getpid), then global over weak over local, then the
// shorter and smaller name, so the choice is deterministic.
func better(a, b *rawSymbol, names nameSource) bool {
	an, _ := names.name(a.nameOff)
	bn, _ := names.name(b.nameOff)
	return betterNamed(a, b, an, bn)
}

// betterNamed is better for symbols whose names are an and bn.
func betterNamed(a, b *rawSymbol, an, bn string) bool {
	if (an != "") != (bn != "") {
		return an != ""
	}
	if (a.size > 0) != (b.size > 0) {
		return a.size > 0
	}
	if ua, ub := leadingUnderscores(an), leadingUnderscores(bn); ua != ub {
		return ua < ub
	}
	if a.bind != b.bind {
		return a.bind > b.bind
	}
	if len(an) != len(bn) {
		return len(an) < len(bn)
	}
	return an < bn
}

func leadingUnderscores(s string) int {
	n := 0
	for n < len(s) && s[n] == '_' {
		n++
	}
	return n
}

var (
	errArenaFull      = errors.New("symbol names exceed 4 GiB")
	errTooManySymbols = errors.New("more than 2^31 symbols")
)

// tableNames says where the names of a table being built are kept.
type tableNames int

const (
	// copyNames copies the chosen names into an arena of the table's own: the names
	// given to the builder are a transient buffer.
	copyNames tableNames = iota
	// keepNames makes the table refer to the given names.
	keepNames
)

// buildSymbolTable merges aliases, gives unsized symbols the range up to the next symbol
// (bounded by their section and by maxGap when non-zero) and indexes the names, which are
// at each symbol's nameOff in names. With keepNames, names stay where they are and the
// name of a merged alias is chosen when first asked for (see name): most symbols are never
// looked up, and reading the names of every alias of a big C++ library costs more than
// indexing it.
func buildSymbolTable(raw []rawSymbol, names nameSource, maxGap uint64, mode tableNames) (symbolTable, error) {
	if len(raw) > math.MaxInt32 {
		return symbolTable{}, errTooManySymbols
	}
	order := addressOrder(raw)
	t := symbolTable{names: names}
	var arena []byte
	if mode == copyNames {
		size := 0
		for i := range raw {
			n, _ := names.name(raw[i].nameOff)
			size += len(n) + 1
		}
		arena = make([]byte, 0, min(size, math.MaxUint32))
	}
	t.syms = make([]symEntry, 0, len(raw))
	var aliasNames []string
	run := make([]rawSymbol, 0, 8)
	for i := 0; i < len(order); {
		first := &raw[order[i]]
		run = append(run[:0], *first)
		j := i + 1
		for ; j < len(order) && raw[order[j]].addr == first.addr; j++ {
			run = append(run, raw[order[j]])
		}
		best := run[0]
		if len(run) > 1 && mode == copyNames {
			best = bestAlias(run, names, &aliasNames)
		}
		for k := range run {
			best.size = max(best.size, run[k].size)
		}
		next := uint64(0)
		if j < len(order) {
			next = raw[order[j]].addr
		}
		i = j
		size := symbolSize(&best, next, maxGap)
		if size == 0 {
			continue
		}
		e := symEntry{addr: best.addr, size: size, nameOff: best.nameOff}
		if mode == copyNames {
			n, _ := names.name(best.nameOff)
			if len(arena)+len(n)+1 > math.MaxUint32 {
				return symbolTable{}, errArenaFull
			}
			e.nameOff = uint32(len(arena))
			arena = append(append(arena, n...), 0)
		} else if len(run) > 1 {
			if t.aliases == nil {
				t.aliases = make(map[int32][]rawSymbol)
			}
			t.aliases[int32(len(t.syms))] = slices.Clone(run)
		}
		t.syms = append(t.syms, e)
	}
	if mode == copyNames {
		t.names = arenaNames(bytesString(arena)) // never written again
	}
	t.syms = slices.Clip(t.syms)
	return t, nil
}

// addressOrder returns the indices of raw in address order. Addresses and indices are
// packed into one word where they fit, as in all real files, so that the sort compares
// integers rather than calling a function per comparison.
func addressOrder(raw []rawSymbol) []int32 {
	order := make([]int32, len(raw))
	shift := uint(bits.Len(uint(len(raw))))
	keys := make([]uint64, len(raw))
	for i := range raw {
		if raw[i].addr>>(64-shift) != 0 {
			slices.SortStableFunc(raw, func(a, b rawSymbol) int { return cmp.Compare(a.addr, b.addr) })
			for i := range order {
				order[i] = int32(i)
			}
			return order
		}
		keys[i] = raw[i].addr<<shift | uint64(i)
	}
	slices.Sort(keys)
	for i, k := range keys {
		order[i] = int32(k & (1<<shift - 1))
	}
	return order
}

// bestAlias returns the preferred one of symbols at the same address (see better),
// reading each name once; buf is scratch space for the names.
func bestAlias(run []rawSymbol, names nameSource, buf *[]string) rawSymbol {
	if len(run) == 1 {
		return run[0]
	}
	ns := (*buf)[:0]
	for i := range run {
		n, _ := names.name(run[i].nameOff)
		ns = append(ns, n)
	}
	*buf = ns
	best := 0
	for i := 1; i < len(run); i++ {
		if betterNamed(&run[i], &run[best], ns[i], ns[best]) {
			best = i
		}
	}
	return run[best]
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

// cString returns the NUL-terminated string at off in strs; ok is false if off is out of
// range or no NUL follows within maxSymbolName bytes.
func cString(strs string, off uint32) (string, bool) {
	if uint64(off) >= uint64(len(strs)) {
		return "", false
	}
	s := strs[off:]
	if len(s) > maxSymbolName {
		s = s[:maxSymbolName]
	}
	if i := strings.IndexByte(s, 0); i >= 0 {
		return s[:i], true
	}
	return "", false
}

// bytesString views b as a string without copying. The caller must not modify b while
// the string is in use.
func bytesString(b []byte) string {
	return unsafe.String(unsafe.SliceData(b), len(b))
}
