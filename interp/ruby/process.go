package ruby

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"strings"
	"time"
	"unique"

	"github.com/cgscope/cgscope/interp"
	"github.com/cgscope/cgscope/symbolizer"
)

// Bounds of what is read of the process: longer names and files are cut,
// larger tables are not scanned, and at most so many instructions' lines
// are remembered per iseq.
const (
	maxNameBytes   = 512
	maxFileBytes   = 1024
	maxIVars       = 64
	maxLinesCached = 256
	maxIDs         = 1 << 20
)

// recheckAfter is how long an iseq's names are trusted before its address
// is checked to still hold it (GC.compact moves iseqs; a freed eval'd
// iseq's address can be reused).
const recheckAfter = 30 * time.Second

// BPF word fields (RB_WORD_* of bpf/interp.h).
const (
	wordAddrMask = 1<<47 - 1
	wordTagShift = 61
	tagISeq      = 1
	tagCFunc     = 2
	wordSameMe   = 1 << 60
	wordEntry    = 1 << 63
)

// Cache keys: an address, tagged with what is cached of it.
const (
	keyISeq  = 0
	keyQual  = 1 << 60 // a method entry's "Class#" or "Class."
	keyCFunc = 2 << 60 // a C method's name
	keyID    = 3 << 60 // an ID's name
	keyClass = 4 << 60 // a class's path and separator
)

// process is the CRuby interpreter of one process image.
type process struct {
	lay     *layout
	state   *interp.State
	version string
	mem     *interp.Memory
	cache   *interp.Cache
	owner   uint64
	// symbols is ruby_global_symbols in the process, 0 if it was not
	// found or failed its check: then C methods and classes are unnamed.
	symbols uint64
	// The object the interpreter loop is in, and vm_exec_core's extent in
	// its addresses.
	path, buildID      string
	loopStart, loopEnd uint64
	// idClasspath and idAttached are the IDs of __classpath__ and
	// __attached__, once an ivar table showed them.
	idClasspath, idAttached uint64
}

func newProcess(t *interp.Target, lay *layout, bin *objectFacts, bias uint64, st *interp.State, version string) *process {
	p := &process{
		lay: lay, state: st, version: version, mem: t.Mem, cache: t.Cache, owner: t.Owner,
		path: t.Candidate.Path, buildID: t.Candidate.BuildID,
		loopStart: bin.loopStart, loopEnd: bin.loopEnd,
	}
	if bin.globalSymbols != 0 {
		p.symbols = bin.globalSymbols + bias
		if !p.checkSymbols() {
			p.symbols = 0
		}
	}
	return p
}

// checkSymbols checks ruby_global_symbols as found in the code: a
// plausible last ID and an array of ID chunks.
func (p *process) checkSymbols() bool {
	last, err := p.mem.U32(p.symbols + p.lay.symbolsLastID)
	if err != nil || last == 0 || last > maxIDs {
		return false
	}
	ids, err := p.mem.U64(p.symbols + p.lay.symbolsIDs)
	if err != nil {
		return false
	}
	flags, err := p.mem.U64(ids)
	return err == nil && flags&tMask == tArray
}

func (p *process) State() *interp.State { return p.state }
func (p *process) Version() string      { return p.version }

// IsLoop reports whether f is in vm_exec_core of the interpreter's object.
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
	return a >= p.loopStart && a < p.loopEnd
}

// Frames decodes the words of the Ruby walker.
func (p *process) Frames(words []uint64) []interp.Frame {
	out := make([]interp.Frame, 0, len(words))
	now := time.Now()
	lastMe := uint64(0)
	for i := 0; i < len(words); {
		w := words[i]
		f := interp.Frame{Entry: w&wordEntry != 0}
		f.Interpreter = "ruby"
		addr := w & wordAddrMask
		switch w >> wordTagShift & 3 {
		case tagISeq:
			n := 3
			if w&wordSameMe != 0 {
				n = 2
			}
			if i+n > len(words) {
				i = len(words)
				break
			}
			pc, me := words[i+1], lastMe
			if n == 3 {
				me = words[i+2]
			}
			lastMe = me
			i += n
			is := p.iseq(addr, now)
			if !is.ok {
				break
			}
			f.Function, f.File = p.fullLabel(is, me), is.path
			f.Line = p.line(is, pc)
		case tagCFunc:
			i++
			f.Function = p.cfunc(addr)
		default:
			i++
		}
		out = append(out, f)
	}
	return out
}

