// Package store keeps cgscope's recent profile history: opaque, already
// encoded records (one per profiling window, plus coarser rollups) indexed
// by time and level. It knows nothing about pprof; the exporter decides what
// a record holds.
//
// Two implementations share one contract: Memory, bounded by bytes with the
// oldest records evicted first, and Disk, append-only segment files bounded
// by age and size. Every record carries a CRC, so a torn or corrupted record
// on disk is skipped and counted instead of poisoning a query or the
// daemon's start.
package store

import (
	"errors"
	"sort"
	"sync/atomic"
	"time"
)

// Record is one stored blob covering [Start, End).
type Record struct {
	Meta
	Data []byte
}

// Meta describes a record without its data.
type Meta struct {
	// Level 0 is a profiling window; higher levels are rollups the caller
	// builds from lower ones.
	Level      uint8
	Start, End time.Time

	// loc locates the data: an index into Memory, a segment offset on Disk.
	loc locator
}

type locator struct {
	seg  *segment
	off  int64
	size int
	mem  []byte
}

// Overlaps reports whether the record covers any of [from, to).
func (m Meta) Overlaps(from, to time.Time) bool {
	return m.Start.Before(to) && m.End.After(from)
}

// Store is the history store contract. All methods are safe for concurrent
// use; List and Load never block Append for longer than an index copy.
type Store interface {
	// Append stores r. Records of a level are appended in start order.
	Append(r Record) error
	// List returns the metadata of the records of level overlapping
	// [from, to), sorted by start.
	List(level uint8, from, to time.Time) []Meta
	// Load calls fn with the data of each record of metas, in order. A record
	// evicted since List is skipped silently; a corrupt one is skipped and
	// counted. An error from fn stops Load and is returned.
	Load(metas []Meta, fn func(Meta, []byte) error) error
	// Latest returns the start of the newest record of level.
	Latest(level uint8) (time.Time, bool)
	Stats() Stats
	Close() error
}

// Stats are the store's counters, for self-metrics.
type Stats struct {
	Records, Bytes int64 // held now
	Appended       uint64
	AppendedBytes  uint64
	EvictedSize    uint64 // records evicted to stay under the size limit
	EvictedAge     uint64 // records evicted past the retention
	CorruptRecords uint64 // torn or corrupted records skipped
	CorruptFiles   uint64 // unreadable segment files skipped
	WriteErrors    uint64
}

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("store closed")

// counters are the monotonic Stats fields, updated without locks.
type counters struct {
	appended, appendedBytes      atomic.Uint64
	evictedSize, evictedAge      atomic.Uint64
	corruptRecords, corruptFiles atomic.Uint64
	writeErrors                  atomic.Uint64
}

func (c *counters) fill(s *Stats) {
	s.Appended = c.appended.Load()
	s.AppendedBytes = c.appendedBytes.Load()
	s.EvictedSize = c.evictedSize.Load()
	s.EvictedAge = c.evictedAge.Load()
	s.CorruptRecords = c.corruptRecords.Load()
	s.CorruptFiles = c.corruptFiles.Load()
	s.WriteErrors = c.writeErrors.Load()
}

func sortMetas(ms []Meta) {
	sort.SliceStable(ms, func(i, j int) bool { return ms[i].Start.Before(ms[j].Start) })
}
