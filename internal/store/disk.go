package store

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DiskOptions configure a Disk store.
type DiskOptions struct {
	Dir       string
	Retention time.Duration // records ending before now-Retention are deleted
	MaxBytes  int64         // total size of the segment files
	// SegmentBytes and SegmentSpan bound one segment file: eviction deletes
	// whole segments, so they set its granularity. A segment is also one
	// generation (see AppendFunc), so the writer repeats per segment what its
	// records share. Zero picks MaxBytes/16 (at least 64 KiB, at most
	// 64 MiB) and Retention/24 (at least 1 min; 1 h without a retention).
	SegmentBytes int64
	SegmentSpan  time.Duration
	// NoSync skips fsync after each record (benchmarks only).
	NoSync bool
	Now    func() time.Time
	Logger *slog.Logger
}

// Disk is an append-only store of segment files in one directory. Each
// segment is one generation. A group of records (AppendFunc) is written with
// one write and an fsync, and segments are never rewritten: a crash tears at
// most the group being written, which the next start skips. After a
// restart, or a failed write, appends continue in a new segment. An index of
// every record lives in memory (a few dozen bytes per record) so queries
// read only the records they need.
type Disk struct {
	opts DiskOptions
	log  *slog.Logger

	mu       sync.RWMutex
	segments []*segment // oldest first; the last one may be active
	active   *os.File   // open for append, belongs to the last segment
	nextGen  uint64
	bytes    int64
	closed   bool
	c        counters
}

// segment is one file and the index of its valid records.
type segment struct {
	gen     uint64
	path    string
	size    int64
	maxEnd  time.Time
	records []Meta
}

const segmentPrefix, segmentSuffix = "seg-", ".cgs"

// OpenDisk opens (creating if needed) the store in opts.Dir, indexing every
// existing segment. Unreadable files and records are skipped with a log line
// and counted; they never make OpenDisk fail.
func OpenDisk(opts DiskOptions) (*Disk, error) {
	if opts.MaxBytes <= 0 {
		return nil, errors.New("store: MaxBytes must be positive")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.SegmentBytes <= 0 {
		opts.SegmentBytes = min(max(opts.MaxBytes/16, 64<<10), 64<<20)
	}
	if opts.SegmentSpan <= 0 {
		opts.SegmentSpan = time.Hour
		if opts.Retention > 0 {
			opts.SegmentSpan = max(opts.Retention/24, time.Minute)
		}
	}
	d := &Disk{opts: opts, log: opts.Logger, nextGen: 1}
	if d.log == nil {
		d.log = slog.Default()
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if err := d.loadSegments(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.enforceLocked()
	d.mu.Unlock()
	return d, nil
}

func (d *Disk) loadSegments() error {
	entries, err := os.ReadDir(d.opts.Dir)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if !e.Type().IsRegular() || !strings.HasPrefix(name, segmentPrefix) || !strings.HasSuffix(name, segmentSuffix) {
			continue
		}
		seg, err := d.indexSegment(filepath.Join(d.opts.Dir, name))
		if err != nil {
			d.c.corruptFiles.Add(1)
			d.log.Warn("history store: skipping unreadable segment", "file", name, "err", err)
			continue
		}
		d.segments = append(d.segments, seg)
		d.bytes += seg.size
	}
	sort.Slice(d.segments, func(i, j int) bool { return segmentID(d.segments[i]) < segmentID(d.segments[j]) })
	for _, seg := range d.segments {
		seg.gen = d.nextGen
		d.nextGen++
		for i := range seg.records {
			seg.records[i].loc.gen = seg.gen
		}
	}
	return nil
}

func segmentID(s *segment) int64 {
	name := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(s.path), segmentPrefix), segmentSuffix)
	n, _ := strconv.ParseInt(name, 16, 64)
	return n
}

// indexSegment reads a segment and indexes its valid records. Segments are
// bounded by SegmentBytes, so reading one whole is bounded too.
func (d *Disk) indexSegment(path string) (*segment, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) < len(segmentMagic) || string(b[:len(segmentMagic)]) != segmentMagic {
		return nil, errors.New("not a cgscope segment (bad file header)")
	}
	seg := &segment{path: path, size: int64(len(b))}
	off := len(segmentMagic)
	for off < len(b) {
		h, err := parseHeader(b[off:])
		if err == nil && off+headerSize+h.size <= len(b) {
			data := b[off+headerSize : off+headerSize+h.size]
			if err = h.check(b[off:], data); err == nil {
				seg.add(h.meta(), int64(off), h.size)
				off += headerSize + h.size
				continue
			}
		}
		// Torn tail or corruption: count it and resume at the next magic.
		d.c.corruptRecords.Add(1)
		next := nextMagic(b, off+1)
		d.log.Warn("history store: skipping corrupt record", "file", filepath.Base(path), "offset", off, "resume_at", next)
		if next < 0 {
			break
		}
		off = next
	}
	return seg, nil
}

