package otlp

import (
	"encoding/binary"
	"math"
	"math/bits"
	"slices"

	"google.golang.org/protobuf/encoding/protowire"
)

// Field numbers of the OTLP profiles messages this package writes, from
// opentelemetry-proto's profiles v1development as pdata v1.71.0 (pprofile
// v0.165.0) implements it: message, then field name.
const (
	// ExportProfilesServiceRequest
	fieldRequestResourceProfiles protowire.Number = 1 // repeated ResourceProfiles resource_profiles
	fieldRequestDictionary       protowire.Number = 2 // ProfilesDictionary dictionary

	// ResourceProfiles
	fieldResourceProfilesResource      protowire.Number = 1 // Resource resource
	fieldResourceProfilesScopeProfiles protowire.Number = 2 // repeated ScopeProfiles scope_profiles

	// Resource
	fieldResourceAttributes protowire.Number = 1 // repeated KeyValue attributes

	// KeyValue (resource attributes: pdata's marshaler moves their strings
	// into the dictionary, key_strindex and string_value_strindex)
	fieldKeyValueValue       protowire.Number = 2 // AnyValue value
	fieldKeyValueKeyStrindex protowire.Number = 3 // int32 key_strindex

	// AnyValue (oneof value)
	fieldAnyValueStringValue         protowire.Number = 1 // string string_value
	fieldAnyValueIntValue            protowire.Number = 3 // int64 int_value
	fieldAnyValueStringValueStrindex protowire.Number = 8 // int32 string_value_strindex

	// ScopeProfiles
	fieldScopeProfilesScope    protowire.Number = 1 // InstrumentationScope scope
	fieldScopeProfilesProfiles protowire.Number = 2 // repeated Profile profiles

	// InstrumentationScope
	fieldScopeName    protowire.Number = 1 // string name
	fieldScopeVersion protowire.Number = 2 // string version

	// Profile
	fieldProfileSampleType   protowire.Number = 1 // ValueType sample_type
	fieldProfileSamples      protowire.Number = 2 // repeated Sample samples
	fieldProfileTimeUnixNano protowire.Number = 3 // fixed64 time_unix_nano
	fieldProfileDurationNano protowire.Number = 4 // uint64 duration_nano
	fieldProfilePeriodType   protowire.Number = 5 // ValueType period_type
	fieldProfilePeriod       protowire.Number = 6 // int64 period
	fieldProfileProfileID    protowire.Number = 7 // bytes profile_id

	// ValueType
	fieldValueTypeTypeStrindex protowire.Number = 1 // int32 type_strindex
	fieldValueTypeUnitStrindex protowire.Number = 2 // int32 unit_strindex

	// Sample
	fieldSampleStackIndex       protowire.Number = 1 // int32 stack_index
	fieldSampleAttributeIndices protowire.Number = 2 // repeated int32 attribute_indices (packed)
	fieldSampleValues           protowire.Number = 4 // repeated int64 values (packed)

	// ProfilesDictionary
	fieldDictionaryMappingTable   protowire.Number = 1 // repeated Mapping mapping_table
	fieldDictionaryLocationTable  protowire.Number = 2 // repeated Location location_table
	fieldDictionaryFunctionTable  protowire.Number = 3 // repeated Function function_table
	fieldDictionaryLinkTable      protowire.Number = 4 // repeated Link link_table
	fieldDictionaryStringTable    protowire.Number = 5 // repeated string string_table
	fieldDictionaryAttributeTable protowire.Number = 6 // repeated KeyValueAndUnit attribute_table
	fieldDictionaryStackTable     protowire.Number = 7 // repeated Stack stack_table

	// Mapping
	fieldMappingFilenameStrindex protowire.Number = 4 // int32 filename_strindex
	fieldMappingAttributeIndices protowire.Number = 5 // repeated int32 attribute_indices (packed)

	// Location
	fieldLocationMappingIndex     protowire.Number = 1 // int32 mapping_index
	fieldLocationAddress          protowire.Number = 2 // uint64 address
	fieldLocationLines            protowire.Number = 3 // repeated Line lines
	fieldLocationAttributeIndices protowire.Number = 4 // repeated int32 attribute_indices (packed)

	// Line
	fieldLineFunctionIndex protowire.Number = 1 // int32 function_index
	fieldLineLine          protowire.Number = 2 // int64 line

	// Function
	fieldFunctionNameStrindex       protowire.Number = 1 // int32 name_strindex
	fieldFunctionSystemNameStrindex protowire.Number = 2 // int32 system_name_strindex
	fieldFunctionFilenameStrindex   protowire.Number = 3 // int32 filename_strindex

	// Stack
	fieldStackLocationIndices protowire.Number = 1 // repeated int32 location_indices (packed)

	// KeyValueAndUnit
	fieldKeyValueAndUnitKeyStrindex protowire.Number = 1 // int32 key_strindex
	fieldKeyValueAndUnitValue       protowire.Number = 2 // AnyValue value

	// Link
	fieldLinkTraceID protowire.Number = 1 // bytes trace_id
	fieldLinkSpanID  protowire.Number = 2 // bytes span_id
)