// iseqInfo is what an iseq is called and where, cached by its address.
type iseqInfo struct {
	ok                bool
	label, base, path string
	// method: the iseq's local iseq is a method's, so its frames are
	// named with the method's class (from the method entry the walker
	// read).
	method                 bool
	firstLine              int
	encoded, size          uint64 // iseq_encoded, iseq_size (VALUEs)
	insns, insnsSize, succ uint64 // the line table and its index
	ident                  [3]uint64
	checked                time.Time
	lines                  map[uint64]int    // by instruction position
	names                  map[uint64]string // full labels by method entry
}

// iseq returns what the iseq at addr is called, reading it on first use
// (and again once recheckAfter has passed and it has changed).
func (p *process) iseq(addr uint64, now time.Time) *iseqInfo {
	if addr == 0 {
		return &iseqInfo{}
	}
	if v, ok := p.cache.Get(p.owner, keyISeq|addr); ok {
		is := v.(*iseqInfo)
		if now.Sub(is.checked) < recheckAfter {
			return is
		}
		if body, err := p.body(addr); err == nil && p.identOf(body) == is.ident {
			is.checked = now
			return is
		}
	}
	is, size := p.readISeq(addr, now)
	p.cache.Put(p.owner, keyISeq|addr, is, size)
	return is
}

// body reads an iseq's rb_iseq_constant_body, after checking the iseq is
// one (an imemo_iseq).
func (p *process) body(addr uint64) ([]byte, error) {
	var hdr [24]byte
	if err := p.mem.Read(addr, hdr[:]); err != nil {
		return nil, err
	}
	flags := interp.Word(hdr[:], 0)
	if flags&tMask != tIMemo || flags>>imemoShift&0xf != imemoISeq {
		return nil, fmt.Errorf("%#x is not an iseq", addr)
	}
	b := make([]byte, p.lay.bodyBytes)
	return b, p.mem.Read(interp.Word(hdr[:], int(p.lay.iseqBody)), b)
}

func (p *process) identOf(b []byte) [3]uint64 {
	l := p.lay
	return [3]uint64{interp.Word(b, int(l.bodyLabel)), interp.Word(b, int(l.bodyPath)), interp.Word(b, int(l.bodyEncoded))}
}

func (p *process) readISeq(addr uint64, now time.Time) (*iseqInfo, int) {
	is := &iseqInfo{checked: now}
	b, err := p.body(addr)
	if err != nil {
		return is, 0
	}
	l := p.lay
	is.ident = p.identOf(b)
	label, err1 := p.str(interp.Word(b, int(l.bodyLabel)), maxNameBytes)
	base, err2 := p.str(interp.Word(b, int(l.bodyBaseLabel)), maxNameBytes)
	path, err3 := p.pathOf(interp.Word(b, int(l.bodyPath)))
	if err1 != nil || err2 != nil || err3 != nil {
		return is, 0
	}
	is.label, is.base = unique.Make(label).Value(), unique.Make(base).Value()
	is.path = unique.Make(path).Value()
	is.firstLine = int(int64(interp.Word(b, int(l.bodyFirstLine))) >> 1) // a Fixnum
	is.size = uint64(binary.NativeEndian.Uint32(b[l.bodySize:]))
	is.encoded = interp.Word(b, int(l.bodyEncoded))
	is.insns = interp.Word(b, int(l.bodyInsnsInfo))
	is.insnsSize = uint64(binary.NativeEndian.Uint32(b[l.bodyInsnsSize:]))
	is.succ = interp.Word(b, int(l.bodySuccTable))
	if local := interp.Word(b, int(l.bodyLocal)); local != 0 {
		if lb, err := p.body(local); err == nil {
			is.method = binary.NativeEndian.Uint32(lb[l.bodyType:]) == iseqTypeMethod
		}
	}
	is.ok = true
	return is, len(is.label) + len(is.base) + len(is.path) + maxLinesCached*16
}

