package unwind

import (
	"cmp"
	"context"
	"errors"
	"io"
	"log/slog"
	"runtime/debug"
	"slices"
	"sync"
	"syscall"
	"time"
)

// Range is an executable mapping of a process as the walker knows it.
type Range struct {
	Start, Len uint64
	// Bias is what the process adds to the object's addresses.
	Bias uint64
	// Table is the object's table id; 0 walks the range by frame pointers,
	// TableOnDemand too, until the walker asks for the object's table.
	Table uint32
}

// TableOnDemand is the Table of a range whose object's table is compiled
// only once the walker meets its code (Config.OnDemandBytes). Keep in step
// with UNWIND_TABLE_ON_DEMAND in bpf/unwind.h.
const TableOnDemand = ^uint32(0)

// Mapping is an executable mapping of a process, as a Source reports it.
type Mapping struct {
	Start, Limit, Offset uint64
	// Object identifies the mapped object (comparable); nil for anonymous
	// code (a JIT's) and files that cannot be read.
	Object any
}

// Sink is where tables go: in cgscope, the sampler's BPF maps
// (profiler.UnwindTables).
type Sink interface {
	LoadTable(id uint32, t *Table) error
	UnloadTable(id uint32) error
	// LoadProcess gives the walker pid's ranges for its image (the cookie
	// the sampler gave the image: ranges of another image are not used).
	LoadProcess(pid uint32, image uint64, ranges []Range) error
	UnloadProcess(pid uint32) error
	// WantedTable returns the Start of the range of pid whose table the
	// walker asked for (a TableOnDemand range whose code it met), if it
	// did since the ranges were loaded.
	WantedTable(pid uint32) (start uint64, ok bool)
}

// Source reports processes' mappings and reads their objects: in cgscope,
// the symbolizer, which opened them already.
type Source interface {
	// Mappings returns pid's executable mappings as last read.
	Mappings(pid uint32) ([]Mapping, error)
	// Refresh reads pid's mappings again.
	Refresh(pid uint32) error
	ReadObject(pid uint32, object any, read func(io.ReaderAt) error) error
}

// Config bounds a Registry.
type Config struct {
	// MaxBytes bounds the kernel memory of the tables loaded at once; to
	// make room, tables no process maps are evicted, then those fewer
	// processes map than the table loaded.
	MaxBytes int
	// KernelBytes is the kernel memory a table takes once loaded.
	KernelBytes func(*Table) int
	// MaxRanges is how many ranges the walker holds per process (more are
	// left out, those without tables first).
	MaxRanges int
	// Linger is how long a table no process maps any more stays loaded, so
	// a program started again and again is compiled once; also how long an
	// object that could not be loaded waits before it is tried again.
	Linger time.Duration
	// QueueSize bounds the process notices waiting for the worker.
	QueueSize int
	// OnDemandBytes: an object with this many bytes of call-frame
	// information or more is compiled only once the walker meets its code
	// (0: every object at once). Most of a process's large libraries never
	// run: bpftrace maps libz3, libclang and libLLVM, about 480 ms of
	// compiling on a busy host, and never runs libz3.
	OnDemandBytes int
}

// Stats are the registry's self-metrics.
type Stats struct {
	Compiled, CompileFailed, NoFrameInfo uint64 // objects
	CompileSeconds                       float64
	LoadFailed                           uint64            // tables or processes the sink refused
	Unloadable                           uint64            // times an object went without a table for lack of room
	Evicted                              map[string]uint64 // tables unloaded, by reason
	Tables                               int               // loaded now
	Processes                            int               // whose ranges are loaded now
	TableBytes                           int               // kernel bytes of the loaded tables
	Rows                                 int               // rows of the loaded tables
	QueueDropped                         uint64            // start notices lost to a full queue
	Refreshes                            uint64            // processes whose mappings were read again
	RangesDropped                        uint64            // ranges left out of processes with too many
	OnDemand                             int               // objects whose table waits for the walker to meet their code
	Wanted                               uint64            // tables compiled because the walker met their code
}

// Eviction reasons.
const (
	EvictedUnused = "unused" // no process mapped it for Config.Linger
	EvictedSpace  = "space"  // made room for another table
)

