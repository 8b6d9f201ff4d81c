package symbolizer

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"errors"
	"fmt"
	"hash/maphash"
	"os"
	"sync"
	"syscall"
)

// objKey identifies a parsed object in the cache: by build ID when the file has one, so
// that copies of a file (other containers, other paths) share one entry; otherwise by the
// file's identity including size and mtime, because a rebuilt file may get a recycled inode.
type objKey struct {
	buildID     string
	dev, inode  uint64
	size, mtime int64
}

// fileKey is a file as /proc/PID/maps identifies it.
type fileKey struct{ dev, inode uint64 }

// fileStamp tells whether the file behind a fileKey is still the one seen before.
type fileStamp struct{ size, mtime int64 }

// fileInfo is what is remembered of a file so that later processes mapping it need not
// open it: which object it holds, or that it failed to parse.
type fileInfo struct {
	stamp fileStamp
	key   objKey
	bad   bool
}

// loadCall lets concurrent calls for processes mapping the same new file wait for one
// load instead of each doing it.
type loadCall struct {
	done       chan struct{}
	wantRefs   int32 // how many of the callers want the entry acquired
	wantMapped int   // how many of the callers build a snapshot that maps it
	key        objKey
	ent        *objEntry
	err        error
}

// objWant is what a caller of objectFor takes on the entry it gets, under the lock that
// finds or creates it, so that the entry cannot be closed in between.
type objWant uint8

const (
	// wantAcquired: a reference for a lookup (objEntry.acquire); release it when done.
	wantAcquired objWant = 1 << iota
	// wantMapped: a mapping reference for the snapshot being built (see release.go).
	wantMapped
)

// take gives the caller of objectFor what it wants of e; the caller holds s.mu.
func (s *Symbolizer) take(e *objEntry, key objKey, want objWant) {
	if want&wantAcquired != 0 {
		e.acquire()
	}
	if want&wantMapped != 0 {
		s.mapObjectLocked(key)
	}
}

var errKnownBad = errors.New("object failed to parse before")

func objectKey(buildID string, fk fileKey, st fileStamp) objKey {
	if buildID != "" {
		return objKey{buildID: buildID}
	}
	return objKey{dev: fk.dev, inode: fk.inode, size: st.size, mtime: st.mtime}
}

// objectFor returns the cache entry of the object mapped by m. A file seen before is found
// in the cache after one stat (to notice a recycled inode) and without being opened;
// otherwise it is opened, and kept open unless an object with its build ID is cached.
// The caller takes what want says on the entry (see objWant); without wantAcquired it
// may use only the entry's immutable fields.
func (s *Symbolizer) objectFor(pid uint32, m *Mapping, want objWant) (objKey, *objEntry, error) {
	fk := fileKey{m.Dev, m.Inode}
	stamp, stamped := s.statMapped(pid, m)
	s.mu.Lock()
	info, known := s.files.get(fk)
	if known && (!stamped || info.stamp == stamp) {
		if info.bad {
			s.mu.Unlock()
			return objKey{}, nil, errKnownBad
		}
		if e, ok := s.objects.get(info.key); ok {
			s.take(e, info.key, want)
			s.mu.Unlock()
			s.objectHits.Add(1)
			return info.key, e, nil
		}
	}
	c, loading := s.loading[fk]
	if !loading {
		c = &loadCall{done: make(chan struct{})}
		s.loading[fk] = c
	}
	if want&wantAcquired != 0 {
		c.wantRefs++
	}
	if want&wantMapped != 0 {
		c.wantMapped++
	}
	s.mu.Unlock()
	if loading {
		<-c.done
		return c.key, c.ent, c.err
	}
	c.key, c.ent, c.err = s.loadObject(pid, m, fk, c)
	close(c.done)
	return c.key, c.ent, c.err
}

