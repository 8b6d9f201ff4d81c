package otlp

import (
	"bytes"
	"encoding/hex"
	"hash/maphash"
	"slices"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/cgscope/cgscope/symbolizer"
)

// maxRetained bounds the entries an interning table may have held and
// still be kept for the next request: a larger one is dropped, so that one
// unusually large interval does not pin its memory for good.
const maxRetained = 1 << 17

// maxRetainedBytes bounds, likewise, the encoded entries of a dictionary
// table kept for the next request.
const maxRetainedBytes = 4 << 20

// reuseMap empties m for the next request, or makes a new map when there
// is none or when m grew beyond maxRetained.
func reuseMap[K comparable, V any](m map[K]V, hint int) map[K]V {
	if m == nil || len(m) > maxRetained {
		return make(map[K]V, min(hint, maxRetained))
	}
	clear(m)
	return m
}

// reuseSlice empties s for the next request, or drops it when it grew
// beyond maxRetained entries.
func reuseSlice[E any](s []E) []E {
	if cap(s) > maxRetained {
		return nil
	}
	return s[:0]
}

// userAddrBits is how many low bits of a userLocs key hold the object
// address; the mapping index is above them. Object addresses of ELF files
// are far below 2^40; the rare frame beyond goes to otherLocs.
const userAddrBits = 40

// userLocKey is the userLocs key of an address in mapping m.
func userLocKey(m int32, addr uint64) uint64 {
	return uint64(m)<<userAddrBits | addr
}

// dictBuilder interns strings, mappings, functions, locations, stacks and
// attributes into one request's dictionary. Each table is kept as the
// request will carry it: a new entry is encoded at once, as its field of
// ProfilesDictionary, while the values are at hand, and the request copies
// the tables as they are. Every table starts with its zero entry at index
// 0, as the OTLP profiles format requires, so index 0 also stands for
// "none" below (no function, no attribute).
//
// The per-frame work is what a conversion costs (a 5,000-stack interval
// has about 80,000 frames), so a frame is found with one lookup in an
// indexTable (mapping index and address packed into the key), after its
// mapping's index is found by pointer, usually in a small cache of recent
// mappings. Everything else is interned only when a new location is met.
type dictBuilder struct {
	stacks    stackSet // the stack table
	attrs     table
	strings   table
	functions table
	locations table
	mappings  table

	strIndex map[string]int32
	strCache [strCacheSize]strCacheEntry // string → index, direct-mapped by address; see str

	mapCache     [mapCacheSize]mapCacheEntry // Mapping → mapping index, direct-mapped by address
	mapByPtr     indexTable                  // the Mapping's address → mapping index
	mappingIndex map[mappingKey]int32
	kernelMap    int32 // 0 until a kernel frame is seen

	userLocs   indexTable // mapping index<<userAddrBits | object address
	kernelLocs indexTable // kernel address
	otherLocs  map[otherLocKey]int32

	funcByName    []nameFunction // name's string index → the first function of that name
	functionIndex indexTable     // name<<32 | file (string indices), for the other functions of a name
	attrIndex     map[attrKey]int32
	threadIndex   indexTable    // pid<<32 | tid → threads
	threads       []threadAttrs // of each thread of the request
	lastThread    struct {      // the thread asked for last: consecutive rows are often of one thread
		key   uint64
		attrs threadAttrs
		ok    bool
	}
	kernelAttr int32 // profile.frame.type=kernel; 0 until used

	locBuf []int32
	inlBuf []inlinedLine // newLocation's inlined lines, reused
}

// table is a dictionary table: its entries, encoded, in index order.
type table struct {
	protoWriter
	n int32 // entries
}

func (t *table) reset() {
	if cap(t.buf) > maxRetainedBytes {
		t.buf = nil
	}
	t.buf, t.n = t.buf[:0], 0
}

// added counts the entry just written and returns its index.
func (t *table) added() int32 {
	t.n++
	return t.n - 1
}

// mapCacheBits sizes the direct-mapped cache of Mapping values in front
// of mapByPtr: the frames of a stack alternate between objects, and a
// stack rarely touches more than a few dozen.
const (
	mapCacheBits = 10
	mapCacheSize = 1 << mapCacheBits
)

func mapCacheSlot(m *symbolizer.Mapping) uint64 {
	return uint64(uintptr(unsafe.Pointer(m))) * 0x9e3779b97f4a7c15 >> (64 - mapCacheBits)
}

type mapCacheEntry struct {
	m   *symbolizer.Mapping
	idx int32
}

type mappingKey struct{ path, buildID string }
type attrKey struct{ key, value string }

