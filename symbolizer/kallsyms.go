package symbolizer

import (
	"errors"
	"fmt"
	"io"
	"strings"
)

// ErrKallsymsRestricted means /proc/kallsyms lists only zero addresses, which the kernel
// does for readers without CAP_SYSLOG or when kernel.kptr_restrict forbids it.
var ErrKallsymsRestricted = errors.New("/proc/kallsyms addresses are hidden (kernel.kptr_restrict or missing CAP_SYSLOG)")

// kernelMaxSymbolSize bounds the range of a kernel symbol, whose size kallsyms does not
// give: the last symbol before a gap (say, between modules) must not claim the gap.
const kernelMaxSymbolSize = 1 << 20

// parseKallsyms reads the text symbols ("address type name [module]") of /proc/kallsyms.
// Module names are dropped; each symbol covers up to the next one.
func parseKallsyms(r io.Reader) (symbolTable, error) {
	// One string for the whole file: symbol names are substrings of it until the table
	// builder copies them into its arena, instead of 100k small allocations.
	data, err := io.ReadAll(r)
	if err != nil {
		return symbolTable{}, fmt.Errorf("reading kallsyms: %w", err)
	}
	content := string(data)
	raw := make([]rawSymbol, 0, strings.Count(content, "\n")+1)
	textSymbols, sawAddress := 0, false
	for len(content) > 0 {
		var line string
		line, content, _ = strings.Cut(content, "\n")
		s, ok := parseKallsymsLine(line)
		if !ok {
			continue
		}
		textSymbols++
		if s.addr != 0 {
			sawAddress = true
			raw = append(raw, s)
		}
	}
	if textSymbols == 0 {
		return symbolTable{}, errors.New("kallsyms lists no text symbols")
	}
	if !sawAddress {
		return symbolTable{}, ErrKallsymsRestricted
	}
	return buildSymbolTable(raw, kernelMaxSymbolSize)
}

// parseKallsymsLine accepts text symbols: t/T (local/global) and w/W (weak).
func parseKallsymsLine(line string) (rawSymbol, bool) {
	line = strings.TrimRight(line, "\r")
	addrField, rest, ok := strings.Cut(line, " ")
	if !ok || len(rest) < 3 || rest[1] != ' ' {
		return rawSymbol{}, false
	}
	var bind uint8
	switch rest[0] {
	case 'T':
		bind = 2
	case 'W', 'w':
		bind = 1
	case 't':
		bind = 0
	default:
		return rawSymbol{}, false
	}
	name := rest[2:]
	if i := strings.IndexAny(name, "\t "); i >= 0 {
		name = name[:i] // drop "\t[module]"
	}
	addr, err := parseHexString(addrField)
	if err != nil || len(name) == 0 {
		return rawSymbol{}, false
	}
	return rawSymbol{addr: addr, name: name, bind: bind}, true
}
