package symbolizer

import (
	"bytes"
	"io"
	"sync"
	"sync/atomic"
)

// Object files are read in place with pread, not memory-mapped and not copied whole.
//
// Copying the sections that symbolization needs (.gopclntab, .symtab, .strtab: 5 to 25 MB
// in a large Go binary) to the heap for every executable mapping was what made the daemon
// big. A read-only mapping would avoid the heap, but the kernel maps every page fault's
// neighbourhood (64 KB or a whole large folio) into the process, so the scattered reads of
// a lookup make megabytes of the mapped files resident and count towards the daemon's RSS;
// a file truncated under a mapping also turns reads into SIGBUS. Reads through a file
// descriptor cost a system call instead, which a small cache of recently read blocks, with
// caches of the names returned, spares on the hot paths; memory then is the cache's bound,
// and a truncated file only makes reads fail.

// blockSize is the unit of reading and caching.
const blockSize = 4096

// blockCacheBytes bounds the memory of the block cache of a Symbolizer. The
// frame cache in front of it answers most addresses; at 8 MiB it took hours
// of a busy host to fill, and grew the daemon's heap by as much.
const blockCacheBytes = 2 << 20

// windowSize is the buffer of a window, which scans read through.
const windowSize = 64 << 10

// objFile is an object file being read: an open file, read through a block cache, or
// contents in memory.
type objFile struct {
	r     io.ReaderAt // nil when mem holds the contents
	mem   []byte
	size  uint64
	id    uint64      // the file's blocks in cache
	cache *blockCache // nil: no caching
}

var objFileIDs atomic.Uint64

func newObjFile(r io.ReaderAt, size uint64, cache *blockCache) *objFile {
	return &objFile{r: r, size: size, id: objFileIDs.Add(1), cache: cache}
}

func memFile(data []byte) *objFile {
	return &objFile{mem: data, size: uint64(len(data))}
}

// ReadAt makes an objFile an io.ReaderAt, for debug/elf.
func (f *objFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || uint64(off) >= f.size {
		return 0, io.EOF
	}
	if f.mem != nil {
		n := copy(p, f.mem[off:])
		if n < len(p) {
			return n, io.EOF
		}
		return n, nil
	}
	return f.r.ReadAt(p, off)
}

// Size is the size of the file, which debug/elf's callers use to check bounds.
func (f *objFile) Size() int64 { return int64(f.size) }

// at returns the n bytes at off, or nil if they do not all lie in the file or cannot be
// read. The result may alias the file's contents or a cache block: it must not be
// modified.
func (f *objFile) at(off, n uint64) []byte {
	if !within(off, n, f.size) {
		return nil
	}
	if f.mem != nil {
		return f.mem[off : off+n : off+n]
	}
	if n == 0 {
		return []byte{}
	}
	first, last := off/blockSize, (off+n-1)/blockSize
	if first == last {
		b := f.block(first)
		lo := off - first*blockSize
		if uint64(len(b)) < lo+n {
			return nil
		}
		return b[lo : lo+n : lo+n]
	}
	if n > 2*blockSize {
		return f.read(off, n)
	}
	out := make([]byte, 0, n)
	for i := first; i <= last; i++ {
		b := f.block(i)
		lo := max(off, i*blockSize) - i*blockSize
		hi := min(off+n, (i+1)*blockSize) - i*blockSize
		if uint64(len(b)) < hi {
			return nil
		}
		out = append(out, b[lo:hi]...)
	}
	return out
}

// block returns block i of the file (short at its end), nil if it cannot be read.
func (f *objFile) block(i uint64) []byte {
	off := i * blockSize
	if off >= f.size {
		return nil
	}
	n := min(blockSize, f.size-off)
	if f.cache == nil {
		return f.read(off, n)
	}
	k := blockKey{f.id, i}
	if b, ok := f.cache.get(k); ok {
		return b
	}
	b := f.read(off, n)
	if b != nil {
		f.cache.put(k, b)
	}
	return b
}