// object is what the registry knows of one object.
type object struct {
	key      any
	id       uint32 // 0: no table loaded
	table    *Table // segments only, once loaded: the rows live in the kernel
	bytes    int
	rows     int
	refs     int
	failed   bool      // no table to be had (no or malformed call-frame information)
	onDemand bool      // compiled once the walker meets its code (Config.OnDemandBytes)
	retryAt  time.Time // no room for its table: not compiled again before then
	lastUse  time.Time // last time a process that maps it was added, or released
}

type noticeKind uint8

const (
	noticeStarted noticeKind = iota
	noticeGone
	noticeChanged
)

type notice struct {
	pid   uint32
	image uint64 // the sampler's cookie of the process image; 0: any
	kind  noticeKind
}

// refreshInterval bounds how often one process's mappings are read again.
const refreshInterval = time.Second

// Registry keeps the unwind tables of the objects that sampled processes
// map, and those processes' ranges, in a Sink. Compiling and loading run
// on one worker goroutine (Run); the notices only queue, and never block.
type Registry struct {
	sink  Sink
	src   Source
	cfg   Config
	queue chan notice

	// gone holds the exits and execs the queue had no room for: losing one
	// would keep a process's tables referenced for ever.
	goneMu sync.Mutex
	gone   map[uint32]uint64

	// Worker state.
	objects  map[any]*object
	procs    map[uint32]*proc
	pending  map[uint32]bool // refreshes due once refreshInterval has passed
	nextID   uint32
	lastSwep time.Time

	mu    sync.Mutex // guards stats
	stats Stats
}

// proc is a process the registry gave ranges to.
type proc struct {
	image     uint64
	objects   []*object
	ranges    []Range // as loaded; nil when the sink holds none
	loaded    time.Time
	refreshed bool      // its mappings were read again once already
	rearmAt   time.Time // a refresh found nothing new: load the ranges again then, to hear of the next change
}

// NewRegistry returns a registry writing to sink; call Run.
func NewRegistry(sink Sink, src Source, cfg Config) *Registry {
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 4096
	}
	if cfg.KernelBytes == nil {
		cfg.KernelBytes = func(t *Table) int { return t.Bytes() }
	}
	if cfg.MaxRanges <= 0 {
		cfg.MaxRanges = 128
	}
	return &Registry{
		sink: sink, src: src, cfg: cfg,
		queue:   make(chan notice, cfg.QueueSize),
		gone:    map[uint32]uint64{},
		objects: map[any]*object{},
		procs:   map[uint32]*proc{},
		pending: map[uint32]bool{},
		stats:   Stats{Evicted: map[string]uint64{}},
	}
}

// ProcessStarted asks for the tables of pid's image, once its mappings are
// known to the Source.
func (r *Registry) ProcessStarted(pid uint32, image uint64) {
	select {
	case r.queue <- notice{pid, image, noticeStarted}:
	default:
		r.count(func(s *Stats) { s.QueueDropped++ }) // walked by frame pointers
	}
}

// ProcessGone releases what pid's image held: it exec'd or exited (image
// 0: whatever image). Never lost: the queue's overflow is kept aside.
func (r *Registry) ProcessGone(pid uint32, image uint64) {
	select {
	case r.queue <- notice{pid, image, noticeGone}:
	default:
		r.goneMu.Lock()
		r.gone[pid] = image
		r.goneMu.Unlock()
	}
}

// ProcessMappingsChanged reads pid's mappings again (the walker met code
// outside them: a library loaded since), at once the first time, then at
// most once per second.
func (r *Registry) ProcessMappingsChanged(pid uint32, image uint64) {
	select {
	case r.queue <- notice{pid, image, noticeChanged}:
	default: // asked again by the walker at its next reload
	}
}

// Run works the queue until ctx ends, and unloads tables nobody maps any
// more. It wakes on its own only when work is due: a refresh asked for
// (within refreshInterval), or the next sweep (sweepEvery). A ticker
// of a second was half the wakeups of an idle daemon.
func (r *Registry) Run(ctx context.Context) {
	timer := time.NewTimer(r.nextWake(time.Now()))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case n := <-r.queue:
			r.handle(n)
		case now := <-timer.C:
			r.handleOverflow()
			r.refreshPending(now)
			if now.Sub(r.lastSwep) >= r.sweepEvery() {
				r.sweep(now)
				r.lastSwep = now
			}
		}
		timer.Reset(r.nextWake(time.Now()))
	}
}

