// Package store keeps cgscope's recent profile history: opaque, already
// encoded records indexed by time and level. It knows nothing about pprof;
// its writer (exporter/history) decides what a record holds and what its
// levels mean.
//
// Records live in generations: a segment file on Disk, a run of records of
// bounded size in Memory. A generation is evicted whole, never in part, so a
// writer may make records depend on earlier records of the same generation
// (the history keeps a dictionary of stacks per generation). AppendFunc
// tells the writer which generation its records go into, and ListGen finds
// the records of one generation.
//
// Two implementations share one contract: Memory, bounded by bytes with the
// oldest generations evicted first, and Disk, append-only segment files
// bounded by age and size. Every record carries a CRC, so a torn or
// corrupted record on disk is skipped and counted instead of poisoning a
// query or the daemon's start.
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
	// Level is the caller's kind of record (the history uses one level for
	// profiling windows, another for dictionary records); the store only
	// filters by it.
	Level      uint8
	Start, End time.Time

	// loc locates the data: an index into Memory, a segment offset on Disk.
	loc locator
}

// Gen returns the generation the record belongs to. Generation ids are
// unique within one opened store and never reused; they are not persisted
// (a restarted Disk numbers its segments afresh).
func (m Meta) Gen() uint64 { return m.loc.gen }

type locator struct {
	gen  uint64
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
	// AppendFunc appends the records build returns, in order, to one
	// generation: the one whose id build is called with. build may be called
	// twice (when the records do not fit the open generation, again with a
	// new one), so it must return records meant for exactly the generation
	// it is given. On Disk the records reach the file in one write and one
	// fsync: a crash tears at most this group. An error from build is
	// returned and nothing is written, except ErrNewGeneration for the open
	// generation, which closes it and calls build again with a new one.
	AppendFunc(build func(gen uint64) ([]Record, error)) error
	// ListGen returns the metadata of the records of level in generation
	// gen, in append order (empty once the generation is evicted).
	ListGen(gen uint64, level uint8) []Meta
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
	EvictedSize    uint64 // records evicted to stay under the size limit (whole generations)
	EvictedAge     uint64 // records evicted past the retention
	CorruptRecords uint64 // torn or corrupted records skipped
	CorruptFiles   uint64 // unreadable segment files skipped
	WriteErrors    uint64
}

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("store closed")

// ErrNewGeneration, returned by an AppendFunc build for the open
// generation, asks for the records to go to a new one instead: build is
// called again with the new generation's id. A writer that repeats per
// generation what its records share (a dictionary) returns it to bound
// what it holds. Returned for a new generation, it is an error like any.
var ErrNewGeneration = errors.New("store: the records need a new generation")

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

// groupBytes is the stored size of a group of records.
func groupBytes(recs []Record) int64 {
	var n int64
	for _, r := range recs {
		n += int64(len(r.Data))
	}
	return n
}

func sortMetas(ms []Meta) {
	sort.SliceStable(ms, func(i, j int) bool { return ms[i].Start.Before(ms[j].Start) })
}