// protoWriter appends protobuf to buf. Every field number above is below
// 16, so each tag is one byte.
//
// A message field's length precedes its content, which is written after
// it: begin reserves room for the length (as many bytes as a guessed
// length takes), end writes it, moving the content when the guess took
// another number of bytes. Lengths are written in their shortest form, as
// every protobuf encoder writes them.
type protoWriter struct {
	buf []byte
}

func tag(num protowire.Number, typ protowire.Type) byte {
	return byte(num)<<3 | byte(typ)
}

// message marks a message field begun: where its content starts and how
// many bytes were reserved for its length just before.
type message struct{ start, reserved int }

// begin starts a message field whose content is probably about guess
// bytes long.
func (w *protoWriter) begin(num protowire.Number, guess int) message {
	r := protowire.SizeVarint(uint64(guess))
	w.buf = append(w.buf, tag(num, protowire.BytesType))
	w.buf = append(w.buf, make([]byte, r)...)
	return message{start: len(w.buf), reserved: r}
}

// end writes the length of the message m begun.
func (w *protoWriter) end(m message) {
	n := len(w.buf) - m.start
	if need := protowire.SizeVarint(uint64(n)); need != m.reserved {
		w.buf = w.shift(m.start, need-m.reserved)
	}
	protowire.AppendVarint(w.buf[:m.start-m.reserved], uint64(n)) // in place: the room is there
}

// shift moves buf[from:] by d bytes (d < 0: towards the start).
func (w *protoWriter) shift(from, d int) []byte {
	b := w.buf
	if d > 0 {
		b = append(b, make([]byte, d)...)
	}
	copy(b[from+d:], b[from:len(w.buf)])
	return b[:len(w.buf)+d]
}

// appendVarint is protowire.AppendVarint with one-byte values inline.
func appendVarint(b []byte, v uint64) []byte {
	if v < 1<<7 {
		return append(b, byte(v))
	}
	return protowire.AppendVarint(b, v)
}

// appendIndex appends a table index (an int32) as a varint.
func appendIndex(b []byte, v int32) []byte {
	return appendIndices(b, []int32{v})
}

// appendIndices appends table indices as varints. Most of a request's
// bytes are indices of one to three bytes in no order, so those below
// 2^28 are written without branching on their size: the varint's four
// possible bytes at once, then the length advanced by its size.
func appendIndices(b []byte, vals []int32) []byte {
	b = slices.Grow(b, protowire.SizeVarint(math.MaxUint64)*len(vals))
	n := len(b)
	b = b[:cap(b)]
	for _, v := range vals {
		u := uint32(v)
		if u >= 1<<28 { // or negative: ten bytes
			n = len(protowire.AppendVarint(b[:n], uint64(v))) // within b's capacity
			continue
		}
		s := varintShapes[bits.Len32(u)]
		binary.LittleEndian.PutUint32(b[n:], u&0x7f|u<<1&0x7f00|u<<2&0x7f0000|u<<3&0x7f000000|s.more)
		n += int(s.size)
	}
	return b[:n]
}

// varintShapes are, by the bit length of a value below 2^28, the size of
// its varint and its continuation bits (on every byte but the last).
var varintShapes = func() (shapes [29]struct {
	size uint8
	more uint32
}) {
	for bitLen := range shapes {
		size := max(1, (bitLen+6)/7)
		shapes[bitLen].size = uint8(size)
		shapes[bitLen].more = 0x808080 & (1<<(8*(size-1)) - 1)
	}
	return shapes
}()

// varint writes a varint field, also when v is 0.
func (w *protoWriter) varint(num protowire.Number, v uint64) {
	w.buf = appendVarint(append(w.buf, tag(num, protowire.VarintType)), v)
}

// nonZero writes a varint field unless v is 0, its default, which proto3
// leaves out.
func (w *protoWriter) nonZero(num protowire.Number, v uint64) {
	if v != 0 {
		w.varint(num, v)
	}
}

func (w *protoWriter) bytes(num protowire.Number, s string) {
	w.buf = protowire.AppendString(append(w.buf, tag(num, protowire.BytesType)), s)
}

// nonEmpty writes a string field unless s is "", its default.
func (w *protoWriter) nonEmpty(num protowire.Number, s string) {
	if s != "" {
		w.bytes(num, s)
	}
}

func (w *protoWriter) fixed64(num protowire.Number, v uint64) {
	w.buf = protowire.AppendFixed64(append(w.buf, tag(num, protowire.Fixed64Type)), v)
}