// otherLocKey identifies a frame outside the userLocs encoding: by mapping
// and address, or, for frames in no mapping (interpreted frames among
// them), by address, name, file and line.
type otherLocKey struct {
	mapping  int32
	addr     uint64
	fn, file string
	line     int
}

// reset empties the tables for a request of about samples samples,
// keeping their memory unless an earlier request grew them beyond
// maxRetained entries.
func (b *dictBuilder) reset(samples int) {
	for _, t := range []*table{&b.attrs, &b.strings, &b.functions, &b.locations, &b.mappings} {
		t.reset()
	}
	b.strIndex = reuseMap(b.strIndex, samples)
	clear(b.strCache[:])
	clear(b.mapCache[:])
	b.mapByPtr.reset()
	b.mappingIndex = reuseMap(b.mappingIndex, 64)
	b.userLocs.reset()
	b.kernelLocs.reset()
	b.otherLocs = reuseMap(b.otherLocs, 16)
	b.funcByName = reuseSlice(b.funcByName)
	b.functionIndex.reset()
	b.stacks.reset()
	b.attrIndex = reuseMap(b.attrIndex, 64)
	b.threadIndex.reset()
	b.threads = reuseSlice(b.threads)
	b.lastThread.ok = false
	b.kernelMap, b.kernelAttr = 0, 0

	// The zero entries (the stack table's is stackSet's): empty messages,
	// and the empty string.
	b.str("")
	encodeMapping(&b.mappings.protoWriter, 0, 0)
	b.mappings.added()
	encodeFunction(&b.functions.protoWriter, 0, 0)
	b.functions.added()
	encodeLocation(&b.locations.protoWriter, locationEntry{})
	b.locations.added()
	encodeAttr(&b.attrs.protoWriter, 0, anyValue{})
	b.attrs.added()
}

// str returns the index of s in the string table. The frames of a
// function share its name and file (the symbolizer's strings), so a
// string is first looked up by its address, in a small direct-mapped
// cache: that reads none of its bytes, which are rarely in the CPU's
// caches. The same address and length are the same string until reset,
// for the request's frames keep their strings alive; strings at other
// addresses are found by content.
func (b *dictBuilder) str(s string) int32 {
	p := unsafe.StringData(s)
	e := &b.strCache[uint64(uintptr(unsafe.Pointer(p)))*0x9e3779b97f4a7c15>>(64-strCacheBits)]
	if unsafe.StringData(e.s) == p && len(e.s) == len(s) && e.ok {
		return e.idx
	}
	i, ok := b.strIndex[s]
	if !ok {
		b.strings.bytes(fieldDictionaryStringTable, s)
		i = b.strings.added()
		b.strIndex[s] = i
	}
	*e = strCacheEntry{s: s, idx: i, ok: true}
	return i
}

// strCacheBits sizes str's cache: a request's frames name a few thousand
// functions in a few hundred files.
const (
	strCacheBits = 10
	strCacheSize = 1 << strCacheBits
)

type strCacheEntry struct {
	s   string
	idx int32
	ok  bool
}

// stack interns a leaf-first frame list, and reports whether the request
// had it already. A stack seen before costs its frames' lookups and one
// hash lookup, without allocating.
func (b *dictBuilder) stack(frames []symbolizer.Frame) (int32, bool) {
	if len(frames) == 0 {
		return 0, true
	}
	locs := slices.Grow(b.locBuf[:0], len(frames))[:len(frames)]
	for i := range frames {
		fr := &frames[i]
		// The common case inline: a user frame whose mapping is cached and
		// whose location the request has.
		if m := fr.Mapping; m != nil && !fr.Kernel && fr.ObjAddress < 1<<userAddrBits {
			if e := &b.mapCache[mapCacheSlot(m)]; e.m == m && e.idx < 1<<(64-userAddrBits) {
				if l, ok := b.userLocs.get(userLocKey(e.idx, fr.ObjAddress)); ok {
					locs[i] = l
					continue
				}
			}
		}
		locs[i] = b.location(fr)
	}
	b.locBuf = locs
	return b.stacks.intern(locs)
}

