package python

import (
	"encoding/binary"
	"fmt"
	"time"
	"unicode/utf8"
	"unique"

	"github.com/cgscope/cgscope/interp"
	"github.com/cgscope/cgscope/symbolizer"
)

// Bounds of what is read of one code object: longer names and files are
// cut, longer line tables read in part (lines past the part are unknown).
const (
	maxNameBytes  = 512
	maxFileBytes  = 1024
	maxTableBytes = 16 << 10
)

// recheckAfter is how long a code object's names are trusted before its
// address is checked to still hold it (a freed code object's address can
// be reused: exec'd or compiled code, unloaded modules).
const recheckAfter = 30 * time.Second

// BPF word fields (PY_WORD_* of bpf/interp.h).
const (
	wordAddrMask   = 1<<47 - 1
	wordLastiShift = 47
	wordLastiMax   = 0xffff
	wordEntry      = 1 << 63
)

// process is the CPython interpreter of one process image.
type process struct {
	lay     *layout
	state   *interp.State
	version string
	mem     *interp.Memory
	cache   *interp.Cache
	owner   uint64
	// Runtime addresses of _PyRuntime and of the types a read object is
	// checked against.
	runtimeAddr                  uint64
	codeType, strType, bytesType uint64
	// The object the interpreter loop is in, and the loop's object
	// addresses (hot and cold parts).
	path, buildID string
	loops         [][2]uint64
}

func newProcess(t *interp.Target, lay *layout, bin *objectFacts, bias uint64, st *interp.State, version string) *process {
	p := &process{
		lay: lay, state: st, version: version, mem: t.Mem, cache: t.Cache, owner: t.Owner,
		runtimeAddr: bin.runtime + bias, codeType: bin.codeType + bias, strType: bin.strType + bias, bytesType: bin.bytesType + bias,
		path: t.Candidate.Path, buildID: t.Candidate.BuildID,
		loops: [][2]uint64{{bin.evalStart, bin.evalEnd}},
	}
	if bin.coldStart != 0 {
		p.loops = append(p.loops, [2]uint64{bin.coldStart, bin.coldEnd})
	}
	return p
}

func (p *process) State() *interp.State { return p.state }
func (p *process) Version() string      { return p.version }

// IsLoop reports whether f is in _PyEval_EvalFrameDefault (or its cold
// part) of the interpreter's object.
func (p *process) IsLoop(f *symbolizer.Frame, leaf bool) bool {
	m := f.Mapping
	if m == nil || f.Kernel || f.Interpreter != "" {
		return false
	}
	if p.buildID != "" && m.BuildID != "" {
		if m.BuildID != p.buildID {
			return false
		}
	} else if m.Path != p.path {
		return false
	}
	a := f.ObjAddress
	if !leaf {
		a-- // a return address follows its call
	}
	for _, r := range p.loops {
		if a >= r[0] && a < r[1] {
			return true
		}
	}
	return false
}

// code is what a code object is called, cached by its address.
type code struct {
	ok             bool // it was read; else its frames stay unnamed
	function, file string
	firstLine      int32
	lines          []byte // co_linetable, or its first maxTableBytes
	// ident are the code object's type and name, file and table
	// pointers, and checked when they were last read: another object at
	// the address has others.
	ident   [4]uint64
	checked time.Time
}

// Frames decodes the words of the CPython walker.
func (p *process) Frames(words []uint64) []interp.Frame {
	out := make([]interp.Frame, len(words))
	now := time.Now()
	for i, w := range words {
		f := &out[i]
		f.Interpreter = "cpython"
		f.Entry = w&wordEntry != 0
		c := p.code(w&wordAddrMask, now)
		if !c.ok {
			continue
		}
		f.Function, f.File = c.function, c.file
		switch v := w >> wordLastiShift & wordLastiMax; v {
		case 0: // not started: where the function is defined
			f.Line = int(c.firstLine)
		case wordLastiMax: // an instruction further than the word holds
		default:
			f.Line = lineOf(c.lines, c.firstLine, int64(v-1)*codeUnitBytes)
		}
	}
	return out
}

// code returns what the code object at addr is called, reading it on first
// use (and again once recheckAfter has passed and it has changed).
func (p *process) code(addr uint64, now time.Time) *code {
	if addr == 0 {
		return &code{}
	}
	if v, ok := p.cache.Get(p.owner, addr); ok {
		c := v.(*code)
		if now.Sub(c.checked) < recheckAfter {
			return c
		}
		if hdr, err := p.header(addr); err == nil && p.identOf(hdr) == c.ident {
			c.checked = now
			return c
		}
	}
	c, size := p.readCode(addr, now)
	p.cache.Put(p.owner, addr, c, size)
	return c
}