func (s *segment) add(m Meta, off int64, size int) {
	m.loc = locator{gen: s.gen, seg: s, off: off, size: size}
	s.records = append(s.records, m)
	if m.End.After(s.maxEnd) {
		s.maxEnd = m.End
	}
}

// Append implements Store: one write and one fsync per record.
func (d *Disk) Append(r Record) error {
	return d.AppendFunc(func(uint64) ([]Record, error) { return []Record{r}, nil })
}

// AppendFunc implements Store: one write and one fsync per group.
func (d *Disk) AppendFunc(build func(gen uint64) ([]Record, error)) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	var buf []byte
	var recs []Record
	if d.active != nil {
		seg := d.segments[len(d.segments)-1]
		var err error
		recs, err = build(seg.gen)
		switch {
		case errors.Is(err, ErrNewGeneration):
			d.closeActiveLocked()
		case err != nil:
			return err
		case len(recs) == 0:
			return nil
		default:
			buf = encodeRecords(recs)
			first := seg.records[0].Start
			if seg.size+int64(len(buf)) > d.opts.SegmentBytes || recs[0].Start.Sub(first) >= d.opts.SegmentSpan {
				d.closeActiveLocked()
			}
		}
	}
	if d.active == nil {
		gen := d.nextGen
		d.nextGen++ // never reused, even if creating the segment fails
		var err error
		if recs, err = build(gen); err != nil {
			return err
		}
		if len(recs) == 0 {
			return nil
		}
		buf = encodeRecords(recs)
		if err := d.createSegmentLocked(recs[0].Start, gen); err != nil {
			d.c.writeErrors.Add(1)
			return err
		}
	}
	if err := d.writeLocked(recs, buf); err != nil {
		d.c.writeErrors.Add(1)
		d.closeActiveLocked() // the tail may be torn: continue in a fresh segment
		return err
	}
	d.c.appended.Add(uint64(len(recs)))
	d.c.appendedBytes.Add(uint64(groupBytes(recs)))
	d.enforceLocked()
	return nil
}

// writeLocked writes the encoded group buf of recs to the active segment
// and indexes its records.
func (d *Disk) writeLocked(recs []Record, buf []byte) error {
	seg := d.segments[len(d.segments)-1]
	if _, err := d.active.Write(buf); err != nil {
		return fmt.Errorf("store: writing %s: %w", seg.path, err)
	}
	if !d.opts.NoSync {
		if err := d.active.Sync(); err != nil {
			return fmt.Errorf("store: syncing %s: %w", seg.path, err)
		}
	}
	off := seg.size
	for _, r := range recs {
		seg.add(r.Meta, off, len(r.Data))
		off += int64(headerSize + len(r.Data))
	}
	d.bytes += off - seg.size
	seg.size = off
	return nil
}

func (d *Disk) createSegmentLocked(start time.Time, gen uint64) error {
	id := start.UnixNano()
	for {
		path := filepath.Join(d.opts.Dir, fmt.Sprintf("%s%016x%s", segmentPrefix, id, segmentSuffix))
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
		if errors.Is(err, os.ErrExist) {
			id++
			continue
		}
		if err != nil {
			return fmt.Errorf("store: %w", err)
		}
		if _, err := f.Write([]byte(segmentMagic)); err != nil {
			f.Close()
			os.Remove(path)
			return fmt.Errorf("store: %w", err)
		}
		d.syncDir()
		d.active = f
		d.segments = append(d.segments, &segment{gen: gen, path: path, size: int64(len(segmentMagic))})
		d.bytes += int64(len(segmentMagic))
		return nil
	}
}

// syncDir makes a new or removed file name durable.
func (d *Disk) syncDir() {
	if d.opts.NoSync {
		return
	}
	if dir, err := os.Open(d.opts.Dir); err == nil {
		dir.Sync()
		dir.Close()
	}
}

