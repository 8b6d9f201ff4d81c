package otlp

import (
	"encoding/binary"
	"encoding/hex"
	"slices"
	"unsafe"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pprofile"

	"github.com/cgscope/cgscope/symbolizer"
)

// maxRetained bounds the entries an interning table may have held and
// still be kept for the next request: a larger one is dropped, so that one
// unusually large interval does not pin its memory for good.
const maxRetained = 1 << 17

// reuseMap empties m for the next request, or makes a new map when there
// is none or when m grew beyond maxRetained.
func reuseMap[K comparable, V any](m map[K]V, hint int) map[K]V {
	if m == nil || len(m) > maxRetained {
		return make(map[K]V, min(hint, maxRetained))
	}
	clear(m)
	return m
}

// userAddrBits is how many low bits of a userLocs key hold the object
// address; the mapping index is above them. Object addresses of ELF files
// are far below 2^40; the rare frame beyond goes to otherLocs.
const userAddrBits = 40

// dictBuilder interns strings, mappings, functions, locations, stacks and
// attributes into one request's dictionary. Every table starts with its
// zero entry at index 0, as the OTLP profiles format requires.
//
// The per-frame work is what a conversion costs (a 5,000-stack interval
// has about 80,000 frames), so a frame is found with one lookup in an
// indexTable (mapping index and address packed into the key), after its
// mapping's index is found by pointer, usually from the one-entry cache of
// the previous frame's mapping. Everything else is interned only when a
// new location is met.
type dictBuilder struct {
	d    pprofile.ProfilesDictionary
	strs map[string]int32

	// The dictionary's tables, written over from their start (reuse.go).
	mappingT  overwrite[pprofile.MappingSlice, pprofile.Mapping]
	functionT overwrite[pprofile.FunctionSlice, pprofile.Function]
	locationT overwrite[pprofile.LocationSlice, pprofile.Location]
	stackT    overwrite[pprofile.StackSlice, pprofile.Stack]
	attrT     overwrite[pprofile.KeyValueAndUnitSlice, pprofile.KeyValueAndUnit]
	linkT     overwrite[pprofile.LinkSlice, pprofile.Link]

	mapByPtr indexTable // the Mapping's address → mapping index

	lastMap    *symbolizer.Mapping // the previous frame's mapping, and its index
	lastMapIdx int32
	mappings   map[mappingKey]int32
	kernelMap  int32 // -1 until a kernel frame is seen

	userLocs   indexTable // mapping index<<userAddrBits | object address
	kernelLocs indexTable // kernel address
	otherLocs  map[otherLocKey]int32

	functions  indexTable // name<<32 | file (string indices)
	stacks     stackSet
	attrs      map[attrKey]int32
	threads    map[uint64]threadAttrs // pid<<32 | tid
	lastThread struct {               // the thread asked for last: consecutive rows of a process are often of one thread
		key   uint64
		attrs threadAttrs
		ok    bool
	}
	kernelAttr int32 // profile.frame.type=kernel; -1 until used

	locBuf []int32
	one    [1]int32 // the backing array of one-element index lists
}

type mappingKey struct{ path, buildID string }
type attrKey struct{ key, value string }

// otherLocKey identifies a frame outside the userLocs encoding: by mapping
// and address, or, for frames in no mapping, by address and name.
type otherLocKey struct {
	mapping int32
	addr    uint64
	fn      string
}

// reset starts a new request's dictionary d, sized for samples samples. d
// may hold an earlier request's dictionary: it is written over, and
// finish drops what is left of it.
func (b *dictBuilder) reset(d pprofile.ProfilesDictionary, samples int) {
	b.d = d
	d.StringTable().FromRaw(nil) // empties it, keeping its capacity
	b.mappingT = overwriteOf(d.MappingTable())
	b.functionT = overwriteOf(d.FunctionTable())
	b.locationT = overwriteOf(d.LocationTable())
	b.stackT = overwriteOf(d.StackTable())
	b.attrT = overwriteOf(d.AttributeTable())
	b.linkT = overwriteOf(d.LinkTable())
	b.strs = reuseMap(b.strs, samples)
	b.mapByPtr.reset()
	b.mappings = reuseMap(b.mappings, 64)
	b.userLocs.reset()
	b.kernelLocs.reset()
	b.otherLocs = reuseMap(b.otherLocs, 16)
	b.functions.reset()
	b.stacks.reset()
	b.attrs = reuseMap(b.attrs, 64)
	b.threads = reuseMap(b.threads, samples/4)
	b.lastThread.ok = false
	b.lastMap, b.lastMapIdx = nil, 0
	b.kernelMap, b.kernelAttr = -1, -1

	b.zeroEntries()
}

