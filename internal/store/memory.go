package store

import (
	"errors"
	"sync"
	"time"
)

// Memory holds records in memory up to a byte limit; beyond it the oldest
// generations are evicted first, each as a whole. A generation holds up to
// a sixteenth of the limit (a single group larger than that gets one of its
// own), so eviction frees memory in steps of about limit/16. Record data is
// never mutated after Append, so readers keep using data evicted while they
// read it.
type Memory struct {
	limit, genBytes int64

	mu      sync.RWMutex
	records []Meta   // in append order
	gens    []memGen // oldest first; the last one is open unless evicted
	open    bool     // whether the last gen still takes records
	nextGen uint64
	bytes   int64
	closed  bool
	c       counters
}

// memGen is one generation: the next n records of Memory.records.
type memGen struct {
	id    uint64
	n     int
	bytes int64
}

// NewMemory returns a store holding at most limit bytes of record data.
func NewMemory(limit int64) *Memory {
	return &Memory{limit: limit, genBytes: max(limit/16, 1), nextGen: 1}
}

// Append implements Store.
func (m *Memory) Append(r Record) error {
	return m.AppendFunc(func(uint64) ([]Record, error) { return []Record{r}, nil })
}

// AppendFunc implements Store.
func (m *Memory) AppendFunc(build func(gen uint64) ([]Record, error)) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	var recs []Record
	if m.open {
		g := &m.gens[len(m.gens)-1]
		var err error
		recs, err = build(g.id)
		switch {
		case errors.Is(err, ErrNewGeneration):
			m.open, recs = false, nil
		case err != nil:
			return err
		case g.bytes+groupBytes(recs) > m.genBytes:
			m.open, recs = false, nil
		}
	}
	if !m.open {
		id := m.nextGen
		m.nextGen++
		var err error
		if recs, err = build(id); err != nil {
			return err
		}
		m.gens = append(m.gens, memGen{id: id})
		m.open = true
	}
	g := &m.gens[len(m.gens)-1]
	for _, r := range recs {
		meta := r.Meta
		meta.loc = locator{gen: g.id, mem: r.Data, size: len(r.Data)}
		m.records = append(m.records, meta)
		g.n++
		g.bytes += int64(len(r.Data))
		m.bytes += int64(len(r.Data))
		m.c.appended.Add(1)
		m.c.appendedBytes.Add(uint64(len(r.Data)))
	}
	m.evictLocked()
	return nil
}

// evictLocked drops the oldest generations until the data fits the limit.
// The slices are copied on each eviction, which happens at most once per
// sixteenth of the limit written, so eviction stays cheap amortized.
func (m *Memory) evictLocked() {
	n, k := 0, 0
	for m.bytes > m.limit && k < len(m.gens) {
		g := m.gens[k]
		m.bytes -= g.bytes
		n += g.n
		k++
	}
	if k == 0 {
		return
	}
	if k == len(m.gens) {
		m.open = false
	}
	m.c.evictedSize.Add(uint64(n))
	m.records = append(m.records[:0:0], m.records[n:]...)
	m.gens = append(m.gens[:0:0], m.gens[k:]...)
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

// ListGen implements Store.
func (m *Memory) ListGen(gen uint64, level uint8) []Meta {
	m.mu.RLock()
	defer m.mu.RUnlock()
	off := 0
	for _, g := range m.gens {
		if g.id != gen {
			off += g.n
			continue
		}
		var out []Meta
		for _, r := range m.records[off : off+g.n] {
			if r.Level == level {
				out = append(out, r)
			}
		}
		return out
	}
	return nil
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