// fullLabel is the frame's name as rb_profile_frame_full_label gives it
// (vm_backtrace.c): the label with the method's class before the method's
// name, "block in Work#fid_outer".
func (p *process) fullLabel(is *iseqInfo, me uint64) string {
	if !is.method || me == 0 || !strings.HasSuffix(is.label, is.base) {
		return is.label
	}
	if name, ok := is.names[me]; ok {
		return name
	}
	name := is.label
	if q := p.qualifier(me); q != "" {
		name = unique.Make(is.label[:len(is.label)-len(is.base)] + q + is.base).Value()
	}
	if is.names == nil {
		is.names = map[uint64]string{}
	}
	if len(is.names) < 16 {
		is.names[me] = name
	}
	return name
}

// line is the line of the instruction before pc (pc is the next one), as
// calc_pos and rb_iseq_line_no compute it (vm_backtrace.c:37-77,
// iseq.c:1779-1893); the first line when pc is not in the iseq (a stale pc
// of YJIT's code).
func (p *process) line(is *iseqInfo, pc uint64) int {
	if pc < is.encoded || pc > is.encoded+8*is.size || is.insnsSize == 0 {
		return is.firstLine
	}
	n := (pc - is.encoded) / 8
	pos := uint64(0)
	if n > 0 {
		pos = n - 1
	}
	if l, ok := is.lines[pos]; ok {
		return l
	}
	idx := uint64(0)
	if is.insnsSize > 1 {
		r, err := p.succLookup(is.succ, pos)
		if err != nil || r == 0 || r > is.insnsSize {
			return is.firstLine
		}
		idx = r - 1
	}
	v, err := p.mem.U32(is.insns + idx*p.lay.insnInfoSize)
	if err != nil {
		return is.firstLine
	}
	line := int(int32(v))
	if is.lines == nil {
		is.lines = map[uint64]int{}
	}
	if len(is.lines) < maxLinesCached {
		is.lines[pos] = line
	}
	return line
}

// succLookup is succ_index_lookup (iseq.c:3730-3746): how many
// instructions up to x start a new line table entry.
func (p *process) succLookup(table, x uint64) (uint64, error) {
	if x < succImmediate {
		w, err := p.mem.U64(table + 8*(x/9))
		return w >> (7 * (x % 9)) & 0x7f, err
	}
	var b [succBlockBytes]byte
	if err := p.mem.Read(table+succPartAt+succBlockBytes*((x-succImmediate)/512), b[:]); err != nil {
		return 0, err
	}
	bit := (x - succImmediate) % 512
	sb := bit / 64
	small := uint64(0)
	if sb > 0 {
		small = interp.Word(b[:], 8) >> ((sb - 1) * 9) & 0x1ff
	}
	rank := uint64(binary.NativeEndian.Uint32(b[:4]))
	return rank + small + uint64(bits.OnesCount64(interp.Word(b[:], int(16+8*sb))<<(63-bit%64))), nil
}

// methodEntry returns the method entry v holds: a ment, or an svar
// holding one; 0 for anything else.
func (p *process) methodEntry(v uint64) uint64 {
	for range 2 {
		flags, err := p.mem.U64(v)
		if err != nil || flags&tMask != tIMemo {
			return 0
		}
		switch flags >> imemoShift & 0xf {
		case imemoMent:
			return v
		case imemoSvar:
			if v, err = p.mem.U64(v + svarMe); err != nil {
				return 0
			}
		default:
			return 0
		}
	}
	return 0
}