// zeroEntries writes every table's zero entry, which the OTLP profiles
// format requires at index 0. Nothing else writes index 0, so a reused
// zero entry is still empty; it is emptied again all the same.
func (b *dictBuilder) zeroEntries() {
	b.str("")
	setMapping(b.mappingT.next(), 0, nil)
	setFunction(b.functionT.next(), 0, 0)
	l := b.locationT.next()
	l.SetMappingIndex(0)
	l.SetAddress(0)
	l.AttributeIndices().FromRaw(nil)
	lines := overwriteOf(l.Lines())
	lines.trim()
	b.stackT.next().LocationIndices().FromRaw(nil)
	a := b.attrT.next()
	a.SetKeyStrindex(0)
	pcommon.NewValueEmpty().CopyTo(a.Value())
	b.linkT.next() // links are never set
}

// finish drops the entries an earlier request left beyond this one's.
func (b *dictBuilder) finish() {
	b.mappingT.trim()
	b.functionT.trim()
	b.locationT.trim()
	b.stackT.trim()
	b.attrT.trim()
	b.linkT.trim()
}

// indices is i as a one-element index list, or none when i < 0. The list
// is only good until the next call: pdata copies it (FromRaw).
func (b *dictBuilder) indices(i int32) []int32 {
	if i < 0 {
		return nil
	}
	b.one[0] = i
	return b.one[:]
}

func (b *dictBuilder) str(s string) int32 {
	if i, ok := b.strs[s]; ok {
		return i
	}
	i := int32(b.d.StringTable().Len())
	b.d.StringTable().Append(s)
	b.strs[s] = i
	return i
}

// stack interns a leaf-first frame list, and reports whether the request
// had it already. A stack seen before costs its frames' lookups and one
// hash lookup, without allocating.
func (b *dictBuilder) stack(frames []symbolizer.Frame) (int32, bool) {
	if len(frames) == 0 {
		return 0, true
	}
	b.locBuf = b.locBuf[:0]
	for i := range frames {
		b.locBuf = append(b.locBuf, b.location(&frames[i]))
	}
	h := hashLocations(b.locBuf)
	if i, ok := b.stacks.find(h, b.locBuf); ok {
		return i, true
	}
	i := int32(b.stackT.n)
	b.stackT.next().LocationIndices().FromRaw(b.locBuf)
	b.stacks.add(h, b.locBuf, i)
	return i, false
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
			k := uint64(m)<<userAddrBits | fr.ObjAddress
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
		k.fn = fr.Function
	}
	if i, ok := b.otherLocs[k]; ok {
		return i
	}
	i := b.newLocation(fr, k.mapping)
	b.otherLocs[k] = i
	return i
}

func (b *dictBuilder) newLocation(fr *symbolizer.Frame, mapping int32) int32 {
	i := int32(b.locationT.n)
	l := b.locationT.next()
	l.SetMappingIndex(mapping)
	l.SetAddress(fr.ObjAddress)
	lines := overwriteOf(l.Lines())
	if fr.Function != "" {
		ln := lines.next()
		ln.SetFunctionIndex(b.function(fr))
		ln.SetLine(int64(fr.Line))
	}
	lines.trim()
	attr := int32(-1)
	if fr.Kernel {
		if b.kernelAttr < 0 {
			b.kernelAttr = b.strAttr(attrFrameType, "kernel")
		}
		attr = b.kernelAttr
	}
	l.AttributeIndices().FromRaw(b.indices(attr))
	return i
}

// mapping returns the index of the object m maps. Addresses are
// object-relative (Frame.ObjAddress), so one mapping per object (path and
// build ID) serves every process; MemoryStart/Limit stay 0.
func (b *dictBuilder) mapping(m *symbolizer.Mapping) int32 {
	if m == b.lastMap {
		return b.lastMapIdx
	}
	// Keyed by address: the request's frames keep every Mapping alive, and
	// Go's heap does not move, so an address is one Mapping until reset.
	addr := uint64(uintptr(unsafe.Pointer(m)))
	i, ok := b.mapByPtr.get(addr)
	if !ok {
		k := mappingKey{path: m.FilePath(), buildID: m.BuildID}
		if i, ok = b.mappings[k]; !ok {
			i = b.newMapping(k)
		}
		b.mapByPtr.put(addr, i)
	}
	b.lastMap, b.lastMapIdx = m, i
	return i
}

func (b *dictBuilder) kernelMapping() int32 {
	if b.kernelMap < 0 {
		b.kernelMap = b.newMapping(mappingKey{path: kernelMappingName})
	}
	return b.kernelMap
}

