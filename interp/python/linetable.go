package python

// lineOf returns the source line of the instruction at byte offset addrq
// of a code object, from its co_linetable and co_firstlineno, as
// PyCode_Addr2Line does (Objects/codeobject.c; the format is
// Objects/locations.md, the same in 3.11, 3.12 and 3.13); 0 when the
// table gives the instruction no line, or does not reach it.
//
// The table is a sequence of entries, each covering 1 to 8 code units: a
// first byte with bit 7 set, the entry's code in bits 3..6 and its length
// less one in bits 0..2, then bytes with bit 7 clear. The code says how the
// line moves from the previous entry's: 0..9 not at all (short forms), 10..12
// by code-10 (one-line forms), 13 and 14 by the signed varint that follows
// (no-column and long forms), and 15 marks instructions without a line.
func lineOf(table []byte, firstLine int32, addrq int64) int {
	if addrq < 0 {
		return int(firstLine)
	}
	line := int64(firstLine)
	var start int64
	for i := 0; i < len(table); {
		b := table[i]
		if b&0x80 == 0 {
			return 0 // not at an entry's first byte: a damaged table
		}
		code := b >> 3 & 15
		end := start + int64(b&7+1)*codeUnitBytes
		switch {
		case code == 13 || code == 14:
			line += svarint(table[i+1:])
		case code >= 10 && code <= 12:
			line += int64(code - 10)
		}
		if addrq < end {
			if code == 15 {
				return 0
			}
			return int(line)
		}
		start = end
		for i++; i < len(table) && table[i]&0x80 == 0; i++ {
		}
	}
	return 0
}

// svarint reads a signed varint of 6-bit chunks, least significant first,
// bit 6 set on all but the last; its lowest bit is the sign
// (scan_varint and scan_signed_varint in Objects/codeobject.c).
func svarint(b []byte) int64 {
	var u uint64
	for i, shift := 0, 0; i < len(b) && shift < 60; i, shift = i+1, shift+6 {
		u |= uint64(b[i]&63) << shift
		if b[i]&64 == 0 {
			break
		}
	}
	if u&1 != 0 {
		return -int64(u >> 1)
	}
	return int64(u >> 1)
}
