package otlp

import (
	"crypto/rand"

	"google.golang.org/protobuf/encoding/protowire"
)

// The request is written as pdata's marshaler writes it (pdata v1.71.0):
// the fields of each message in descending field number, repeated fields
// in order, fields at their default left out except where pdata writes
// them anyway (message fields, oneof values, profile_id). A request pdata
// decodes and encodes again is the same bytes (TestEncodeAsPdata), so
// the collector reads exactly what it read when pdata built the request.
// Writing it directly costs a fraction of building tens of thousands of
// pdata objects and marshaling them.

// encodeRequest writes the ExportProfilesServiceRequest that convert
// prepared.
func (c *Converter) encodeRequest(w *protoWriter) {
	b := &c.dict
	tables := [][]byte{b.stacks.buf, b.attrs.buf, b.strings.buf, linkTable, b.functions.buf, b.locations.buf, b.mappings.buf}
	n := 0
	for _, t := range tables {
		n += len(t)
	}
	d := w.begin(fieldRequestDictionary, n)
	for _, t := range tables {
		w.buf = append(w.buf, t...)
	}
	w.end(d)
	profiles := 0
	for i := range c.agg.procs {
		profiles += c.agg.procs[i].profiles()
	}
	c.ids = append(reuseSlice(c.ids), make([]byte, 16*profiles)...)
	rand.Read(c.ids) // unique per profile; one read for the whole request
	c.nextID = 0
	for i := range c.agg.procs {
		c.encodeProcess(w, i)
	}
}

// profiles is how many profiles the process has: the CPU profile when it
// has CPU samples, the two off-CPU profiles when it has off-CPU samples.
func (p *procSamples) profiles() int {
	n := 0
	if p.rows > p.offRows {
		n++
	}
	if p.offRows > 0 {
		n += 2
	}
	return n
}

// linkTable is the link table: its zero entry, its only one, with the
// empty span and trace ids pdata writes all the same.
var linkTable = func() []byte {
	var w protoWriter
	m := w.begin(fieldDictionaryLinkTable, 4)
	w.bytes(fieldLinkSpanID, "")
	w.bytes(fieldLinkTraceID, "")
	w.end(m)
	return w.buf
}()

// encodeProcess writes process i's ResourceProfiles: its resource, and
// one scope with its profiles: CPU, then off-CPU time and switch-outs
// (profileKind).
func (c *Converter) encodeProcess(w *protoWriter, i int) {
	p := &c.agg.procs[i]
	// The lengths are guessed from the rows (a sample takes 10 to 20
	// bytes; an off-CPU row is in two profiles): a wrong guess only moves
	// the bytes written.
	profilesLen := 14*(p.rows+p.offRows) + 48*p.profiles()
	rp := w.begin(fieldRequestResourceProfiles, profilesLen+160)
	sp := w.begin(fieldResourceProfilesScopeProfiles, profilesLen+40)

	cpu, off := c.agg.cpuAndOffCPU(p)
	if len(cpu) > 0 {
		c.encodeProfile(w, cpuProfile, cpu)
	}
	if len(off) > 0 {
		c.encodeProfile(w, offCPUTimeProfile, off)
		c.encodeProfile(w, switchesProfile, off)
	}

	scope := w.begin(fieldScopeProfilesScope, len(scopeName)+len(c.Version)+4)
	w.nonEmpty(fieldScopeVersion, c.Version)
	w.nonEmpty(fieldScopeName, scopeName)
	w.end(scope)
	w.end(sp)

	res := w.begin(fieldResourceProfilesResource, 64)
	for _, a := range c.resAttrs[p.attrs.off : p.attrs.off+p.attrs.n] {
		kv := w.begin(fieldResourceAttributes, 8)
		w.nonZero(fieldKeyValueKeyStrindex, uint64(a.key))
		v := w.begin(fieldKeyValueValue, 4)
		if a.isInt {
			w.varint(fieldAnyValueIntValue, uint64(a.num))
		} else {
			w.varint(fieldAnyValueStringValueStrindex, uint64(a.value))
		}
		w.end(v)
		w.end(kv)
	}
	w.end(res)
	w.end(rp)
}

