package symbolizer

import (
	"math"
	"time"
	"unsafe"
)

// What the Symbolizer holds of a process is released once the caller says the process is
// done with (ReleaseProcess: it exited and its last samples were symbolized), not when a
// bound is reached; the bounds (Options.MaxProcesses, Options.MaxObjects) stay as a second
// line, and what they push out is counted apart. An object is held while a cached snapshot
// maps it: each snapshot takes a reference on the objects of its mappings when it is
// built, and gives them back when it leaves the cache (forgotten, replaced by a newer
// snapshot of the pid, or evicted), so an object the last process mapping it let go of is
// closed at once and its file descriptor given back. A later process mapping the same
// file opens it again: an open, the ELF headers and the build ID note.

// maxMissing bounds the pids remembered as having no maps (exited before they could be
// read), which keeps a dead pid's samples from re-reading its maps every time.
const maxMissing = 1024

// mapObjectLocked counts one more cached (or being built) snapshot mapping key. The
// caller holds s.mu.
func (s *Symbolizer) mapObjectLocked(key objKey) {
	s.mapped[key]++
}

// unmapObjectLocked gives back one snapshot's reference on key, and closes the object
// when it was the last. The caller holds s.mu.
func (s *Symbolizer) unmapObjectLocked(key objKey) {
	n := s.mapped[key] - 1
	if n > 0 {
		s.mapped[key] = n
		return
	}
	delete(s.mapped, key)
	if _, cached := s.objects.peek(key); cached {
		s.objects.remove(key) // closes its file once no lookup holds it
		s.objectsUnmapped.Add(1)
	}
}

// releaseSnapshotLocked gives back what snapshot p holds: its objects, and its share of
// the snapshot bytes. It is the procs cache's eviction hook, so it runs for every snapshot
// that leaves the cache; the caller holds s.mu.
func (s *Symbolizer) releaseSnapshotLocked(p *process) {
	s.unmapSnapshotLocked(p)
	s.procBytes -= p.bytes
}

// unmapSnapshotLocked gives back the snapshot's references on its objects.
func (s *Symbolizer) unmapSnapshotLocked(p *process) {
	for i := range p.maps {
		if p.maps[i].hasObj {
			s.unmapObjectLocked(p.maps[i].obj)
		}
	}
}

// discardSnapshot gives back the references of a snapshot that was built but will not be
// published.
func (s *Symbolizer) discardSnapshot(p *process) {
	s.mu.Lock()
	s.unmapSnapshotLocked(p)
	s.mu.Unlock()
}

// publishSnapshot makes p the snapshot of its pid, releasing the one it replaces.
func (s *Symbolizer) publishSnapshot(p *process) {
	s.mu.Lock()
	s.procBytes += p.bytes
	s.procs.put(p.pid, p)
	delete(s.missing, p.pid)
	s.mu.Unlock()
}

// ReleaseProcess releases what the Symbolizer holds of pid: its mappings snapshot, its JIT
// symbols, and the objects no other cached process maps (their files are closed). Call it
// once the process has exited and its last samples were symbolized; frames of pid
// symbolized later are named only if the process is still alive (User re-reads its maps).
func (s *Symbolizer) ReleaseProcess(pid uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.missing, pid)
	if _, ok := s.procs.peek(pid); !ok {
		return
	}
	s.procs.remove(pid)
	s.processesForgotten.Add(1)
}

// vanished marks a pid in missing until its release or its next snapshot, whatever the
// time: its image is gone (ProcessVanished).
const vanished = math.MaxInt64

// ProcessVanished tells the Symbolizer that pid's image exec'd or exited before its
// mappings could be read: its samples do not try to read them (which would fail, or read
// the next image's), until ReleaseProcess or a new snapshot of pid.
func (s *Symbolizer) ProcessVanished(pid uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.markMissingLocked(pid, vanished)
}

// recentlyMissing reports whether pid's maps could not be read within the last mapsReread,
// or its image vanished; if not, it records this attempt.
func (s *Symbolizer) recentlyMissing(pid uint32, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if at, ok := s.missing[pid]; ok && (at == vanished || now.Sub(time.Unix(0, at)) < s.mapsReread) {
		return true
	}
	s.markMissingLocked(pid, now.UnixNano())
	return false
}

// markMissingLocked records pid in missing (at: UnixNano of the attempt, or vanished),
// within maxMissing. The caller holds s.mu.
func (s *Symbolizer) markMissingLocked(pid uint32, at int64) {
	if len(s.missing) >= maxMissing {
		clear(s.missing) // a burst of dead pids: forgetting them costs one read each
	}
	s.missing[pid] = at
}

// snapshotBytes estimates the heap a snapshot takes: the structures and the mapping
// paths it does not share with its objects. The JIT symbols of a process (loaded on its
// first sample in anonymous code) are not included.
func snapshotBytes(p *process) int {
	n := int(unsafe.Sizeof(*p)) + int(unsafe.Sizeof(jitState{})) + cap(p.maps)*int(unsafe.Sizeof(procMapping{}))
	for i := range p.maps {
		if !p.maps[i].sharedPath {
			n += len(p.maps[i].Path)
		}
	}
	return n
}
