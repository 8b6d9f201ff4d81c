package php

import (
	"encoding/binary"
	"fmt"
	"time"
	"unique"

	"github.com/cgscope/cgscope/interp"
	"github.com/cgscope/cgscope/symbolizer"
)

// Bounds of what is read of one function: longer names and files are cut.
const (
	maxNameBytes = 256
	maxFileBytes = 1024
)

// recheckAfter is how long a function's names are trusted before its
// address is checked to still hold it: without opcache, FPM and mod_php
// free a request's functions at its end and reuse their memory.
const recheckAfter = 10 * time.Second

// BPF word fields (PHP_WORD_* of bpf/interp.h).
const (
	wordAddrMask  = 1<<47 - 1
	wordLineShift = 47
	wordLineMax   = 0xffff
	wordEntry     = 1 << 63
)

// process is the engine of one process image.
type process struct {
	lay     *layout
	state   *interp.State
	version string
	mem     *interp.Memory
	cache   *interp.Cache
	owner   uint64
	// execute_ex, in the object it is in.
	loop interp.Loop
}

func newProcess(t *interp.Target, lay *layout, b *objectFacts, bias uint64, version string) *process {
	p := &process{
		lay: lay, version: version, mem: t.Mem, cache: t.Cache, owner: t.Owner,
		loop: interp.Loop{Path: t.Candidate.Path, BuildID: t.Candidate.BuildID, Ranges: [][2]uint64{{b.execStart, b.execEnd}}},
	}
	if b.coldStart != 0 {
		p.loop.Ranges = append(p.loop.Ranges, [2]uint64{b.coldStart, b.coldEnd})
	}
	return p
}

func (p *process) State() *interp.State { return p.state }
func (p *process) Version() string      { return p.version }

// IsLoop reports whether f is in execute_ex (or its cold part) of the
// engine's object: each of its activations runs the PHP frames from one
// its C caller entered (ZEND_CALL_TOP) to the innermost.
func (p *process) IsLoop(f *symbolizer.Frame, leaf bool) bool { return p.loop.Contains(f, leaf) }

// function is what a zend_function is called, cached by its address.
type function struct {
	ok        bool // it was read; else its frames stay unnamed
	typ       uint8
	name      string // Class::function, function, or "" (a file's code)
	file      string
	opcodes   uint64
	last      uint32
	lineStart uint32
	// ident are the function's name, scope and file pointers, and
	// checked when they were last read: another function at the address
	// has others.
	ident   [3]uint64
	checked time.Time
}

// Frames decodes the words of the PHP walker.
func (p *process) Frames(words []uint64) []interp.Frame {
	out := make([]interp.Frame, len(words))
	now := time.Now()
	for i, w := range words {
		f := &out[i]
		f.Interpreter = "php"
		f.Entry = w&wordEntry != 0
		fn := p.function(w&wordAddrMask, now)
		if !fn.ok {
			continue
		}
		f.Function, f.File = fn.name, fn.file
		if f.Function == "" {
			// A file's code, as PHP's backtraces call it: the script's
			// (entered from C), an eval()'s, or an included file's.
			switch {
			case fn.typ == evalCode:
				f.Function = "{eval}"
			case f.Entry:
				f.Function = "{main}"
			default:
				f.Function = "{include}"
			}
		}
		if fn.typ != internalFunction {
			if l := w >> wordLineShift & wordLineMax; l != wordLineMax {
				f.Line = int(l)
			}
		}
	}
	return out
}

// function returns what the zend_function at addr is called, reading it
// on first use (and again once recheckAfter has passed and it changed).
func (p *process) function(addr uint64, now time.Time) *function {
	if addr == 0 {
		return &function{}
	}
	if v, ok := p.cache.Get(p.owner, addr); ok {
		c := v.(*function)
		if now.Sub(c.checked) < recheckAfter {
			return c
		}
		if hdr, err := p.header(addr); err == nil && p.identOf(hdr) == c.ident {
			c.checked = now
			return c
		}
	}
	c, err := p.readFunction(addr)
	if err != nil {
		c = &function{}
	}
	c.checked = now
	p.cache.Put(p.owner, addr, c, len(c.name)+len(c.file))
	return c
}

// header reads a zend_function's fields up to its op_array's file and
// first line.
func (p *process) header(addr uint64) ([]byte, error) {
	hdr := make([]byte, p.lay.opaLineStart+4)
	return hdr, p.mem.Read(addr, hdr)
}

func (p *process) identOf(hdr []byte) [3]uint64 {
	id := [3]uint64{interp.Word(hdr, int(p.lay.fnName)), interp.Word(hdr, int(p.lay.fnScope))}
	if hdr[p.lay.fnType] != internalFunction {
		id[2] = interp.Word(hdr, int(p.lay.opaFilename))
	}
	return id
}

// readFunction reads the zend_function at addr: its type, names, file and
// opcodes.
func (p *process) readFunction(addr uint64) (*function, error) {
	hdr, err := p.header(addr)
	if err != nil {
		return nil, err
	}
	l := p.lay
	f := &function{typ: hdr[l.fnType], ident: p.identOf(hdr)}
	if f.typ != internalFunction && f.typ != userFunction && f.typ != evalCode {
		return nil, fmt.Errorf("function at %#x of type %d", addr, f.typ)
	}
	var name, class string
	if f.ident[0] != 0 {
		if name, err = p.str(f.ident[0], maxNameBytes); err != nil {
			return nil, fmt.Errorf("name of function %#x: %w", addr, err)
		}
	}
	if f.ident[1] != 0 {
		ce, err := p.mem.U64(f.ident[1] + uint64(l.ceName))
		if err == nil {
			class, err = p.str(ce, maxNameBytes)
		}
		if err != nil {
			return nil, fmt.Errorf("class of function %#x: %w", addr, err)
		}
	}
	if class != "" && name != "" {
		name = class + "::" + name
	}
	f.name = unique.Make(name).Value()
	if f.typ != internalFunction {
		file, err := p.str(f.ident[2], maxFileBytes)
		if err != nil {
			return nil, fmt.Errorf("file of function %#x: %w", addr, err)
		}
		f.file = unique.Make(file).Value()
		f.last = binary.NativeEndian.Uint32(hdr[l.opaLast:])
		f.opcodes = interp.Word(hdr, int(l.opaOpcodes))
		f.lineStart = binary.NativeEndian.Uint32(hdr[l.opaLineStart:])
	}
	f.ok = true
	return f, nil
}

// str reads a zend_string of at most max bytes (longer ones are cut),
// checking it is one.
func (p *process) str(addr uint64, max int) (string, error) {
	if addr == 0 {
		return "", fmt.Errorf("no string")
	}
	l := p.lay
	hdr := make([]byte, l.strVal)
	if err := p.mem.Read(addr, hdr); err != nil {
		return "", err
	}
	if t := binary.NativeEndian.Uint32(hdr[l.strTypeInfo:]) & 0xf; t != isString {
		return "", fmt.Errorf("zend_string at %#x of type %d", addr, t)
	}
	b := make([]byte, min(interp.Word(hdr, int(l.strLen)), uint64(max)))
	if err := p.mem.Read(addr+uint64(l.strVal), b); err != nil {
		return "", err
	}
	return string(b), nil
}