// read reads n bytes at off without caching them.
func (f *objFile) read(off, n uint64) []byte {
	if !within(off, n, f.size) {
		return nil
	}
	if f.mem != nil {
		return f.mem[off : off+n : off+n]
	}
	buf := make([]byte, n)
	if _, err := f.r.ReadAt(buf, int64(off)); err != nil {
		return nil // truncated since it was opened, or an I/O error
	}
	return buf
}

// cString returns a copy of the NUL-terminated string at off, which must end before end;
// ok is false if there is none within maxSymbolName bytes.
func (f *objFile) cString(off, end uint64) (string, bool) {
	return readCString(f.at, off, min(end, f.size))
}

// readCString reads a NUL-terminated string piecewise (never across a block boundary in
// one read, so that a name costs one cache block) and returns a copy of it.
func readCString(at func(off, n uint64) []byte, off, end uint64) (string, bool) {
	var acc []byte
	for start := off; off < end && off-start <= maxSymbolName; {
		n := min(end-off, blockSize-off%blockSize)
		b := at(off, n)
		if b == nil {
			return "", false
		}
		if i := bytes.IndexByte(b, 0); i >= 0 {
			if acc == nil {
				return string(b[:i]), true
			}
			return string(append(acc, b[:i]...)), true
		}
		acc = append(acc, b...)
		off += n
	}
	return "", false
}

// window reads a file through a buffer of its own, for scans (symbol tables, data
// sections) that read much once and would only churn the block cache. A slice it returns
// is valid until its next read.
type window struct {
	f    *objFile
	off  uint64
	buf  []byte
	size uint64 // of a read
}

func newWindow(f *objFile) *window { return &window{f: f, size: windowSize} }

// newBlockWindow returns a window that reads one whole block at a time, for scattered
// small reads (names) that should neither allocate nor churn the block cache.
func newBlockWindow(f *objFile) *window { return &window{f: f, size: blockSize} }

// at returns the n bytes at off, nil if they do not all lie in the file or cannot be read.
func (w *window) at(off, n uint64) []byte {
	if !within(off, n, w.f.size) {
		return nil
	}
	if off >= w.off && off+n <= w.off+uint64(len(w.buf)) {
		return w.buf[off-w.off : off-w.off+n]
	}
	if w.f.mem != nil {
		return w.f.mem[off : off+n]
	}
	if n > w.size {
		return w.f.read(off, n)
	}
	start := off
	if w.size == blockSize && off%blockSize+n <= blockSize {
		start = off &^ (blockSize - 1) // the whole block, for the names around off
	}
	size := min(w.size, w.f.size-start)
	if uint64(cap(w.buf)) < size {
		w.buf = make([]byte, w.size)
	}
	w.buf = w.buf[:size]
	if _, err := w.f.r.ReadAt(w.buf, int64(start)); err != nil {
		w.buf = w.buf[:0]
		return nil
	}
	w.off = start
	return w.buf[off-start : off-start+n]
}

// cString returns a copy of the NUL-terminated string at off, which must end before end.
func (w *window) cString(off, end uint64) (string, bool) {
	return readCString(w.at, off, min(end, w.f.size))
}

// blockKey names a block of a file in the cache.
type blockKey struct{ file, block uint64 }

// blockCache holds recently read blocks of object files, least recently used first out.
type blockCache struct {
	mu     sync.Mutex
	blocks *lru[blockKey, []byte]
}

func newBlockCache(bytes int) *blockCache {
	return &blockCache{blocks: newLRU[blockKey, []byte](max(bytes/blockSize, 1))}
}

func (c *blockCache) get(k blockKey) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.blocks.get(k)
}

// dropFile removes the blocks of file; it walks the cache (2,048 blocks by default), which
// is cheap next to the closing of an object that calls it.
func (c *blockCache) dropFile(file uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.blocks.items {
		if k.file == file {
			c.blocks.remove(k)
		}
	}
}

// len returns how many blocks are cached.
func (c *blockCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.blocks.len()
}

func (c *blockCache) put(k blockKey, b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.blocks.put(k, b)
}