// location returns the index of a frame's location. Locations are keyed by
// object and object-relative address, so the same code in two processes
// (two Mapping values of one file) is one location.
func (b *dictBuilder) location(fr *symbolizer.Frame) int32 {
	if fr.Kernel {
		if i, ok := b.kernelLocs.get(fr.ObjAddress); ok {
			return i
		}
		i := b.newLocation(fr, b.kernelMapping())
		b.kernelLocs.put(fr.ObjAddress, i)
		return i
	}
	if fr.Mapping != nil && fr.ObjAddress < 1<<userAddrBits {
		m := b.mapping(fr.Mapping)
		if m < 1<<(64-userAddrBits) {
			k := userLocKey(m, fr.ObjAddress)
			if i, ok := b.userLocs.get(k); ok {
				return i
			}
			i := b.newLocation(fr, m)
			b.userLocs.put(k, i)
			return i
		}
	}
	k := otherLocKey{addr: fr.ObjAddress}
	if fr.Mapping != nil {
		k.mapping = b.mapping(fr.Mapping)
	} else {
		k.fn, k.file, k.line = fr.Function, fr.File, fr.Line
	}
	if i, ok := b.otherLocs[k]; ok {
		return i
	}
	i := b.newLocation(fr, k.mapping)
	b.otherLocs[k] = i
	return i
}

// locationEntry is a Location: an object-relative address in a mapping,
// with one line when the function is known (function > 0) and the
// profile.frame.type attribute for kernel and interpreted frames (attr >
// 0).
type locationEntry struct {
	addr           uint64
	line           int64
	mapping        int32
	function, attr int32
	inlined        []inlinedLine // the calls inlined at addr, innermost first, before the line above
}

// inlinedLine is a Line of a call inlined at a location.
type inlinedLine struct {
	function int32
	line     int64
}

func (b *dictBuilder) newLocation(fr *symbolizer.Frame, mapping int32) int32 {
	l := locationEntry{addr: fr.ObjAddress, mapping: mapping}
	if fr.Function != "" {
		l.function, l.line = b.function(fr.Function, fr.File), int64(fr.Line)
		b.inlBuf = b.inlBuf[:0]
		for _, c := range fr.Inlined {
			b.inlBuf = append(b.inlBuf, inlinedLine{function: b.function(c.Function, c.File), line: int64(c.Line)})
		}
		l.inlined = b.inlBuf
	}
	switch {
	case fr.Kernel:
		if b.kernelAttr == 0 {
			b.kernelAttr = b.strAttr(attrFrameType, "kernel")
		}
		l.attr = b.kernelAttr
	case fr.Interpreter != "":
		l.attr = b.strAttr(attrFrameType, fr.Interpreter)
	}
	encodeLocation(&b.locations.protoWriter, l)
	return b.locations.added()
}

// mapping returns the index of the object m maps. Addresses are
// object-relative (Frame.ObjAddress), so one mapping per object (path and
// build ID) serves every process.
func (b *dictBuilder) mapping(m *symbolizer.Mapping) int32 {
	e := &b.mapCache[mapCacheSlot(m)]
	if e.m == m {
		return e.idx
	}
	// Keyed by address: the request's frames keep every Mapping alive, and
	// Go's heap does not move, so an address is one Mapping until reset.
	addr := uint64(uintptr(unsafe.Pointer(m)))
	i, ok := b.mapByPtr.get(addr)
	if !ok {
		k := mappingKey{path: m.FilePath(), buildID: m.BuildID}
		if i, ok = b.mappingIndex[k]; !ok {
			i = b.newMapping(k)
		}
		b.mapByPtr.put(addr, i)
	}
	*e = mapCacheEntry{m: m, idx: i}
	return i
}

func (b *dictBuilder) kernelMapping() int32 {
	if b.kernelMap == 0 {
		b.kernelMap = b.newMapping(mappingKey{path: kernelMappingName})
	}
	return b.kernelMap
}

func (b *dictBuilder) newMapping(k mappingKey) int32 {
	filename, attr := b.str(k.path), int32(0)
	if key, val := buildIDAttr(k.buildID); key != "" {
		attr = b.strAttr(key, val)
	}
	encodeMapping(&b.mappings.protoWriter, filename, attr)
	i := b.mappings.added()
	b.mappingIndex[k] = i
	return i
}

// buildIDAttr names a symbolizer build ID by its kind: a GNU build ID is
// short hex (8..32 bytes); anything longer is the hex of a Go build ID,
// which is given in its own text form ("actionID/.../contentID").
func buildIDAttr(id string) (key, val string) {
	switch {
	case id == "":
		return "", ""
	case len(id) <= 64:
		return attrBuildIDGNU, id
	}
	if raw, err := hex.DecodeString(id); err == nil {
		return attrBuildIDGo, string(raw)
	}
	return attrBuildIDGNU, id
}