// encodeProfile writes a Profile of kind with the samples of rows.
func (c *Converter) encodeProfile(w *protoWriter, kind profileKind, rows []int32) {
	prof := w.begin(fieldScopeProfilesProfiles, 14*len(rows)+48)
	w.bytes(fieldProfileProfileID, string(c.ids[16*c.nextID:16*c.nextID+16]))
	c.nextID++
	s, t := c.span, &c.types[kind]
	w.nonZero(fieldProfilePeriod, uint64(t.period))
	valueType(w, fieldProfilePeriodType, t.periodType, t.periodUnit) // an empty message when none: pdata writes it so
	if s.end.After(s.start) {
		w.nonZero(fieldProfileDurationNano, uint64(s.end.Sub(s.start)))
	}
	if !s.start.IsZero() && s.start.UnixNano() != 0 {
		w.fixed64(fieldProfileTimeUnixNano, uint64(s.start.UnixNano()))
	}
	c.agg.encodeSamples(w, rows, kind == offCPUTimeProfile)
	valueType(w, fieldProfileSampleType, t.sampleType, t.sampleUnit)
	w.end(prof)
}

// valueType writes a ValueType field.
func valueType(w *protoWriter, num protowire.Number, typ, unit int32) {
	m := w.begin(num, 4)
	w.nonZero(fieldValueTypeUnitStrindex, uint64(unit))
	w.nonZero(fieldValueTypeTypeStrindex, uint64(typ))
	w.end(m)
}

// Tags of the fields written in the loops over a request's samples and
// in new dictionary entries below.
var (
	tagSample          = tag(fieldProfileSamples, protowire.BytesType)
	tagSampleValues    = tag(fieldSampleValues, protowire.BytesType)
	tagSampleAttrs     = tag(fieldSampleAttributeIndices, protowire.BytesType)
	tagSampleStack     = tag(fieldSampleStackIndex, protowire.VarintType)
	tagLocation        = tag(fieldDictionaryLocationTable, protowire.BytesType)
	tagLocationAttrs   = tag(fieldLocationAttributeIndices, protowire.BytesType)
	tagLocationLine    = tag(fieldLocationLines, protowire.BytesType)
	tagLocationAddress = tag(fieldLocationAddress, protowire.VarintType)
	tagLocationMapping = tag(fieldLocationMappingIndex, protowire.VarintType)
	tagLineLine        = tag(fieldLineLine, protowire.VarintType)
	tagLineFunction    = tag(fieldLineFunctionIndex, protowire.VarintType)
	tagFunction        = tag(fieldDictionaryFunctionTable, protowire.BytesType)
	tagFunctionFile    = tag(fieldFunctionFilenameStrindex, protowire.VarintType)
	tagFunctionSystem  = tag(fieldFunctionSystemNameStrindex, protowire.VarintType)
	tagFunctionName    = tag(fieldFunctionNameStrindex, protowire.VarintType)
	tagMapping         = tag(fieldDictionaryMappingTable, protowire.BytesType)
	tagMappingAttrs    = tag(fieldMappingAttributeIndices, protowire.BytesType)
	tagMappingFile     = tag(fieldMappingFilenameStrindex, protowire.VarintType)
)

// A sample, location, function or mapping is at most about 45 bytes (its
// indices are int32s, five bytes at most), below the 128 that one length
// byte holds: they are written with that byte reserved (beginShort), and
// filled in (endShort).

// beginShort starts a message field shorter than 128 bytes with tag t,
// and returns where its length goes.
func beginShort(b []byte, t byte) ([]byte, int) {
	return append(b, t, 0), len(b) + 1
}

// endShort writes the length of the field whose length goes at lenAt.
func endShort(b []byte, lenAt int) {
	b[lenAt] = byte(len(b) - lenAt - 1)
}

// appendIndexField appends an index field with tag t unless v is 0.
func appendIndexField(b []byte, t byte, v int32) []byte {
	if v == 0 {
		return b
	}
	return appendIndex(append(b, t), v)
}

// appendPackedIndices appends a packed repeated field of a few indices.
func appendPackedIndices(b []byte, t byte, vals ...int32) []byte {
	b, at := beginShort(b, t)
	b = appendIndices(b, vals)
	endShort(b, at)
	return b
}