// loadObject opens the file of m and returns its cache entry: the cached one if an object
// with the same build ID is cached, else a new one that keeps the file for parsing on
// first lookup. Only the headers and the build ID note are read here. It ends the load c:
// under the Symbolizer's mutex, it gives the callers what they want of the entry and
// removes c, so that no caller joins c after that.
func (s *Symbolizer) loadObject(pid uint32, m *Mapping, fk fileKey, c *loadCall) (objKey, *objEntry, error) {
	finish := func(e *objEntry) {
		if e != nil {
			e.refs.Add(c.wantRefs)
			for range c.wantMapped {
				s.mapObjectLocked(e.key)
			}
		}
		delete(s.loading, fk)
	}
	fail := func() {
		s.mu.Lock()
		finish(nil)
		s.mu.Unlock()
	}
	f, stamp, err := s.openMapped(pid, m)
	if err != nil {
		fail()
		s.errors.Add(1)
		s.objectMisses.Add(1)
		return objKey{}, nil, err
	}
	ef, err := openELF(f)
	if err == nil {
		if _, lerr := loadSegments(ef); lerr != nil {
			err = fmt.Errorf("%w: %v", ErrMalformedObject, lerr)
		}
	}
	if err != nil {
		f.Close()
		fail()
		s.rememberBad(fk, stamp, err)
		return objKey{}, nil, fmt.Errorf("%s: %w", m.Path, err)
	}
	buildID := readBuildID(ef)
	key := objectKey(buildID, fk, stamp)
	s.mu.Lock()
	s.files.put(fk, fileInfo{stamp: stamp, key: key})
	if e, ok := s.objects.get(key); ok {
		finish(e)
		s.mu.Unlock()
		f.Close()
		s.objectHits.Add(1)
		return key, e, nil
	}
	s.mu.Unlock()
	s.objectMisses.Add(1)
	e := newFileEntry(key, buildID, m.Path, ef, f, stamp.size, &s.openFiles)
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.objects.get(key); ok {
		// Another process's load of a copy of the file won the race.
		e.free()
		finish(old)
		return key, old, nil
	}
	s.objects.put(key, e)
	finish(e)
	return key, e, nil
}

// rememberBad records a parse failure so that the file is not parsed again per process.
func (s *Symbolizer) rememberBad(fk fileKey, stamp fileStamp, err error) {
	s.errors.Add(1)
	if !errors.Is(err, ErrMalformedObject) {
		return // an I/O error may be transient
	}
	s.mu.Lock()
	s.files.put(fk, fileInfo{stamp: stamp, bad: true})
	s.mu.Unlock()
}

// openMapped opens the file behind m: through /proc/PID/root, so a container's files are
// found in its own mount namespace, checking that the inode is the mapped one; else through
// /proc/PID/map_files, which reaches the mapped file itself even once it was deleted or
// replaced. A path whose inode differs is still used if map_files is not accessible, since
// overlayfs reports different inodes for the same file; never for a "(deleted)" mapping,
// whose path holds a different file by definition.
func (s *Symbolizer) openMapped(pid uint32, m *Mapping) (*os.File, fileStamp, error) {
	var fallback *os.File
	if f, fi, err := openRegular(s.procPath(pid, "root") + m.FilePath()); err == nil {
		if inodeOf(fi) == m.Inode {
			return f, stampOf(fi), nil
		}
		if m.Deleted {
			f.Close()
		} else {
			fallback = f
		}
	}
	f, fi, err := openRegular(s.mapFilesPath(pid, m))
	if err == nil {
		if fallback != nil {
			fallback.Close()
		}
		return f, stampOf(fi), nil
	}
	if fallback != nil {
		fi, statErr := fallback.Stat()
		if statErr == nil {
			return fallback, stampOf(fi), nil
		}
		fallback.Close()
	}
	return nil, fileStamp{}, fmt.Errorf("symbolizer: pid %d: cannot open %s: %w", pid, m.Path, err)
}

// statMapped stats the mapped file without opening it, for cache validation.
func (s *Symbolizer) statMapped(pid uint32, m *Mapping) (fileStamp, bool) {
	if fi, err := os.Stat(s.mapFilesPath(pid, m)); err == nil {
		return stampOf(fi), true
	}
	if m.Deleted {
		return fileStamp{}, false
	}
	if fi, err := os.Stat(s.procPath(pid, "root") + m.FilePath()); err == nil && inodeOf(fi) == m.Inode {
		return stampOf(fi), true
	}
	return fileStamp{}, false
}

func (s *Symbolizer) mapFilesPath(pid uint32, m *Mapping) string {
	return s.procPath(pid, fmt.Sprintf("map_files/%x-%x", m.Start, m.Limit))
}

