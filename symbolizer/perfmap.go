package symbolizer

import (
	"bufio"
	"bytes"
	"io"
	"math"
	"os"
	"sync"
	"time"
)

const (
	// perfMapRecheck bounds how often a miss makes us stat the file again: JITs append
	// to it continuously, but profiles must not turn into a stat per frame.
	perfMapRecheck = time.Second
	// maxPerfMapBytes bounds what is read of a runaway map file.
	maxPerfMapBytes = 256 << 20
)

// perfMap is the JIT symbol table of one process, from the perf-PID.map file that JITs
// (V8, the JVM with an agent, LuaJIT, .NET, ...) write for perf(1). Its addresses are
// runtime addresses.
type perfMap struct {
	path string

	mu      sync.Mutex
	checked time.Time // last stat of path; zero before the first load
	size    int64
	mtime   time.Time
	table   symbolTable
}

// lookup names addr, reloading the file first if the address is unknown, the file has
// changed and it was not checked within perfMapRecheck. If the file cannot be read any more
// (the process exited), the last table is kept. onBadLines receives the count of unparsable
// lines of each load.
func (p *perfMap) lookup(addr uint64, onBadLines func(int)) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if i := p.table.lookup(addr); i >= 0 {
		return p.table.name(i)
	}
	if !p.checked.IsZero() && time.Since(p.checked) < perfMapRecheck {
		return ""
	}
	p.checked = time.Now()
	if !p.reloadIfChanged(onBadLines) {
		return ""
	}
	if i := p.table.lookup(addr); i >= 0 {
		return p.table.name(i)
	}
	return ""
}

// reloadIfChanged re-reads the file if its size or modification time changed, and
// reports whether it did.
func (p *perfMap) reloadIfChanged(onBadLines func(int)) bool {
	fi, err := os.Stat(p.path)
	if err != nil || (fi.Size() == p.size && fi.ModTime().Equal(p.mtime)) {
		return false
	}
	f, err := os.Open(p.path)
	if err != nil {
		return false
	}
	defer f.Close()
	table, bad := parsePerfMap(io.LimitReader(f, maxPerfMapBytes))
	if bad > 0 && onBadLines != nil {
		onBadLines(bad)
	}
	p.table, p.size, p.mtime = table, fi.Size(), fi.ModTime()
	return true
}

// parsePerfMap parses "START SIZE name" lines (hex numbers, optional 0x; the name may hold
// spaces). When code is recompiled at the same address the later line wins. It returns the
// table and the number of lines it skipped as malformed.
func parsePerfMap(r io.Reader) (symbolTable, int) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	latest := make(map[uint64]int) // start address -> index in raw
	var raw []rawSymbol
	var arena []byte // names, NUL-terminated; the table builder keeps those it uses
	bad := 0
	for sc.Scan() {
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		s, name, ok := parsePerfMapLine(line)
		if !ok || bytes.IndexByte(name, 0) >= 0 || uint64(len(arena)+len(name)) >= math.MaxUint32 {
			bad++
			continue
		}
		s.nameOff = uint32(len(arena))
		arena = append(append(arena, name...), 0)
		if i, dup := latest[s.addr]; dup {
			raw[i] = s
			continue
		}
		latest[s.addr] = len(raw)
		raw = append(raw, s)
	}
	if sc.Err() != nil {
		bad++ // an over-long line ends the scan; keep what was read
	}
	table, err := buildSymbolTable(raw, arenaNames(bytesString(arena)), 0, copyNames)
	if err != nil {
		return symbolTable{}, bad
	}
	return table, bad
}

// parsePerfMapLine parses one line; the name aliases line.
func parsePerfMapLine(line []byte) (rawSymbol, []byte, bool) {
	startField, rest, ok := bytes.Cut(line, []byte(" "))
	if !ok {
		return rawSymbol{}, nil, false
	}
	sizeField, name, ok := bytes.Cut(rest, []byte(" "))
	if !ok {
		return rawSymbol{}, nil, false
	}
	start, err1 := parseHex(trim0x(startField))
	size, err2 := parseHex(trim0x(sizeField))
	name = bytes.TrimRight(name, "\r")
	if err1 != nil || err2 != nil || size == 0 || start+size < start || len(name) == 0 {
		return rawSymbol{}, nil, false
	}
	return rawSymbol{addr: start, size: size}, name, true
}

func trim0x(b []byte) []byte {
	if len(b) > 2 && b[0] == '0' && (b[1] == 'x' || b[1] == 'X') {
		return b[2:]
	}
	return b
}
