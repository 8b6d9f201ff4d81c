package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"time"
)

// On-disk layout. A segment file starts with segmentMagic; then records,
// each a fixed header followed by its data:
//
//	0  4  recordMagic
//	4  1  level
//	5  3  reserved, zero
//	8  8  start, Unix nanoseconds, little endian
//	16 8  end
//	24 4  data length
//	28 4  CRC-32C of bytes 0..27 and the data
//
// The magic lets a reader resynchronize after a corrupted length; the CRC
// covers the header too, so a flipped time or level is caught as well.
const (
	segmentMagic = "CGSSEG01"
	recordMagic  = "CGR1"
	headerSize   = 32
	// maxRecordSize bounds a length read from disk, so a corrupted length
	// cannot make a reader allocate gigabytes.
	maxRecordSize = 256 << 20
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

var errCorrupt = errors.New("corrupt record")

// encodeRecord returns header and data as one buffer, so the record reaches
// the file in a single write.
func encodeRecord(r Record) []byte {
	buf := make([]byte, headerSize+len(r.Data))
	copy(buf, recordMagic)
	buf[4] = r.Level
	binary.LittleEndian.PutUint64(buf[8:], uint64(r.Start.UnixNano()))
	binary.LittleEndian.PutUint64(buf[16:], uint64(r.End.UnixNano()))
	binary.LittleEndian.PutUint32(buf[24:], uint32(len(r.Data)))
	copy(buf[headerSize:], r.Data)
	crc := crc32.Update(crc32.Checksum(buf[:28], crcTable), crcTable, r.Data)
	binary.LittleEndian.PutUint32(buf[28:], crc)
	return buf
}

// encodeRecords encodes a group of records into one buffer, for one write.
func encodeRecords(recs []Record) []byte {
	if len(recs) == 1 {
		return encodeRecord(recs[0])
	}
	var buf []byte
	for _, r := range recs {
		buf = append(buf, encodeRecord(r)...)
	}
	return buf
}

// header is a parsed record header.
type header struct {
	level      uint8
	start, end int64
	size       int
	crc        uint32
}

func parseHeader(b []byte) (header, error) {
	if len(b) < headerSize || string(b[:4]) != recordMagic {
		return header{}, errCorrupt
	}
	h := header{
		level: b[4],
		start: int64(binary.LittleEndian.Uint64(b[8:])),
		end:   int64(binary.LittleEndian.Uint64(b[16:])),
		size:  int(binary.LittleEndian.Uint32(b[24:])),
		crc:   binary.LittleEndian.Uint32(b[28:]),
	}
	if h.size > maxRecordSize || h.end < h.start {
		return header{}, errCorrupt
	}
	return h, nil
}

// check verifies the CRC of a header and its data.
func (h header) check(hdr, data []byte) error {
	if crc32.Update(crc32.Checksum(hdr[:28], crcTable), crcTable, data) != h.crc {
		return errCorrupt
	}
	return nil
}

func (h header) meta() Meta {
	return Meta{Level: h.level, Start: time.Unix(0, h.start), End: time.Unix(0, h.end)}
}

// nextMagic returns the offset of the next record magic in b at or after
// from, or -1.
func nextMagic(b []byte, from int) int {
	if from >= len(b) {
		return -1
	}
	i := bytes.Index(b[from:], []byte(recordMagic))
	if i < 0 {
		return -1
	}
	return from + i
}