// openRegular opens a regular file for reading. O_NONBLOCK keeps a FIFO planted at a
// mapped path (say, by a hostile container) from blocking the profiler.
func openRegular(path string) (*os.File, os.FileInfo, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("%s: not a regular file", path)
	}
	return f, fi, nil
}

func inodeOf(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

func stampOf(fi os.FileInfo) fileStamp {
	return fileStamp{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
}

// maxVDSOSize bounds the vDSO read; it is two pages on current kernels.
const maxVDSOSize = 1 << 20

// vdsoImage is a parsed vDSO and its cache key.
type vdsoImage struct {
	key  objKey
	ent  *objEntry
	size uint64
}

// vdsoObject returns the object of the kernel-provided vDSO, which has no file. The kernel
// has one image per ABI: a process of this process's ELF class and machine (sameAsSelf)
// has this process's vDSO, so usually nothing needs to be read. Otherwise the image is read
// from the process's memory and cached by content hash.
func (s *Symbolizer) vdsoObject(pid uint32, m *Mapping, sameAsSelf bool) (objKey, *objEntry, error) {
	size := m.Limit - m.Start
	if own := s.ownVDSO(); sameAsSelf && own != nil && own.size == size {
		s.objectHits.Add(1)
		return own.key, own.ent, nil
	}
	if size > maxVDSOSize || m.Start > 1<<62 {
		return objKey{}, nil, fmt.Errorf("symbolizer: pid %d: implausible vDSO mapping", pid)
	}
	image, err := readProcMem(s.procPath(pid, "mem"), m.Start, size)
	if err != nil {
		return objKey{}, nil, err // the process exited: its vDSO frames stay unnamed
	}
	sum := maphash.Bytes(s.seed, image)
	s.mu.Lock()
	if key, ok := s.vdsoKeys[sum]; ok {
		if e, ok := s.objects.get(key); ok {
			s.mu.Unlock()
			s.objectHits.Add(1)
			return key, e, nil
		}
	}
	s.mu.Unlock()
	s.objectMisses.Add(1)
	img, err := parseVDSO(image)
	if err != nil {
		s.errors.Add(1)
		return objKey{}, nil, err
	}
	s.mu.Lock()
	if e, ok := s.objects.get(img.key); ok {
		img.ent = e // the same image, cached under another content hash
	} else {
		s.objects.put(img.key, img.ent)
	}
	if len(s.vdsoKeys) >= s.maxVDSOs {
		clear(s.vdsoKeys)
	}
	s.vdsoKeys[sum] = img.key
	s.mu.Unlock()
	return img.key, img.ent, nil
}

func parseVDSO(image []byte) (*vdsoImage, error) {
	obj, err := OpenObject(bytes.NewReader(image))
	if err != nil {
		return nil, err
	}
	key := objKey{buildID: obj.BuildID()}
	if key.buildID == "" {
		key.buildID = fmt.Sprintf("vdso-%x", sha256.Sum256(image))
	}
	return &vdsoImage{key: key, ent: newParsedEntry(key, obj, image), size: uint64(len(image))}, nil
}

// ownVDSO returns this process's vDSO, read once; nil if it cannot be read.
func (s *Symbolizer) ownVDSO() *vdsoImage {
	s.ownVDSOOnce.Do(func() {
		data, err := os.ReadFile("/proc/self/maps")
		if err != nil {
			return
		}
		maps, err := ParseMaps(bytes.NewReader(data))
		if err != nil {
			return
		}
		for _, m := range maps {
			if m.Path != "[vdso]" || m.Limit-m.Start > maxVDSOSize {
				continue
			}
			if image, err := readProcMem("/proc/self/mem", m.Start, m.Limit-m.Start); err == nil {
				s.ownVDSOImage, _ = parseVDSO(image)
			}
			return
		}
	})
	return s.ownVDSOImage
}

// selfELF is the ELF class and machine of this process.
var selfELF = sync.OnceValue(func() struct {
	class   elf.Class
	machine elf.Machine
} {
	var id struct {
		class   elf.Class
		machine elf.Machine
	}
	if f, err := elf.Open("/proc/self/exe"); err == nil {
		id.class, id.machine = f.Class, f.Machine
		f.Close()
	}
	return id
})

func readProcMem(path string, addr, size uint64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, size)
	if _, err := f.ReadAt(buf, int64(addr)); err != nil {
		return nil, err
	}
	return buf, nil
}
