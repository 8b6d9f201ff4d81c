package symbolizer

import (
	"encoding/binary"
	"encoding/hex"
	"testing"
)

// note encodes one ELF note with the given alignment.
func note(name string, typ uint32, desc []byte, align int) []byte {
	pad := func(b []byte) []byte {
		for len(b)%align != 0 {
			b = append(b, 0)
		}
		return b
	}
	var hdr [12]byte
	binary.LittleEndian.PutUint32(hdr[0:], uint32(len(name)))
	binary.LittleEndian.PutUint32(hdr[4:], uint32(len(desc)))
	binary.LittleEndian.PutUint32(hdr[8:], typ)
	out := append(hdr[:], pad([]byte(name))...)
	return append(out, pad(desc)...)
}

func TestParseNotes(t *testing.T) {
	gnuID := []byte{0xde, 0xad, 0xbe, 0xef, 0x01}
	goID := []byte("abc/def")
	property := note("GNU\x00", 5, make([]byte, 16), 8) // NT_GNU_PROPERTY_TYPE_0, 8-aligned
	tests := []struct {
		name      string
		data      []byte
		align     uint64
		wantGNU   string
		wantGoHex string
	}{
		{"gnu", note("GNU\x00", ntGNUBuildID, gnuID, 4), 4, "deadbeef01", ""},
		{"go only", note("Go\x00\x00", ntGoBuildID, goID, 4), 4, "", hex.EncodeToString(goID)},
		{"go then gnu", append(note("Go\x00\x00", ntGoBuildID, goID, 4), note("GNU\x00", ntGNUBuildID, gnuID, 4)...), 4, "deadbeef01", hex.EncodeToString(goID)},
		{"8-aligned", append(property, note("GNU\x00", ntGNUBuildID, gnuID, 8)...), 8, "deadbeef01", ""},
		{"wrong owner", note("XYZ\x00", ntGNUBuildID, gnuID, 4), 4, "", ""},
		{"truncated", note("GNU\x00", ntGNUBuildID, gnuID, 4)[:18], 4, "", ""},
		{"huge sizes", []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 3, 0, 0, 0}, 4, "", ""},
	}
	for _, tc := range tests {
		gnu, goRaw := parseNotes(binary.LittleEndian, tc.data, tc.align)
		if gnu != tc.wantGNU || hex.EncodeToString(goRaw) != tc.wantGoHex {
			t.Errorf("%s: got %q, Go %x; want %q, %s", tc.name, gnu, goRaw, tc.wantGNU, tc.wantGoHex)
		}
	}
}