// function returns the index of a frame's function, keyed by the indices
// of its two strings (which a new function needs anyway). A name is
// nearly always one function, found by the name's index in funcByName;
// only another file's function of the same name takes a hash lookup.
func (b *dictBuilder) function(function, fileName string) int32 {
	name, file := b.str(function), b.str(fileName)
	if int(name) >= len(b.funcByName) {
		b.funcByName = append(b.funcByName, make([]nameFunction, int(name)+1-len(b.funcByName))...)
	}
	first := &b.funcByName[name]
	if first.index != 0 && first.file == file {
		return first.index
	}
	k := uint64(uint32(name))<<32 | uint64(uint32(file))
	if first.index != 0 {
		if i, ok := b.functionIndex.get(k); ok {
			return i
		}
	}
	encodeFunction(&b.functions.protoWriter, name, file)
	i := b.functions.added()
	if first.index == 0 {
		*first = nameFunction{file: file, index: i}
	} else {
		b.functionIndex.put(k, i)
	}
	return i
}

// nameFunction is a function of a name: its file and index; index 0 for
// none yet.
type nameFunction struct{ file, index int32 }

func (b *dictBuilder) strAttr(key, val string) int32 {
	k := attrKey{key: key, value: val}
	if i, ok := b.attrIndex[k]; ok {
		return i
	}
	encodeAttr(&b.attrs.protoWriter, b.str(key), anyValue{kind: attrString, str: val})
	i := b.attrs.added()
	b.attrIndex[k] = i
	return i
}

// threadAttrs are the attribute indices of a thread's id and name.
type threadAttrs struct{ id, name int32 }

// thread returns the attributes every sample of a thread carries. A
// thread renamed within the interval keeps the name first seen.
func (b *dictBuilder) thread(pid, tid uint32, comm string) threadAttrs {
	k := uint64(pid)<<32 | uint64(tid)
	if last := &b.lastThread; last.ok && last.key == k {
		return last.attrs
	}
	var a threadAttrs
	if i, ok := b.threadIndex.get(k); ok {
		a = b.threads[i]
	} else {
		encodeAttr(&b.attrs.protoWriter, b.str(attrThreadID), anyValue{kind: attrInt, num: int64(tid)})
		id := b.attrs.added()
		a = threadAttrs{id: id, name: b.strAttr(attrThreadName, comm)}
		b.threadIndex.put(k, int32(len(b.threads)))
		b.threads = append(b.threads, a)
	}
	b.lastThread.key, b.lastThread.attrs, b.lastThread.ok = k, a, true
	return a
}

// stackSet is the stack table, and finds its stacks by content: an
// indexTable from a hash of a stack's encoded location indices to the
// stack, whose encoding the table holds to check a hit. A stack whose hash
// another stack took (rare) is kept in a map by content instead.
type stackSet struct {
	table
	seed     maphash.Seed
	byHash   indexTable
	spans    []span // stack index → its encoded location indices in buf
	enc      []byte // the stack being looked up, encoded
	collided map[string]int32
}

// span is where something is in a buffer.
type span struct{ off, n int32 }

func (s *stackSet) reset() {
	if s.seed == (maphash.Seed{}) {
		s.seed = maphash.MakeSeed()
	}
	s.table.reset()
	s.byHash.reset()
	s.spans = append(reuseSlice(s.spans), span{}) // the empty stack: the zero entry
	s.buf = append(s.buf, tag(fieldDictionaryStackTable, protowire.BytesType), 0)
	s.added()
	s.collided = reuseMap(s.collided, 0)
}

// intern returns the index of the stack of locs, and reports whether the
// table had it already.
func (s *stackSet) intern(locs []int32) (int32, bool) {
	s.enc = appendIndices(s.enc[:0], locs)
	return s.internEncoded(maphash.Bytes(s.seed, s.enc))
}

// internEncoded interns the stack s.enc holds, whose hash is h.
func (s *stackSet) internEncoded(h uint64) (int32, bool) {
	if i, ok := s.byHash.get(h); ok {
		if bytes.Equal(s.encoded(i), s.enc) {
			return i, true
		}
		if i, ok := s.collided[string(s.enc)]; ok {
			return i, true
		}
		i := s.add()
		s.collided[string(s.enc)] = i
		return i, false
	}
	i := s.add()
	s.byHash.put(h, i)
	return i, false
}

// add writes the stack s.enc holds as the table's next entry.
func (s *stackSet) add() int32 {
	n := len(s.enc)
	m := s.begin(fieldDictionaryStackTable, 1+protowire.SizeVarint(uint64(n))+n) // its exact length
	s.buf = protowire.AppendVarint(append(s.buf, tag(fieldStackLocationIndices, protowire.BytesType)), uint64(n))
	s.buf = append(s.buf, s.enc...)
	s.end(m)
	s.spans = append(s.spans, span{off: int32(len(s.buf) - n), n: int32(n)})
	return s.added()
}

// encoded is stack i's encoded location indices.
func (s *stackSet) encoded(i int32) []byte {
	sp := s.spans[i]
	return s.buf[sp.off : sp.off+sp.n]
}