// sweepEvery is how often Run sweeps: a quarter of Linger, at least every
// refreshInterval.
func (r *Registry) sweepEvery() time.Duration {
	return max(r.cfg.Linger/4, refreshInterval)
}

// nextWake is how long Run may wait for a notice before work of its own is
// due: a pending refresh's, or the next sweep's. Exits the queue had no
// room for are removed at the next notice or wake, and by the sweep.
func (r *Registry) nextWake(now time.Time) time.Duration {
	d := r.lastSwep.Add(r.sweepEvery()).Sub(now)
	if len(r.pending) > 0 {
		d = min(d, refreshInterval)
	}
	return max(d, 0)
}

func (r *Registry) handle(n notice) {
	switch n.kind {
	case noticeStarted:
		r.handleOverflow() // an exit the queue had no room for comes first
		r.add(n.pid, n.image)
	case noticeGone:
		r.remove(n.pid, n.image)
	case noticeChanged:
		r.changed(n.pid, n.image, time.Now())
	}
}

// handleOverflow removes the processes whose gone notices did not fit the
// queue.
func (r *Registry) handleOverflow() {
	r.goneMu.Lock()
	gone := r.gone
	if len(gone) > 0 {
		r.gone = map[uint32]uint64{}
	}
	r.goneMu.Unlock()
	for pid, image := range gone {
		r.remove(pid, image)
	}
}

// changed reads pid's mappings again: at once the first time (a process
// is often first sampled while the dynamic loader still maps its
// libraries), then at most once per refreshInterval.
func (r *Registry) changed(pid uint32, image uint64, now time.Time) {
	p, ok := r.procs[pid]
	if !ok || p.image != image {
		return // gone meanwhile, or another image
	}
	if slices.ContainsFunc(p.objects, func(o *object) bool { return o.onDemand }) {
		if start, ok := r.sink.WantedTable(pid); ok {
			r.want(pid, start, now)
			return // a code outside the ranges, if that too was met, is asked about again
		}
	}
	if p.refreshed && now.Sub(p.loaded) < refreshInterval {
		r.pending[pid] = true
		return
	}
	delete(r.pending, pid)
	if err := r.src.Refresh(pid); err != nil {
		return // gone: its exit notice follows
	}
	r.count(func(s *Stats) { s.Refreshes++ })
	if !r.add(pid, image) {
		// Nothing new (a pc outside every mapping is garbage, or in code no
		// range can hold): the walker's request stays answered until then.
		if p, ok := r.procs[pid]; ok {
			p.rearmAt = now.Add(r.cfg.Linger)
		}
	}
	if p, ok := r.procs[pid]; ok {
		p.refreshed = true
	}
}

// want compiles the table the walker asked pid for, of the object mapped
// at start, and gives the ranges with it to every process that maps the
// object.
func (r *Registry) want(pid uint32, start uint64, now time.Time) {
	maps, err := r.src.Mappings(pid)
	if err != nil {
		return
	}
	i := slices.IndexFunc(maps, func(m Mapping) bool { return m.Start == start && m.Object != nil })
	if i < 0 {
		return
	}
	o := r.objects[maps[i].Object]
	if o == nil || !o.onDemand {
		return
	}
	o.onDemand = false
	r.count(func(s *Stats) { s.Wanted++ })
	r.compile(pid, o, now, r.procs[pid].objects, 0, o.refs) // the processes that map it hold it already
	for q, p := range r.procs {
		if slices.Contains(p.objects, o) {
			r.add(q, p.image)
		}
	}
}

func (r *Registry) refreshPending(now time.Time) {
	for pid := range r.pending {
		if p, ok := r.procs[pid]; ok {
			r.changed(pid, p.image, now)
		} else {
			delete(r.pending, pid)
		}
	}
}