// qualifier is what goes before a method's name: its class's path and "#",
// or "." for a singleton method; "" when the class is anonymous or cannot
// be read.
func (p *process) qualifier(me uint64) string {
	if v, ok := p.cache.Get(p.owner, keyQual|me); ok {
		return v.(string)
	}
	q := ""
	if m := p.methodEntry(me); m != 0 {
		if klass, err := p.mem.U64(m + p.lay.meDefinedClass); err == nil && klass != 0 {
			q = p.classQualifier(klass)
		}
	}
	p.cache.Put(p.owner, keyQual|me, q, len(q))
	return q
}

// classQualifier is "Path#" for a class or module, "Path." for the
// singleton class of one (as rb_profile_frame_classpath and
// rb_profile_frame_full_label name them); an included module's iclass is
// the module.
func (p *process) classQualifier(klass uint64) string {
	if v, ok := p.cache.Get(p.owner, keyClass|klass); ok {
		return v.(string)
	}
	q := ""
	flags, err := p.mem.U64(klass)
	if err == nil && flags&tMask == tIClass {
		klass, err = p.mem.U64(klass + basicKlass)
		if err == nil {
			flags, err = p.mem.U64(klass)
		}
	}
	if err == nil {
		if flags&flSingleton != 0 {
			if attached := p.ivar(klass, "__attached__", &p.idAttached); attached != 0 {
				if path := p.classPath(attached); path != "" {
					q = path + "."
				}
			}
		} else if path := p.classPath(klass); path != "" {
			q = path + "#"
		}
	}
	p.cache.Put(p.owner, keyClass|klass, q, len(q))
	return q
}

// classPath is a class's name, its __classpath__ (variable.c:97-111).
func (p *process) classPath(klass uint64) string {
	v := p.ivar(klass, "__classpath__", &p.idClasspath)
	if v == 0 {
		return ""
	}
	s, err := p.str(v, maxNameBytes)
	if err != nil {
		return ""
	}
	return s
}

// ivar returns a class's instance variable name (an ID-keyed st_table in
// its rb_classext_t), 0 if it has none or cannot be read; id caches the
// name's ID.
func (p *process) ivar(klass uint64, name string, id *uint64) uint64 {
	l := p.lay
	ext, err := p.mem.U64(klass + l.classExt)
	if err != nil || ext == 0 {
		return 0
	}
	tbl, err := p.mem.U64(ext + l.extIVTbl)
	if err != nil || tbl == 0 {
		return 0
	}
	var hdr [56]byte
	if err := p.mem.Read(tbl, hdr[:]); err != nil {
		return 0
	}
	start, bound, entries := interp.Word(hdr[:], int(l.stStart)), interp.Word(hdr[:], int(l.stBound)), interp.Word(hdr[:], int(l.stEntries))
	if bound < start || bound-start > maxIVars {
		return 0
	}
	b := make([]byte, (bound-start)*l.stEntrySize)
	if err := p.mem.Read(entries+start*l.stEntrySize, b); err != nil {
		return 0
	}
	for i := 0; i+int(l.stEntrySize) <= len(b); i += int(l.stEntrySize) {
		if interp.Word(b, i) == ^uint64(0) { // a deleted entry (st.c: RESERVED_HASH_VAL)
			continue
		}
		key, record := interp.Word(b, i+8), interp.Word(b, i+16)
		if *id != 0 {
			if key == *id {
				return record
			}
			continue
		}
		if p.idName(key) == name {
			*id = key
			return record
		}
	}
	return 0
}

