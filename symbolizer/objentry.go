package symbolizer

import (
	"debug/elf"
	"os"
	"sync"
	"sync/atomic"
)

// objEntry is an object in the Symbolizer's cache. ProcessStarted creates it with the file
// open, so that the object can be parsed later even if the process has exited and the file
// was deleted or replaced by then, but parses nothing: most mapped objects never have a
// sample symbolized. The first lookup that needs the object parses it, which reads only
// headers; its tables are then read from the file as lookups need them (see objfile.go).
//
// An entry stays cached while a cached process snapshot maps it (see release.go), and
// the cache holds at most Options.MaxObjects entries, so as many open files. Entries are
// reference counted: a lookup acquires the entry (under the Symbolizer's mutex, only while
// the entry is cached) and releases it when done. The file is closed once the entry is
// evicted and no lookup holds it, so that lookups do not fail half-way.
type objEntry struct {
	key     objKey
	buildID string
	class   elf.Class
	machine elf.Machine
	// path is the path the file was first opened by: snapshots of processes that map
	// it at the same path share this string instead of holding copies.
	path string
	// openFiles counts the Symbolizer's open object files (shared by its entries).
	openFiles *atomic.Int64
	// blocks and blockFile name the file's blocks in the block cache, once parsed.
	blocks    *blockCache
	blockFile uint64

	parsed atomic.Bool // obj is final
	obj    *Object     // nil until parsed, and when parsing failed

	mu    sync.Mutex // serializes parsing and freeing
	file  *os.File   // until freed (or parsing failed)
	size  int64      // of the file when it was opened
	image []byte     // the contents of an object parsed from memory (a vDSO)
	freed bool

	refs     atomic.Int32
	evicted  atomic.Bool
	freeOnce sync.Once
}

// newFileEntry makes the entry of an unparsed object from its open file, counted in
// openFiles until closed.
func newFileEntry(key objKey, buildID, path string, ef *elfFile, f *os.File, size int64, openFiles *atomic.Int64) *objEntry {
	openFiles.Add(1)
	return &objEntry{key: key, buildID: buildID, class: ef.Class, machine: ef.Machine, path: path,
		file: f, size: size, openFiles: openFiles}
}

// newParsedEntry makes the entry of an object parsed from memory (a vDSO).
func newParsedEntry(key objKey, obj *Object, image []byte) *objEntry {
	e := &objEntry{key: key, buildID: obj.BuildID(), class: obj.class, machine: obj.machine, obj: obj, image: image}
	e.parsed.Store(true)
	return e
}

// BuildID is the build ID of the object, known before it is parsed.
func (e *objEntry) BuildID() string { return e.buildID }

// object returns the parsed object, parsing it on first use; nil if it cannot be parsed.
// The caller must hold a reference (acquire).
func (e *objEntry) object(s *Symbolizer) *Object {
	if e.parsed.Load() {
		return e.obj
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.parsed.Load() || e.freed {
		return e.obj
	}
	var obj *Object
	err := ErrMalformedObject
	if e.file != nil && e.size >= 0 {
		f := newObjFile(e.file, uint64(e.size), s.blocks)
		e.blocks, e.blockFile = s.blocks, f.id
		obj, err = parseObject(f, e.buildID)
	}
	if err != nil {
		s.errors.Add(1)
		e.closeFile()
	}
	e.obj = obj
	e.parsed.Store(true)
	return obj
}

// acquire takes a reference; the caller holds the Symbolizer's mutex and found e in the
// cache.
func (e *objEntry) acquire() { e.refs.Add(1) }

// release drops a reference, freeing an evicted entry with the last one.
func (e *objEntry) release() {
	if e.refs.Add(-1) == 0 && e.evicted.Load() {
		e.free()
	}
}

// evict is called (under the Symbolizer's mutex) when e leaves the cache: it is freed now
// if no lookup holds it, else by the last release. Either way, with both sides storing
// before they load, at least one of them sees the other's change.
func (e *objEntry) evict() {
	e.evicted.Store(true)
	if e.refs.Load() == 0 {
		e.free()
	}
}

// free closes the file and drops its blocks from the block cache: no lookup can read
// them again, and they would otherwise hold their share of it until they aged out.
func (e *objEntry) free() {
	e.freeOnce.Do(func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.freed = true
		e.closeFile()
		if e.blocks != nil {
			e.blocks.dropFile(e.blockFile)
		}
	})
}

// closeFile closes the entry's file, if open; the caller holds e.mu.
func (e *objEntry) closeFile() {
	if e.file == nil {
		return
	}
	e.file.Close()
	e.file = nil
	if e.openFiles != nil {
		e.openFiles.Add(-1)
	}
}
