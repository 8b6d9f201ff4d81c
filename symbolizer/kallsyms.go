package symbolizer

import (
	"bufio"
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
)

// ErrKallsymsRestricted means /proc/kallsyms lists only zero addresses, which the kernel
// does for readers without CAP_SYSLOG or when kernel.kptr_restrict forbids it.
var ErrKallsymsRestricted = errors.New("/proc/kallsyms addresses are hidden (kernel.kptr_restrict or missing CAP_SYSLOG)")

// kernelMaxSymbolSize bounds the range of a kernel symbol, whose size kallsyms does not
// give: the last symbol before a gap (say, between modules) must not claim the gap.
const kernelMaxSymbolSize = 1 << 20

// parseKallsyms reads the text symbols ("address type name [module]") of /proc/kallsyms.
// Module names are dropped; each symbol covers up to the next one. The file (several MB)
// is streamed: only the text symbols are kept, as table entries from the start (the
// binding stashed in the size until sizes are known) and names in chunks that are kept as
// they are, so that the only copy is that of the entries into one slice of the final size.
func parseKallsyms(r io.Reader) (symbolTable, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var names chunkedNamesBuilder
	var chunks [][]symEntry
	n := 0
	textSymbols, sawAddress := 0, false
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// No symbol line is this long: skip it whole.
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
			line = nil
		}
		if len(line) > 0 {
			if addr, name, bind, ok := parseKallsymsLine(line); ok {
				textSymbols++
				if addr != 0 { // all 0: hidden, no table
					if off, ok := names.add(name); ok {
						sawAddress = true
						if len(chunks) == 0 || len(chunks[len(chunks)-1]) == cap(chunks[len(chunks)-1]) {
							chunks = append(chunks, make([]symEntry, 0, 8192))
						}
						last := &chunks[len(chunks)-1]
						*last = append(*last, symEntry{addr: addr, size: uint32(bind), nameOff: off})
						n++
					}
				}
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return symbolTable{}, fmt.Errorf("reading kallsyms: %w", err)
		}
	}
	if textSymbols == 0 {
		return symbolTable{}, errors.New("kallsyms lists no text symbols")
	}
	if !sawAddress {
		return symbolTable{}, ErrKallsymsRestricted
	}
	syms := make([]symEntry, 0, n)
	for i := range chunks {
		syms = append(syms, chunks[i]...)
		chunks[i] = nil
	}
	table := names.done()
	return symbolTable{syms: sizeKernelSymbols(syms, table), names: table}, nil
}

// chunkedNames are NUL-terminated names in fixed-size chunks, none straddling two: the
// chunk is the high bits of a name's offset. Unlike one arena, they grow without copying.
type chunkedNames []string

const (
	nameChunkBits = 18
	nameChunkSize = 1 << nameChunkBits
)

func (c chunkedNames) name(off uint32) (string, bool) {
	i := int(off >> nameChunkBits)
	if i >= len(c) {
		return "", false
	}
	return cString(c[i], off&(nameChunkSize-1))
}

type chunkedNamesBuilder struct {
	full chunkedNames // chunks filled
	cur  []byte
}

// add appends a name and returns its offset; ok is false if the name is too long, or the
// names too many.
func (b *chunkedNamesBuilder) add(name []byte) (off uint32, ok bool) {
	if len(name) >= nameChunkSize {
		return 0, false
	}
	if len(b.cur)+len(name)+1 > cap(b.cur) {
		if b.cur != nil {
			b.full = append(b.full, bytesString(b.cur))
		}
		if uint64(len(b.full)+1) > math.MaxUint32>>nameChunkBits {
			return 0, false
		}
		b.cur = make([]byte, 0, nameChunkSize)
	}
	off = uint32(len(b.full))<<nameChunkBits | uint32(len(b.cur))
	b.cur = append(append(b.cur, name...), 0)
	return off, true
}

// done returns the names; the last chunk is trimmed to what it holds.
func (b *chunkedNamesBuilder) done() chunkedNames {
	if b.cur != nil {
		b.full = append(b.full, string(b.cur))
		b.cur = nil
	}
	return b.full
}

// sizeKernelSymbols sorts the entries of kallsyms, whose size field holds the binding,
// keeps the preferred name among aliases and gives each symbol the range up to the next,
// bounded by kernelMaxSymbolSize. It works in place.
func sizeKernelSymbols(syms []symEntry, names nameSource) []symEntry {
	raw := func(e *symEntry) rawSymbol { return rawSymbol{addr: e.addr, nameOff: e.nameOff, bind: uint8(e.size)} }
	slices.SortFunc(syms, func(a, b symEntry) int {
		if c := cmp.Compare(a.addr, b.addr); c != 0 {
			return c
		}
		ra, rb := raw(&a), raw(&b)
		if better(&ra, &rb, names) {
			return -1
		}
		if better(&rb, &ra, names) {
			return 1
		}
		return 0
	})
	out := syms[:0]
	for i := 0; i < len(syms); {
		best := raw(&syms[i])
		j := i + 1
		for j < len(syms) && syms[j].addr == best.addr {
			j++
		}
		next := uint64(0)
		if j < len(syms) {
			next = syms[j].addr
		}
		i = j
		if size := symbolSize(&best, next, kernelMaxSymbolSize); size > 0 {
			out = append(out, symEntry{addr: best.addr, size: size, nameOff: best.nameOff})
		}
	}
	if cap(out)-len(out) > len(out)/8 {
		return slices.Clone(out) // aliases dropped
	}
	return out
}

// parseKallsymsLine accepts text symbols: t/T (local/global) and w/W (weak). The name
// aliases line.
func parseKallsymsLine(line []byte) (addr uint64, name []byte, bind uint8, ok bool) {
	line = bytes.TrimRight(line, "\r\n")
	addrField, rest, ok := bytes.Cut(line, []byte(" "))
	if !ok || len(rest) < 3 || rest[1] != ' ' {
		return 0, nil, 0, false
	}
	switch rest[0] {
	case 'T':
		bind = 2
	case 'W', 'w':
		bind = 1
	case 't':
		bind = 0
	default:
		return 0, nil, 0, false
	}
	name = rest[2:]
	if i := bytes.IndexAny(name, "\t "); i >= 0 {
		name = name[:i] // drop "\t[module]"
	}
	addr, err := parseHex(addrField)
	if err != nil || len(name) == 0 || bytes.IndexByte(name, 0) >= 0 {
		return 0, nil, 0, false
	}
	return addr, name, bind, true
}