func (d *Disk) closeActiveLocked() {
	if d.active != nil {
		d.active.Close()
		d.active = nil
	}
}

// enforceLocked deletes segments past the retention, then the oldest ones
// while the total exceeds MaxBytes. The newest segment is kept unless it is
// itself entirely past the retention.
func (d *Disk) enforceLocked() {
	if d.opts.Retention > 0 {
		cutoff := d.opts.Now().Add(-d.opts.Retention)
		for len(d.segments) > 0 && d.segments[0].maxEnd.Before(cutoff) && !d.segments[0].maxEnd.IsZero() {
			d.removeOldestLocked(&d.c.evictedAge)
		}
	}
	for d.bytes > d.opts.MaxBytes && len(d.segments) > 1 {
		d.removeOldestLocked(&d.c.evictedSize)
	}
}

func (d *Disk) removeOldestLocked(reason interface{ Add(uint64) uint64 }) {
	seg := d.segments[0]
	if len(d.segments) == 1 {
		d.closeActiveLocked()
	}
	if err := os.Remove(seg.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		d.log.Warn("history store: removing segment", "file", seg.path, "err", err)
	}
	d.syncDir()
	d.segments = d.segments[1:]
	d.bytes -= seg.size
	reason.Add(uint64(len(seg.records)))
}

// List implements Store.
func (d *Disk) List(level uint8, from, to time.Time) []Meta {
	d.mu.RLock()
	defer d.mu.RUnlock()
	var out []Meta
	for _, seg := range d.segments {
		for _, r := range seg.records {
			if r.Level == level && r.Overlaps(from, to) {
				out = append(out, r)
			}
		}
	}
	sortMetas(out)
	return out
}

// ListGen implements Store.
func (d *Disk) ListGen(gen uint64, level uint8) []Meta {
	d.mu.RLock()
	defer d.mu.RUnlock()
	for _, seg := range d.segments {
		if seg.gen != gen {
			continue
		}
		var out []Meta
		for _, r := range seg.records {
			if r.Level == level {
				out = append(out, r)
			}
		}
		return out
	}
	return nil
}

// Load implements Store. It opens each segment once per run of consecutive
// records in it; a segment deleted meanwhile is skipped as evicted.
func (d *Disk) Load(metas []Meta, fn func(Meta, []byte) error) error {
	var (
		f    *os.File
		path string
	)
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	for _, m := range metas {
		seg := m.loc.seg
		if seg == nil {
			continue
		}
		if seg.path != path {
			if f != nil {
				f.Close()
				f = nil
			}
			path = seg.path
			var err error
			if f, err = os.Open(path); err != nil {
				f = nil
				continue // evicted since List
			}
		}
		if f == nil {
			continue
		}
		data, err := d.read(f, m)
		if err != nil {
			continue
		}
		if err := fn(m, data); err != nil {
			return err
		}
	}
	return nil
}

// read reads and verifies one record; corruption found now (the file changed
// under us since it was indexed) is logged and counted.
func (d *Disk) read(f *os.File, m Meta) ([]byte, error) {
	buf := make([]byte, headerSize+m.loc.size)
	_, err := f.ReadAt(buf, m.loc.off)
	if err == nil {
		var h header
		if h, err = parseHeader(buf); err == nil {
			err = h.check(buf, buf[headerSize:])
		}
	}
	if err != nil {
		if errors.Is(err, io.EOF) && !fileExists(f.Name()) {
			return nil, err
		}
		d.c.corruptRecords.Add(1)
		d.log.Warn("history store: skipping unreadable record", "file", filepath.Base(f.Name()), "offset", m.loc.off, "err", err)
		return nil, err
	}
	return buf[headerSize:], nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// Latest implements Store.
func (d *Disk) Latest(level uint8) (time.Time, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	var latest time.Time
	found := false
	for _, seg := range d.segments {
		for _, r := range seg.records {
			if r.Level == level && (!found || r.Start.After(latest)) {
				latest, found = r.Start, true
			}
		}
	}
	return latest, found
}

// Stats implements Store.
func (d *Disk) Stats() Stats {
	d.mu.RLock()
	s := Stats{Bytes: d.bytes}
	for _, seg := range d.segments {
		s.Records += int64(len(seg.records))
	}
	d.mu.RUnlock()
	d.c.fill(&s)
	return s
}

// Close implements Store.
func (d *Disk) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	d.closeActiveLocked()
	return nil
}
