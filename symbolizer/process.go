package symbolizer

import (
	"bytes"
	"cmp"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// process is the snapshot of one process's executable mappings. It is immutable once
// published, except for the time of the last maps read and the lazily loaded JIT map.
// It holds a mapping reference on each of its objects (release.go).
type process struct {
	pid      uint32
	lastRead atomic.Int64 // UnixNano of the last /proc/PID/maps read attempt
	maps     []procMapping
	jit      *jitState // shared by the snapshots of one process
	bytes    int       // estimated heap (snapshotBytes)
}

// procMapping is an executable mapping and the cache key of its object, if any.
type procMapping struct {
	Mapping
	obj    objKey
	hasObj bool
	// sharedPath: Path is the object entry's string, not a copy of the snapshot's own.
	sharedPath bool
}

type jitState struct {
	once sync.Once
	pm   *perfMap
}

// find returns the mapping containing addr, or nil.
func (p *process) find(addr uint64) *procMapping {
	if p == nil {
		return nil
	}
	i, _ := slices.BinarySearchFunc(p.maps, addr, func(m procMapping, a uint64) int {
		if m.Start <= a {
			return -1
		}
		return 1
	})
	if i > 0 && addr < p.maps[i-1].Limit {
		return &p.maps[i-1]
	}
	return nil
}

// ProcessStarted is called the moment the profiler first sees a (new) process, possibly just
// after exec. It snapshots /proc/PID/maps at once and opens (or finds in cache) every
// executable file-backed mapping, reading only its ELF headers and build ID, so frames can
// still be symbolized after the process exits (short-lived processes!); an object is parsed
// by the first User lookup that needs it. It replaces any older snapshot for that pid (pid
// reuse / exec). Safe to call from another goroutine than User(); should be fast (cache
// hits are O(1)).
//
// It fails only if the maps cannot be read; objects that cannot be opened or parsed are
// counted in Stats.Errors and their frames stay unnamed.
func (s *Symbolizer) ProcessStarted(pid uint32) error {
	p, err := s.readProcess(pid, nil)
	if err != nil {
		return err
	}
	s.publishSnapshot(p)
	return nil
}

// ProcessForked is ProcessStarted for a process forked from parent that has not exec'd
// since and runs the same executable (the sampler checks both): its mappings are
// parent's as of the fork, so parent's cached snapshot serves it without a read of
// /proc, taking a mapping reference on each object. Without a snapshot of parent it
// reads parent's mappings for pid, and pid's own only when parent is gone: the
// sampler's notice of a forked process does not wake the reader, so by the time it is
// read pid may have exec'd, and its own mappings be its next image's. A mapping either
// of them made since the fork is found as any new mapping is: an address outside the
// snapshot has it read again.
func (s *Symbolizer) ProcessForked(pid, parent uint32) error {
	if p := s.cloneSnapshot(parent, pid); p != nil {
		s.forkSnapshots.Add(1)
		s.publishSnapshot(p)
		return nil
	}
	if p, err := s.readProcess(parent, nil); err == nil {
		p.pid = pid
		s.publishSnapshot(p)
		return nil
	}
	return s.ProcessStarted(pid)
}

// cloneSnapshot returns a copy of from's cached snapshot for pid, with a mapping
// reference of its own on each object; nil when from has none.
func (s *Symbolizer) cloneSnapshot(from, pid uint32) *process {
	s.mu.Lock()
	defer s.mu.Unlock()
	pp, ok := s.procs.peek(from)
	if !ok || pp == nil {
		return nil
	}
	p := &process{pid: pid, jit: &jitState{}, maps: slices.Clone(pp.maps), bytes: pp.bytes}
	for i := range p.maps {
		if p.maps[i].hasObj {
			s.mapObjectLocked(p.maps[i].obj)
		}
	}
	p.lastRead.Store(time.Now().UnixNano())
	return p
}

// ExecutableAddress reports whether addr lies in an executable mapping of pid (using the
// cached snapshot; no re-read). Used to validate a candidate return address.
func (s *Symbolizer) ExecutableAddress(pid uint32, addr uint64) bool {
	s.mu.Lock()
	p, _ := s.procs.peek(pid)
	s.mu.Unlock()
	return p.find(addr) != nil
}

func (s *Symbolizer) cachedProcess(pid uint32) *process {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, _ := s.procs.get(pid)
	return p
}

// readProcess snapshots pid's executable mappings and resolves their objects, taking a
// mapping reference on each (the caller publishes or discards the snapshot). Mappings
// unchanged since old (a previous snapshot of the same process) keep their objects
// without touching the files again.
func (s *Symbolizer) readProcess(pid uint32, old *process) (*process, error) {
	s.mapsReads.Add(1)
	maps, err := s.readExecMappings(pid)
	if err != nil {
		s.errors.Add(1)
		return nil, fmt.Errorf("symbolizer: pid %d: %w", pid, err)
	}
	p := &process{pid: pid, jit: &jitState{}, maps: make([]procMapping, 0, len(maps))}
	p.lastRead.Store(time.Now().UnixNano())
	if old != nil {
		p.jit = old.jit
	}
	var vdso *Mapping
	for i := range maps {
		if m := &maps[i]; m.Path == "[vdso]" {
			vdso = m // resolved last: it depends on the other objects' ELF class
		} else {
			p.maps = append(p.maps, s.resolveMapping(pid, m, old))
		}
	}
	if vdso != nil {
		p.maps = append(p.maps, s.resolveVDSO(pid, vdso, p.maps))
	}
	slices.SortFunc(p.maps, func(a, b procMapping) int { return cmp.Compare(a.Start, b.Start) })
	p.bytes = snapshotBytes(p)
	return p, nil
}

// resolveMapping attaches the object of one executable mapping, with a mapping
// reference on it.
func (s *Symbolizer) resolveMapping(pid uint32, m *Mapping, old *process) procMapping {
	if prev := old.find(m.Start); prev != nil && sameMapping(&prev.Mapping, m) {
		if prev.hasObj {
			s.mu.Lock()
			s.mapObjectLocked(prev.obj)
			s.mu.Unlock()
		}
		return *prev
	}
	pm := procMapping{Mapping: *m}
	if !m.fileBacked() {
		return pm // anonymous: JIT code, named from the perf map if any
	}
	key, e, ok := s.cachedByBuildID(m.BuildID)
	if !ok {
		var err error
		if key, e, err = s.objectFor(pid, m, wantMapped); err != nil {
			return pm // unreadable: the kernel's build ID, if any, still names it
		}
	}
	pm.obj, pm.hasObj, pm.BuildID = key, true, e.buildID
	if e.path == m.Path {
		pm.Path, pm.sharedPath = e.path, true
	}
	return pm
}

// cachedByBuildID returns the cached object of a build ID the kernel read from a
// mapped file, with a mapping reference on it: then the file is neither stat'ed nor
// opened. The build ID names the mapped file's contents, so no check of the file's
// identity is needed.
func (s *Symbolizer) cachedByBuildID(buildID string) (objKey, *objEntry, bool) {
	if buildID == "" {
		return objKey{}, nil, false
	}
	key := objKey{buildID: buildID}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.objects.get(key)
	if !ok {
		return objKey{}, nil, false
	}
	s.take(e, key, wantMapped)
	s.objectHits.Add(1)
	return key, e, true
}

// resolveVDSO attaches the vDSO object, given the process's other executable mappings.
func (s *Symbolizer) resolveVDSO(pid uint32, m *Mapping, maps []procMapping) procMapping {
	pm := procMapping{Mapping: *m}
	if key, e, err := s.vdsoObject(pid, m, s.sameClassAsSelf(maps)); err == nil {
		pm.obj, pm.hasObj, pm.BuildID = key, true, e.buildID
		s.mu.Lock()
		s.mapObjectLocked(key)
		s.mu.Unlock()
	}
	return pm
}

// sameClassAsSelf reports whether the process's objects are of this process's ELF class
// and machine, which means the kernel gave it the same vDSO image as this process.
func (s *Symbolizer) sameClassAsSelf(maps []procMapping) bool {
	self := selfELF()
	seen := false
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range maps {
		if !maps[i].hasObj {
			continue
		}
		e, ok := s.objects.peek(maps[i].obj)
		if !ok || e.class != self.class || e.machine != self.machine {
			return false
		}
		seen = true
	}
	return seen
}

func sameMapping(a, b *Mapping) bool {
	return a.Start == b.Start && a.Limit == b.Limit && a.Offset == b.Offset &&
		a.Dev == b.Dev && a.Inode == b.Inode && a.Path == b.Path
}

// User symbolizes user-space addresses of process pid. addrs[0] is the leaf (sampled PC);
// addrs[1:] are return addresses: look those up at addr-1 so calls at the very end of a
// function resolve to the caller, but report Frame.Address = the original address. An
// address with ExactAddress set is an interrupted instruction (the frame a signal
// handler's stack continues into), looked up as it is and reported without the bit.
// Returns exactly len(addrs) frames, in the same order. An address it cannot name keeps its
// Address, ObjAddress and Mapping (path, build ID) with Function == "". If the address is in
// no known mapping and the process is alive, re-read /proc/PID/maps once (libraries mapped
// later) before giving up.
func (s *Symbolizer) User(pid uint32, addrs []uint64) []Frame {
	frames := make([]Frame, len(addrs))
	p := s.cachedProcess(pid)
	if !s.resolveUser(p, addrs, frames) {
		if np := s.reread(pid, p); np != nil {
			s.resolveUser(np, addrs, frames)
		}
	}
	s.countFrames(frames)
	return frames
}

// resolveUser fills frames from snapshot p (which may be nil) and reports whether every
// address fell in a known mapping.
func (s *Symbolizer) resolveUser(p *process, addrs []uint64, frames []Frame) (allMapped bool) {
	allMapped = true
	var objs objectMemo
	defer objs.release()
	for i, addr := range addrs {
		// The leaf, and a frame marked ExactAddress (an instruction a
		// signal interrupted), are where execution stopped, not return
		// addresses.
		exact := i == 0 || addr&ExactAddress != 0
		addr &^= ExactAddress
		frames[i] = Frame{Address: addr, ObjAddress: addr}
		pm := p.find(lookupAddress(addr, exact))
		if pm == nil {
			allMapped = false
			continue
		}
		s.nameUserFrame(p, pm, objs.get(s, p.pid, pm), &frames[i], exact)
	}
	return allMapped
}

// nameUserFrame fills the mapping-dependent fields of f, whose Address lies in pm.
func (s *Symbolizer) nameUserFrame(p *process, pm *procMapping, obj *Object, f *Frame, leaf bool) {
	f.Mapping = &pm.Mapping
	if obj != nil {
		if objAddr, ok := obj.ObjAddress(&pm.Mapping, f.Address); ok {
			f.ObjAddress = objAddr
		}
		if look, ok := obj.ObjAddress(&pm.Mapping, lookupAddress(f.Address, leaf)); ok {
			f.Function, f.File, f.Line, f.Inlined = s.frames.lookupFrame(obj, look)
		}
		return
	}
	// No object: anonymous (JIT) code, or a file that could not be read. JIT maps hold
	// runtime addresses.
	f.Function = s.jitLookup(p, lookupAddress(f.Address, leaf))
}

// objectMemo remembers the objects used within one User call, so a stack whose frames
// share a few objects costs a few cache lookups instead of one per frame. It holds a
// reference to each cache entry it remembers, so that none is closed while in use;
// release drops them.
type objectMemo struct {
	n, next int
	maps    [4]*procMapping
	ents    [4]*objEntry
	objs    [4]*Object
}

func (m *objectMemo) get(s *Symbolizer, pid uint32, pm *procMapping) *Object {
	for i := 0; i < m.n; i++ {
		if m.maps[i] == pm {
			return m.objs[i]
		}
	}
	var obj *Object
	e := s.mappingEntry(pid, pm)
	if e != nil {
		obj = e.object(s)
	}
	if old := m.ents[m.next]; old != nil {
		old.release()
	}
	m.maps[m.next], m.ents[m.next], m.objs[m.next] = pm, e, obj
	m.next = (m.next + 1) % len(m.maps)
	m.n = min(m.n+1, len(m.maps))
	return obj
}

func (m *objectMemo) release() {
	for i, e := range m.ents {
		if e != nil {
			e.release()
			m.ents[i] = nil
		}
	}
}

// mappingEntry returns the cache entry of pm's object, acquired; nil if there is none. If
// it was evicted, it is loaded again, which works while the process (or another with the
// same file) is alive.
func (s *Symbolizer) mappingEntry(pid uint32, pm *procMapping) *objEntry {
	if !pm.hasObj {
		return nil
	}
	if e := s.acquireCached(pm.obj); e != nil {
		return e
	}
	if pm.Path == "[vdso]" {
		if own := s.ownVDSO(); own != nil && own.key == pm.obj {
			own.ent.acquire() // never cached, so never freed
			return own.ent
		}
		return nil
	}
	key, e, err := s.objectFor(pid, &pm.Mapping, wantAcquired)
	if err != nil {
		return nil // gone
	}
	if key != pm.obj {
		e.release() // the file now holds something else
		return nil
	}
	return e
}

// acquireCached returns the cached entry of key, acquired, or nil.
func (s *Symbolizer) acquireCached(key objKey) *objEntry {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.objects.get(key)
	if !ok {
		return nil
	}
	e.acquire()
	return e
}

// reread refreshes the snapshot of pid after an address fell outside every known mapping,
// at most once per mapsReread interval. It returns the new snapshot, or nil if there is
// none: the process is gone, or its pid now belongs to another process (whose mappings
// must not be used for the old one's samples).
func (s *Symbolizer) reread(pid uint32, old *process) *process {
	now := time.Now()
	if old != nil {
		if now.Sub(time.Unix(0, old.lastRead.Load())) < s.mapsReread {
			return nil
		}
		old.lastRead.Store(now.UnixNano())
	} else if s.recentlyMissing(pid, now) {
		return nil // a dead pid's samples do not re-read its maps each time
	}
	np, err := s.readProcess(pid, old)
	if err != nil {
		return nil
	}
	if !sameProcess(old, np) {
		s.discardSnapshot(np)
		return nil
	}
	s.publishSnapshot(np)
	return np
}

// sameProcess tells whether snapshot np is of the same process as old rather than of a
// new process that reused the pid: the lowest file-backed executable mapping (the main
// executable) must be unchanged. With address-space randomization a new process all but
// never has it at the same place. After an exec the profiler calls ProcessStarted.
func sameProcess(old, np *process) bool {
	if old == nil {
		return true
	}
	for i := range old.maps {
		if m := &old.maps[i]; m.fileBacked() {
			n := np.find(m.Start)
			return n != nil && sameMapping(&n.Mapping, &m.Mapping)
		}
	}
	return true
}

// jitLookup names addr from the process's perf map, loading it on first use.
func (s *Symbolizer) jitLookup(p *process, addr uint64) string {
	p.jit.once.Do(func() {
		path := s.procPath(p.pid, fmt.Sprintf("root/tmp/perf-%d.map", s.namespacePID(p.pid)))
		p.jit.pm = &perfMap{path: path}
	})
	return p.jit.pm.lookup(addr, func(bad int) { s.perfMapBadLines.Add(uint64(bad)) })
}

func (s *Symbolizer) procPath(pid uint32, rest string) string {
	return s.procRoot + "/" + strconv.FormatUint(uint64(pid), 10) + "/" + rest
}

// namespacePID is the pid of pid inside its own pid namespace (the last NSpid entry of
// /proc/PID/status): JITs in containers name their perf map after that one.
func (s *Symbolizer) namespacePID(pid uint32) uint32 {
	data, err := os.ReadFile(s.procPath(pid, "status"))
	if err != nil {
		return pid
	}
	for _, line := range bytes.Split(data, []byte("\n")) {
		rest, ok := bytes.CutPrefix(line, []byte("NSpid:"))
		if !ok {
			continue
		}
		fields := bytes.Fields(rest)
		if len(fields) == 0 {
			return pid
		}
		v, err := strconv.ParseUint(string(fields[len(fields)-1]), 10, 32)
		if err != nil {
			return pid
		}
		return uint32(v)
	}
	return pid
}