// header reads a code object's fixed part.
func (p *process) header(addr uint64) ([]byte, error) {
	hdr := make([]byte, p.lay.codeAdaptive)
	return hdr, p.mem.Read(addr, hdr)
}

func (p *process) identOf(hdr []byte) [4]uint64 {
	return [4]uint64{interp.Word(hdr, objectType), interp.Word(hdr, int(p.lay.codeQualname)),
		interp.Word(hdr, int(p.lay.codeFilename)), interp.Word(hdr, int(p.lay.codeLinetable))}
}

// readCode reads the code object at addr: its qualified name, file, first
// line and line table. It returns the entry and its size in bytes.
func (p *process) readCode(addr uint64, now time.Time) (*code, int) {
	c := &code{checked: now}
	hdr, err := p.header(addr)
	if err != nil {
		return c, 0
	}
	c.ident = p.identOf(hdr)
	if c.ident[0] != p.codeType {
		return c, 0 // not a code object (any more)
	}
	qualname, err1 := p.str(c.ident[1], maxNameBytes)
	file, err2 := p.str(c.ident[2], maxFileBytes)
	if err1 != nil || err2 != nil {
		return c, 0
	}
	// A table that cannot be read leaves lines unknown, not the name.
	c.lines, _ = p.bytes(c.ident[3], maxTableBytes)
	c.firstLine = interp.Int32(hdr, int(p.lay.codeFirstLine))
	c.file = unique.Make(file).Value()
	c.function = qualname
	if m := moduleOf(file); m != "" {
		c.function = m + "." + qualname
	}
	c.function = unique.Make(c.function).Value()
	c.ok = true
	return c, len(c.function) + len(c.file) + len(c.lines)
}

// str reads a str object of at most max bytes of UTF-8 (longer ones are
// cut), from its PyASCIIObject or PyCompactUnicodeObject header
// (Include/cpython/unicodeobject.h).
func (p *process) str(addr uint64, max int) (string, error) {
	hdr := make([]byte, p.lay.compactSize+8)
	if err := p.mem.Read(addr, hdr); err != nil {
		return "", err
	}
	if interp.Word(hdr, objectType) != p.strType {
		return "", fmt.Errorf("object at %#x is not a str", addr)
	}
	n := interp.Word(hdr, unicodeLength)
	state := binary.NativeEndian.Uint32(hdr[unicodeState:])
	kind := uint64(state >> 2 & 7)
	compact, ascii := state&0x20 != 0, state&0x40 != 0
	data := addr + uint64(p.lay.asciiSize)
	switch {
	case compact && ascii:
	case compact:
		data = addr + uint64(p.lay.compactSize)
	default: // a legacy string: its characters elsewhere
		data = interp.Word(hdr, int(p.lay.compactSize))
	}
	if kind != 1 && kind != 2 && kind != 4 {
		return "", fmt.Errorf("str at %#x of kind %d", addr, kind)
	}
	// max bytes of UTF-8 take at most max characters.
	chars := min(n, uint64(max))
	raw := make([]byte, chars*kind)
	if err := p.mem.Read(data, raw); err != nil {
		return "", err
	}
	if kind == 1 && ascii {
		return string(raw), nil
	}
	out := make([]byte, 0, len(raw))
	for i := uint64(0); i < chars && len(out) < max; i++ {
		var r rune
		switch kind {
		case 1:
			r = rune(raw[i])
		case 2:
			r = rune(binary.NativeEndian.Uint16(raw[2*i:]))
		case 4:
			r = rune(binary.NativeEndian.Uint32(raw[4*i:]))
		}
		out = utf8.AppendRune(out, r)
	}
	return string(out), nil
}

// bytes reads at most max bytes of a bytes object (PyBytesObject).
func (p *process) bytes(addr uint64, max int) ([]byte, error) {
	hdr := make([]byte, bytesData)
	if err := p.mem.Read(addr, hdr); err != nil {
		return nil, err
	}
	if interp.Word(hdr, objectType) != p.bytesType {
		return nil, fmt.Errorf("object at %#x is not bytes", addr)
	}
	b := make([]byte, min(interp.Word(hdr, varObjectSize), uint64(max)))
	if err := p.mem.Read(addr+bytesData, b); err != nil {
		return nil, err
	}
	return b, nil
}
