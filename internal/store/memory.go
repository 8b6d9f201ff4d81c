package store

import (
	"sync"
	"time"
)

// Memory holds records in memory up to a byte limit; beyond it the records
// appended first are evicted first. Record data is never mutated after
// Append, so readers keep using data evicted while they read it.
type Memory struct {
	limit int64

	mu      sync.RWMutex
	records []Meta // in append order
	bytes   int64
	closed  bool
	c       counters
}

// NewMemory returns a store holding at most limit bytes of record data.
func NewMemory(limit int64) *Memory { return &Memory{limit: limit} }

// Append implements Store.
func (m *Memory) Append(r Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	meta := r.Meta
	meta.loc = locator{mem: r.Data, size: len(r.Data)}
	m.records = append(m.records, meta)
	m.bytes += int64(len(r.Data))
	m.c.appended.Add(1)
	m.c.appendedBytes.Add(uint64(len(r.Data)))
	m.evictLocked()
	return nil
}

// evictLocked drops the oldest records until the data fits the limit. The
// slice is compacted only when half of it is dead, so eviction stays O(1)
// amortized.
func (m *Memory) evictLocked() {
	n := 0
	for m.bytes > m.limit && n < len(m.records) {
		m.bytes -= int64(m.records[n].loc.size)
		m.records[n] = Meta{}
		n++
	}
	if n == 0 {
		return
	}
	m.c.evictedSize.Add(uint64(n))
	m.records = append(m.records[:0:0], m.records[n:]...)
}

// List implements Store.
func (m *Memory) List(level uint8, from, to time.Time) []Meta {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var out []Meta
	for _, r := range m.records {
		if r.Level == level && r.Overlaps(from, to) {
			out = append(out, r)
		}
	}
	sortMetas(out)
	return out
}

// Load implements Store.
func (m *Memory) Load(metas []Meta, fn func(Meta, []byte) error) error {
	for _, meta := range metas {
		if err := fn(meta, meta.loc.mem); err != nil {
			return err
		}
	}
	return nil
}

// Latest implements Store.
func (m *Memory) Latest(level uint8) (time.Time, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var latest time.Time
	found := false
	for _, r := range m.records {
		if r.Level == level && (!found || r.Start.After(latest)) {
			latest, found = r.Start, true
		}
	}
	return latest, found
}

// Stats implements Store.
func (m *Memory) Stats() Stats {
	m.mu.RLock()
	s := Stats{Records: int64(len(m.records)), Bytes: m.bytes}
	m.mu.RUnlock()
	m.c.fill(&s)
	return s
}

// Close implements Store.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}