func (b *dictBuilder) newMapping(k mappingKey) int32 {
	path, attr := b.str(k.path), int32(-1)
	if key, val := buildIDAttr(k.buildID); key != "" {
		attr = b.strAttr(key, val)
	}
	i := int32(b.mappingT.n)
	setMapping(b.mappingT.next(), path, b.indices(attr))
	b.mappings[k] = i
	return i
}

// setMapping writes the fields of m this package sets (addresses are
// object-relative: MemoryStart, MemoryLimit and FileOffset stay 0).
func setMapping(m pprofile.Mapping, filename int32, attrs []int32) {
	m.SetFilenameStrindex(filename)
	m.AttributeIndices().FromRaw(attrs)
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
// of its two strings (which a new function needs anyway) in an indexTable:
// cheaper than a Go map keyed by the strings themselves.
func (b *dictBuilder) function(fr *symbolizer.Frame) int32 {
	name, file := b.str(fr.Function), b.str(fr.File)
	k := uint64(uint32(name))<<32 | uint64(uint32(file))
	if i, ok := b.functions.get(k); ok {
		return i
	}
	i := int32(b.functionT.n)
	setFunction(b.functionT.next(), name, file)
	b.functions.put(k, i)
	return i
}

// setFunction writes the fields of f this package sets: its name (also
// the system name) and source file.
func setFunction(f pprofile.Function, name, file int32) {
	f.SetNameStrindex(name)
	f.SetSystemNameStrindex(name)
	f.SetFilenameStrindex(file)
}

func (b *dictBuilder) strAttr(key, val string) int32 {
	k := attrKey{key: key, value: val}
	if i, ok := b.attrs[k]; ok {
		return i
	}
	i, a := b.newAttr(key)
	a.Value().SetStr(val)
	b.attrs[k] = i
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
	a, ok := b.threads[k]
	if !ok {
		id, v := b.newAttr(attrThreadID)
		v.Value().SetInt(int64(tid))
		a = threadAttrs{id: id, name: b.strAttr(attrThreadName, comm)}
		b.threads[k] = a
	}
	b.lastThread.key, b.lastThread.attrs, b.lastThread.ok = k, a, true
	return a
}

// newAttr adds an attribute with key; the caller sets its value.
func (b *dictBuilder) newAttr(key string) (int32, pprofile.KeyValueAndUnit) {
	k := b.str(key)
	i := int32(b.attrT.n)
	a := b.attrT.next()
	a.SetKeyStrindex(k)
	return i, a
}

// stackSet finds a request's stacks by content: an indexTable from a
// 64-bit hash of the location indices to the stack, whose locations are
// kept here to check a hit. A stack whose hash another stack took (rare)
// is kept in a map by content instead.
type stackSet struct {
	byHash   indexTable
	spans    []locSpan // stack index → its locations in locs
	locs     []int32
	collided map[string]int32
}

type locSpan struct{ off, n int32 }

func (s *stackSet) reset() {
	s.byHash.reset()
	if cap(s.locs) > 16*maxRetained {
		s.locs = nil
	}
	s.locs = s.locs[:0]
	s.spans = append(s.spans[:0], locSpan{}) // index 0: the empty stack
	s.collided = reuseMap(s.collided, 0)
}

func (s *stackSet) find(h uint64, locs []int32) (int32, bool) {
	i, ok := s.byHash.get(h)
	if !ok {
		return 0, false
	}
	if sp := s.spans[i]; slices.Equal(s.locs[sp.off:sp.off+sp.n], locs) {
		return i, true
	}
	i, ok = s.collided[stackKey(locs)]
	return i, ok
}

// add records stack i (the next index) with its locations and hash.
func (s *stackSet) add(h uint64, locs []int32, i int32) {
	s.spans = append(s.spans, locSpan{off: int32(len(s.locs)), n: int32(len(locs))})
	s.locs = append(s.locs, locs...)
	if _, taken := s.byHash.get(h); taken {
		s.collided[stackKey(locs)] = i
		return
	}
	s.byHash.put(h, i)
}

func stackKey(locs []int32) string {
	b := make([]byte, 0, 4*len(locs))
	for _, l := range locs {
		b = binary.LittleEndian.AppendUint32(b, uint32(l))
	}
	return string(b)
}

// hashLocations mixes location indices into 64 bits (FNV-1a over the
// words, then a splitmix64 finish so that the low and high bits both vary).
func hashLocations(locs []int32) uint64 {
	h := uint64(14695981039346656037)
	for _, l := range locs {
		h = (h ^ uint64(uint32(l))) * 1099511628211
	}
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	return h ^ h>>31
}