// add loads the tables of pid's objects and gives the sink its ranges. A
// process none of whose objects has a table gets no ranges: the walker
// then uses frame pointers throughout, as cheaply as before tables. Added
// again (a refresh), it keeps its objects while the new ones load, and the
// sink is written only if its ranges changed; changed says whether they
// did.
func (r *Registry) add(pid uint32, image uint64) (changed bool) {
	old := r.procs[pid]
	if old != nil && old.image != image {
		r.remove(pid, 0)
		old = nil
	}
	maps, err := r.src.Mappings(pid)
	if err != nil {
		if old != nil {
			r.remove(pid, 0)
		}
		return true // gone already, or never snapshotted: frame pointers
	}
	now := time.Now()
	p := &proc{image: image, loaded: now}
	keep := []*object(nil)
	if old != nil {
		p.refreshed = old.refreshed
		keep = append(keep, old.objects...)
	}
	for _, m := range maps {
		if m.Object == nil {
			continue
		}
		if o := r.object(pid, m.Object, now, append(keep, p.objects...)); o != nil {
			o.refs++
			o.lastUse = now
			p.objects = append(p.objects, o)
		}
	}
	if old != nil {
		for _, o := range old.objects {
			o.refs--
			o.lastUse = now
		}
	}
	r.procs[pid] = p
	defer r.publish()
	ranges, dropped := r.rangesOf(maps, p.objects)
	if dropped > 0 {
		r.count(func(s *Stats) { s.RangesDropped += uint64(dropped) })
	}
	switch {
	case ranges == nil:
		if old != nil && old.ranges != nil {
			r.sink.UnloadProcess(pid)
		}
	case old != nil && slices.Equal(ranges, old.ranges):
		p.ranges, p.loaded = old.ranges, old.loaded // the kernel holds them already
		return false
	default:
		if err := r.sink.LoadProcess(pid, image, ranges); err != nil {
			r.count(func(s *Stats) { s.LoadFailed++ })
			slog.Debug("unwind: loading the ranges of a process", "pid", pid, "err", err)
			break
		}
		p.ranges = ranges
	}
	return true
}