// encodeSamples writes rows as a profile's samples, each with its
// thread's id and name, and an off-CPU row's reason. The value is a row's
// count, or its nanoseconds off the CPU when nanos is set.
func (a *aggregator) encodeSamples(w *protoWriter, rows []int32, nanos bool) {
	b := w.buf
	for _, i := range rows {
		r := &a.rows[i]
		v := r.count
		if nanos {
			v = r.nanos
		}
		var sample, values int
		b, sample = beginShort(b, tagSample)
		b, values = beginShort(b, tagSampleValues)
		b = appendVarint(b, uint64(v))
		endShort(b, values)
		if reason := a.reasonAttr(r); reason != 0 {
			b = appendPackedIndices(b, tagSampleAttrs, r.thread.id, r.thread.name, reason)
		} else {
			b = appendPackedIndices(b, tagSampleAttrs, r.thread.id, r.thread.name)
		}
		b = appendIndexField(b, tagSampleStack, r.stack)
		endShort(b, sample)
	}
	w.buf = b
}

// encodeLocation writes a location_table entry.
func encodeLocation(w *protoWriter, l locationEntry) {
	if len(l.inlined) > 0 {
		encodeInlinedLocation(w, l)
		return
	}
	b, loc := beginShort(w.buf, tagLocation)
	b = appendLocationFields(b, l)
	endShort(b, loc)
	w.buf = b
}

// encodeInlinedLocation writes a location with inlined calls, whose lines
// may not fit the one-byte length of encodeLocation's.
func encodeInlinedLocation(w *protoWriter, l locationEntry) {
	loc := w.begin(fieldDictionaryLocationTable, 24+12*len(l.inlined))
	w.buf = appendLocationFields(w.buf, l)
	w.end(loc)
}

// appendLocationFields appends a location's fields, as pdata orders them.
func appendLocationFields(b []byte, l locationEntry) []byte {
	if l.attr != 0 {
		b = appendPackedIndices(b, tagLocationAttrs, l.attr)
	}
	if l.function != 0 {
		for _, c := range l.inlined { // pprof's order: innermost first, the physical function last
			b = appendLine(b, c.function, c.line)
		}
		b = appendLine(b, l.function, l.line)
	}
	if l.addr != 0 {
		b = appendVarint(append(b, tagLocationAddress), l.addr)
	}
	return appendIndexField(b, tagLocationMapping, l.mapping)
}

// appendLine writes one Line of a location.
func appendLine(b []byte, function int32, line int64) []byte {
	b, start := beginShort(b, tagLocationLine)
	if line != 0 {
		b = appendVarint(append(b, tagLineLine), uint64(line))
	}
	b = appendIndexField(b, tagLineFunction, function)
	endShort(b, start)
	return b
}

// encodeFunction writes a function_table entry: its name is also its
// system name.
func encodeFunction(w *protoWriter, name, file int32) {
	b, fn := beginShort(w.buf, tagFunction)
	b = appendIndexField(b, tagFunctionFile, file)
	b = appendIndexField(b, tagFunctionSystem, name)
	b = appendIndexField(b, tagFunctionName, name)
	endShort(b, fn)
	w.buf = b
}

// encodeMapping writes a mapping_table entry: addresses are
// object-relative, so memory_start, memory_limit and file_offset stay 0.
func encodeMapping(w *protoWriter, filename, attr int32) {
	b, m := beginShort(w.buf, tagMapping)
	if attr != 0 {
		b = appendPackedIndices(b, tagMappingAttrs, attr)
	}
	b = appendIndexField(b, tagMappingFile, filename)
	endShort(b, m)
	w.buf = b
}

// anyValue is an attribute's value: a string, an int, or none (the
// attribute table's zero entry).
type anyValue struct {
	kind attrKind
	str  string
	num  int64
}

type attrKind uint8

const (
	attrEmpty attrKind = iota
	attrString
	attrInt
)

// encodeAttr writes an attribute_table entry. Its string value stays in
// the entry: pdata's marshaler moves only resource and scope attributes
// into the string table.
func encodeAttr(w *protoWriter, key int32, v anyValue) {
	m := w.begin(fieldDictionaryAttributeTable, len(v.str)+8)
	val := w.begin(fieldKeyValueAndUnitValue, len(v.str)+2)
	switch v.kind {
	case attrString:
		w.bytes(fieldAnyValueStringValue, v.str)
	case attrInt:
		w.varint(fieldAnyValueIntValue, uint64(v.num))
	}
	w.end(val)
	w.nonZero(fieldKeyValueAndUnitKeyStrindex, uint64(key))
	w.end(m)
}