// cfunc names a C method from its method entry: its class and its
// definition's original_id (as rb_profile_frame_full_label names it).
func (p *process) cfunc(me uint64) string {
	if me == 0 {
		return ""
	}
	if v, ok := p.cache.Get(p.owner, keyCFunc|me); ok {
		return v.(string)
	}
	name := ""
	if m := p.methodEntry(me); m != 0 {
		if def, err := p.mem.U64(m + p.lay.meDef); err == nil && def != 0 {
			if id, err := p.mem.U64(def + p.lay.defOriginalID); err == nil {
				if method := p.idName(id); method != "" {
					name = method
					if klass, err := p.mem.U64(m + p.lay.meDefinedClass); err == nil && klass != 0 {
						name = p.classQualifier(klass) + method
					}
					name = unique.Make(name).Value()
				}
			}
		}
	}
	p.cache.Put(p.owner, keyCFunc|me, name, len(name))
	return name
}

// idName is an ID's name, from ruby_global_symbols (symbol.c:438-470:
// ids[serial / 512][serial % 512 * 2] is its string); "" if unknown.
func (p *process) idName(id uint64) string {
	if p.symbols == 0 || id == 0 || id >= 1<<40 {
		return ""
	}
	if v, ok := p.cache.Get(p.owner, keyID|id); ok {
		return v.(string)
	}
	serial := id
	if id > lastOpID {
		serial = id >> idScopeShift
	}
	name := ""
	if ids, err := p.mem.U64(p.symbols + p.lay.symbolsIDs); err == nil {
		if chunk, err := p.aryGet(ids, serial/idEntryUnit); err == nil {
			if s, err := p.aryGet(chunk, serial%idEntryUnit*idEntrySize); err == nil {
				if str, err := p.str(s, maxNameBytes); err == nil {
					name = unique.Make(str).Value()
				}
			}
		}
	}
	p.cache.Put(p.owner, keyID|id, name, len(name))
	return name
}

// aryGet is element i of an Array (include/ruby/internal/core/rarray.h).
func (p *process) aryGet(ary, i uint64) (uint64, error) {
	var hdr [0x28]byte
	if err := p.mem.Read(ary, hdr[:]); err != nil {
		return 0, err
	}
	flags := interp.Word(hdr[:], 0)
	if flags&tMask != tArray {
		return 0, fmt.Errorf("%#x is not an Array", ary)
	}
	n, ptr := interp.Word(hdr[:], aryHeapLen), interp.Word(hdr[:], aryHeapPtr)
	if flags&aryEmbed != 0 {
		n, ptr = flags>>aryEmbedShift&aryEmbedMask, ary+aryEmbedValues
	}
	if i >= n {
		return 0, fmt.Errorf("index %d of an Array of %d", i, n)
	}
	return p.mem.U64(ptr + 8*i)
}

// str reads a String of at most max bytes (longer ones are cut)
// (include/ruby/internal/core/rstring.h).
func (p *process) str(v uint64, max int) (string, error) {
	var hdr [0x28]byte
	if err := p.mem.Read(v, hdr[:]); err != nil {
		return "", err
	}
	flags := interp.Word(hdr[:], 0)
	if flags&tMask != tString {
		return "", fmt.Errorf("%#x is not a String", v)
	}
	if flags&strNoEmbed == 0 {
		n := min(int(flags>>strEmbedShift&strEmbedMask), 24)
		return string(hdr[strEmbedAry : strEmbedAry+min(n, max)]), nil
	}
	n := min(interp.Word(hdr[:], strHeapLen), uint64(max))
	b := make([]byte, n)
	if err := p.mem.Read(interp.Word(hdr[:], strHeapPtr), b); err != nil {
		return "", err
	}
	return string(b), nil
}

// pathOf is an iseq's path: its pathobj is a String, or an Array of the
// path and the real path (vm_core.h:320-329).
func (p *process) pathOf(pathobj uint64) (string, error) {
	flags, err := p.mem.U64(pathobj)
	if err != nil {
		return "", err
	}
	if flags&tMask == tArray {
		if pathobj, err = p.aryGet(pathobj, 0); err != nil {
			return "", err
		}
	}
	return p.str(pathobj, maxFileBytes)
}