// rangesOf turns a process's mappings into the walker's ranges, sorted;
// nil when no object has a table. Adjacent ranges without a table are
// merged. Beyond Config.MaxRanges, ranges without a table go first, then
// those of objects fewer processes map.
func (r *Registry) rangesOf(maps []Mapping, held []*object) (ranges []Range, dropped int) {
	byKey := make(map[any]*object, len(held))
	for _, o := range held {
		byKey[o.key] = o
	}
	tables := false
	var refs []int // per range, for the cut
	for _, m := range maps {
		rg := Range{Start: m.Start, Len: m.Limit - m.Start}
		n := 0
		if o := byKey[m.Object]; m.Object != nil && o != nil {
			if bias, ok := o.bias(m); ok {
				rg.Bias, rg.Table = bias, o.id
				tables = true
				n = o.refs
			} else if o.onDemand {
				rg.Table = TableOnDemand // no bias needed: the walker walks frame pointers there
				tables = true
				n = o.refs
			}
		}
		if k := len(ranges) - 1; k >= 0 && rg.Table == 0 && ranges[k].Table == 0 && ranges[k].Start+ranges[k].Len == rg.Start {
			ranges[k].Len += rg.Len
			continue
		}
		ranges = append(ranges, rg)
		refs = append(refs, n)
	}
	if !tables {
		return nil, 0
	}
	if len(ranges) > r.cfg.MaxRanges {
		idx := make([]int, len(ranges))
		for i := range idx {
			idx[i] = i
		}
		slices.SortStableFunc(idx, func(a, b int) int {
			return cmp.Or(cmp.Compare(boolRank(ranges[a].Table == 0), boolRank(ranges[b].Table == 0)), -cmp.Compare(refs[a], refs[b]))
		})
		kept := make([]Range, 0, r.cfg.MaxRanges)
		for _, i := range idx[:r.cfg.MaxRanges] {
			kept = append(kept, ranges[i])
		}
		dropped = len(ranges) - len(kept)
		ranges = kept
	}
	slices.SortFunc(ranges, func(a, b Range) int { return cmp.Compare(a.Start, b.Start) })
	return ranges, dropped
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

// object returns the object of key, compiling and loading its table on
// first use (or again, after it was evicted and once its retry time has
// passed), unless its call-frame information is large enough to wait for
// the walker (Config.OnDemandBytes; want compiles it then); nil when the
// Source cannot read it. The objects in keep (the process's, so far) are
// not evicted to make room.
func (r *Registry) object(pid uint32, key any, now time.Time, keep []*object) *object {
	o, ok := r.objects[key]
	if ok && (o.id != 0 || o.failed || o.onDemand || now.Before(o.retryAt)) {
		return o
	}
	limit := 0
	if !ok {
		o = &object{key: key}
		r.objects[key] = o
		limit = r.cfg.OnDemandBytes // once: an object the walker asked for is compiled
	}
	return r.compile(pid, o, now, keep, limit, o.refs+1)
}

// compile compiles o's table, unless its call-frame information is limit
// bytes or more (limit > 0), and loads it, making room among the tables
// that serve fewer processes than it will (serves) and are not in keep.
func (r *Registry) compile(pid uint32, o *object, now time.Time, keep []*object, limit, serves int) *object {
	var t *Table
	start := time.Now()
	err := r.src.ReadObject(pid, o.key, func(ra io.ReaderAt) error {
		var err error
		t, err = compileBelow(ra, limit)
		return err
	})
	elapsed := time.Since(start).Seconds()
	switch {
	case errors.Is(err, errOnDemand):
		o.onDemand = true
		return o
	case errors.Is(err, ErrNoFrameInfo):
		o.failed = true
		r.count(func(s *Stats) { s.NoFrameInfo++ })
		return o
	case errors.Is(err, ErrMalformed):
		o.failed = true
		r.count(func(s *Stats) { s.CompileFailed++; s.CompileSeconds += elapsed })
		slog.Debug("unwind: malformed call-frame information", "object", o.key, "err", err)
		return o
	case err != nil:
		delete(r.objects, o.key) // unreadable now; maybe not for the next process
		return nil
	}
	r.count(func(s *Stats) { s.Compiled++; s.CompileSeconds += elapsed })
	o.table = t
	o.rows = len(t.Rows)
	o.bytes = r.cfg.KernelBytes(t)
	defer r.forgetRows(o)
	if !r.makeRoom(o.bytes, serves, keep) {
		o.retryAt = now.Add(r.cfg.Linger)
		r.count(func(s *Stats) { s.Unloadable++ })
		return o
	}
	r.nextID++
	if err := r.sink.LoadTable(r.nextID, t); err != nil {
		o.retryAt = now.Add(r.cfg.Linger)
		r.count(func(s *Stats) { s.LoadFailed++ })
		slog.Debug("unwind: loading a table", "object", o.key, "err", err)
		return o
	}
	o.id = r.nextID
	if o.rows > largeTableRows {
		// Compiling it took tens of MB that are garbage now: give them back
		// at once rather than when the heap next grows, so a large object
		// (libLLVM) does not raise the daemon's resident memory for good.
		defer debug.FreeOSMemory()
	}
	return o
}

// largeTableRows is a table whose compilation is worth returning memory
// to the system for.
const largeTableRows = 256 << 10

// bias places o's table in a process by one of its mappings; false when
// o has no table loaded.
func (o *object) bias(m Mapping) (uint64, bool) {
	if o.id == 0 || o.table == nil {
		return 0, false
	}
	return o.table.Bias(m.Start, m.Limit, m.Offset)
}

// forgetRows drops a compiled table's rows, keeping its segments: once in
// the kernel, they are not needed here.
func (r *Registry) forgetRows(o *object) {
	if o.table != nil {
		o.table = &Table{Base: o.table.Base, Segments: o.table.Segments}
	}
}

// makeRoom evicts tables until n more bytes fit, for a table that refs
// processes will map: first those no process maps, coldest first, then
// those fewer processes map than refs, fewest first; never one in keep.
// A table is worth the processes it serves: a large object one process
// maps (a compiler's librustc_driver, 14 MB) must not push out the libc
// every other process walks through.
func (r *Registry) makeRoom(n, refs int, keep []*object) bool {
	if n > r.cfg.MaxBytes {
		return false
	}
	for r.loadedBytes()+n > r.cfg.MaxBytes {
		var victim *object
		for _, o := range r.objects {
			if o.id != 0 && o.refs < refs && !slices.Contains(keep, o) && (victim == nil || colder(o, victim)) {
				victim = o
			}
		}
		if victim == nil {
			return false
		}
		// A table pushed out while processes still map it does not come
		// straight back in at their next refresh (that would be a compile
		// and an eviction at every one). One no process mapped returns as
		// soon as a process needs it: a binary run again a few seconds
		// after its table made room for others must not be walked by frame
		// pointers for a whole Linger.
		if victim.refs > 0 {
			victim.retryAt = time.Now().Add(r.cfg.Linger)
		}
		r.unload(victim, EvictedSpace)
	}
	return true
}

// colder orders eviction: tables no process maps first, then those fewer
// processes map, then by last use.
func colder(a, b *object) bool {
	if (a.refs == 0) != (b.refs == 0) {
		return a.refs == 0
	}
	if a.refs != b.refs && a.refs > 0 {
		return a.refs < b.refs
	}
	return a.lastUse.Before(b.lastUse)
}

func (r *Registry) loadedBytes() int {
	n := 0
	for _, o := range r.objects {
		if o.id != 0 {
			n += o.bytes
		}
	}
	return n
}

// unload removes an object's table from the sink. Processes that still
// map it walk its code by frame pointers until they are added again.
func (r *Registry) unload(o *object, reason string) {
	if err := r.sink.UnloadTable(o.id); err != nil {
		slog.Debug("unwind: unloading a table", "err", err)
	}
	o.id = 0
	r.count(func(s *Stats) { s.Evicted[reason]++ })
}

// remove releases what pid held, if it is of image (0: any).
func (r *Registry) remove(pid uint32, image uint64) {
	p, ok := r.procs[pid]
	if !ok || (image != 0 && p.image != image) {
		return
	}
	delete(r.procs, pid)
	delete(r.pending, pid)
	now := time.Now()
	for _, o := range p.objects {
		o.refs--
		o.lastUse = now
	}
	if p.ranges != nil {
		if err := r.sink.UnloadProcess(pid); err != nil {
			slog.Debug("unwind: unloading the ranges of a process", "pid", pid, "err", err)
		}
	}
	r.publish()
}

// sweep releases processes that are gone although no notice said so,
// loads again the ranges of processes whose walker may ask for a refresh
// again, unloads the tables no process mapped for Config.Linger, and
// forgets objects known to have no table once unused as long.
func (r *Registry) sweep(now time.Time) {
	for pid, p := range r.procs {
		if syscall.Kill(int(pid), 0) == syscall.ESRCH {
			r.remove(pid, 0)
			continue
		}
		if !p.rearmAt.IsZero() && now.After(p.rearmAt) && p.ranges != nil {
			if err := r.sink.LoadProcess(pid, p.image, p.ranges); err == nil {
				p.rearmAt, p.loaded = time.Time{}, now
			}
		}
	}
	for key, o := range r.objects {
		if o.refs > 0 || now.Sub(o.lastUse) < r.cfg.Linger {
			continue
		}
		if o.id != 0 {
			r.unload(o, EvictedUnused)
		}
		delete(r.objects, key)
	}
	r.publish()
}

func (r *Registry) count(f func(*Stats)) {
	r.mu.Lock()
	f(&r.stats)
	r.mu.Unlock()
}

// publish updates the gauges of Stats from the worker's state.
func (r *Registry) publish() {
	tables, bytes, rows, procs, onDemand := 0, 0, 0, 0, 0
	for _, o := range r.objects {
		if o.id != 0 {
			tables++
			bytes += o.bytes
			rows += o.rows
		}
		if o.onDemand {
			onDemand++
		}
	}
	for _, p := range r.procs {
		if p.ranges != nil {
			procs++
		}
	}
	r.count(func(s *Stats) {
		s.Tables, s.TableBytes, s.Rows, s.Processes, s.OnDemand = tables, bytes, rows, procs, onDemand
	})
}

// Stats returns the registry's counters.
func (r *Registry) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.stats
	st.Evicted = make(map[string]uint64, len(r.stats.Evicted))
	for k, v := range r.stats.Evicted {
		st.Evicted[k] = v
	}
	return st
}
