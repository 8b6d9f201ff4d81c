package symbolizer

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// What the symbolizer knows of a process's code, for other readers of the
// same objects (the unwind tables): each object is opened once, by the
// symbolizer, for every purpose.

// ObjectID identifies an object the symbolizer has cached: its build ID, or
// its file's identity. Comparable; the zero ID is no object.
type ObjectID struct{ key objKey }

// String is a short form for logs.
func (id ObjectID) String() string {
	if id.key.buildID != "" {
		return id.key.buildID
	}
	return fmt.Sprintf("%d:%d", id.key.dev, id.key.inode)
}

// ExecMapping is an executable mapping of a process and its object.
type ExecMapping struct {
	Mapping
	// Object is the mapped object; zero for anonymous code (a JIT's) and
	// files that could not be read.
	Object ObjectID
}

// ErrNoProcess is returned for a process the symbolizer holds no snapshot of.
var ErrNoProcess = errors.New("no snapshot of the process")

// ExecMappings returns the executable mappings of pid's latest snapshot
// (taken by ProcessStarted), sorted by address.
func (s *Symbolizer) ExecMappings(pid uint32) ([]ExecMapping, error) {
	s.mu.Lock()
	p, ok := s.procs.peek(pid)
	s.mu.Unlock()
	if !ok || p == nil {
		return nil, fmt.Errorf("symbolizer: pid %d: %w", pid, ErrNoProcess)
	}
	out := make([]ExecMapping, len(p.maps))
	for i := range p.maps {
		out[i].Mapping = p.maps[i].Mapping
		if p.maps[i].hasObj {
			out[i].Object = ObjectID{p.maps[i].obj}
		}
	}
	return out, nil
}

// ReadObject calls read with the contents of object id, as mapped by pid
// (whose files are reached through its /proc entries if the object has to
// be opened again). The object is held in the cache while read runs.
func (s *Symbolizer) ReadObject(pid uint32, id ObjectID, read func(io.ReaderAt) error) error {
	e := s.acquireCached(id.key)
	if e == nil {
		if own := s.ownVDSO(); own != nil && own.key == id.key {
			return read(bytes.NewReader(own.ent.image)) // never cached, never freed
		}
		return fmt.Errorf("symbolizer: object %s is no longer cached", id)
	}
	defer e.release()
	if e.image != nil {
		return read(bytes.NewReader(e.image))
	}
	e.mu.Lock()
	f := e.file
	e.mu.Unlock()
	if f == nil {
		return fmt.Errorf("symbolizer: object %s: %w", id, ErrMalformedObject)
	}
	// Reads through the descriptor are safe while the entry is held: it is
	// closed only once evicted and released.
	return read(io.NewSectionReader(f, 0, e.size))
}
