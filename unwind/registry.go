package unwind

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// Range is an executable mapping of a process as the walker knows it.
type Range struct {
	Start, Len uint64
	// Bias is what the process adds to the object's addresses.
	Bias uint64
	// Table is the object's table id; 0 walks the range by frame pointers.
	Table uint32
}

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
	LoadProcess(pid uint32, ranges []Range) error
	UnloadProcess(pid uint32) error
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
	// MaxBytes bounds the kernel memory of the tables loaded at once; the
	// coldest are evicted to make room.
	MaxBytes int
	// KernelBytes is the kernel memory a table takes once loaded.
	KernelBytes func(*Table) int
	// Linger is how long a table no process maps any more stays loaded, so
	// a program started again and again is compiled once.
	Linger time.Duration
	// QueueSize bounds the process notices waiting for the worker.
	QueueSize int
}

// Stats are the registry's self-metrics.
type Stats struct {
	Compiled, CompileFailed, NoFrameInfo uint64 // objects
	CompileSeconds                       float64
	LoadFailed                           uint64            // tables or processes the sink refused
	Evicted                              map[string]uint64 // tables unloaded, by reason
	Tables                               int               // loaded now
	Processes                            int               // whose ranges are loaded now
	TableBytes                           int               // kernel bytes of the loaded tables
	Rows                                 int               // rows of the loaded tables
	QueueDropped                         uint64            // notices lost to a full queue
	Refreshes                            uint64            // processes whose mappings were read again
}

// Eviction reasons.
const (
	EvictedUnused = "unused" // no process mapped it for Config.Linger
	EvictedSpace  = "space"  // made room for another table
)

// object is what the registry knows of one object.
type object struct {
	key     any
	id      uint32 // 0: no table (failed, no frame information, or evicted)
	table   *Table // segments only, once loaded: the rows live in the kernel
	bytes   int
	rows    int
	refs    int
	failed  bool      // do not try again while it is known
	lastUse time.Time // last time a process that maps it was added, or released
}

type noticeKind uint8

const (
	noticeStarted noticeKind = iota
	noticeGone
	noticeChanged
)

type notice struct {
	pid  uint32
	kind noticeKind
}

// refreshInterval bounds how often one process's mappings are read again.
const refreshInterval = time.Second

// Registry keeps the unwind tables of the objects that sampled processes
// map, and those processes' ranges, in a Sink. Compiling and loading run
// on one worker goroutine (Run); ProcessStarted and ProcessGone only
// queue, and never block.
type Registry struct {
	sink  Sink
	src   Source
	cfg   Config
	queue chan notice

	// Worker state.
	objects  map[any]*object
	procs    map[uint32]*proc
	pending  map[uint32]bool // refreshes due once refreshInterval has passed
	nextID   uint32
	lastSwep time.Time

	mu    sync.Mutex // guards stats
	stats Stats

	dropped atomic.Uint64
}

// NewRegistry returns a registry writing to sink; call Run.
func NewRegistry(sink Sink, src Source, cfg Config) *Registry {
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 4096
	}
	if cfg.KernelBytes == nil {
		cfg.KernelBytes = func(t *Table) int { return t.Bytes() }
	}
	return &Registry{
		sink: sink, src: src, cfg: cfg,
		queue:   make(chan notice, cfg.QueueSize),
		objects: map[any]*object{},
		procs:   map[uint32]*proc{},
		pending: map[uint32]bool{},
		stats:   Stats{Evicted: map[string]uint64{}},
	}
}

// proc is a process the registry gave ranges to.
type proc struct {
	objects   []*object
	loaded    time.Time
	refreshed bool // its mappings were read again once already
	ranges    bool // the sink holds its ranges (some object has a table)
}

// ProcessStarted asks for pid's tables, once its mappings are known to the
// Source.
func (r *Registry) ProcessStarted(pid uint32) { r.enqueue(notice{pid, noticeStarted}) }

// ProcessGone releases what pid held: its image exec'd or exited.
func (r *Registry) ProcessGone(pid uint32) { r.enqueue(notice{pid, noticeGone}) }

// ProcessMappingsChanged reads pid's mappings again (the walker met code
// outside them: a library loaded since), at most once per second.
func (r *Registry) ProcessMappingsChanged(pid uint32) { r.enqueue(notice{pid, noticeChanged}) }

func (r *Registry) enqueue(n notice) {
	select {
	case r.queue <- n:
	default:
		r.dropped.Add(1)
	}
}

// Run works the queue until ctx ends, and unloads tables nobody maps any
// more.
func (r *Registry) Run(ctx context.Context) {
	tick := time.NewTicker(refreshInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case n := <-r.queue:
			switch n.kind {
			case noticeStarted:
				r.add(n.pid)
			case noticeGone:
				delete(r.pending, n.pid)
				r.remove(n.pid)
			case noticeChanged:
				r.changed(n.pid, time.Now())
			}
		case now := <-tick.C:
			r.refreshPending(now)
			if now.Sub(r.lastSwep) >= r.cfg.Linger/4 {
				r.sweep(now)
				r.lastSwep = now
			}
		}
	}
}

// changed reads pid's mappings again: at once the first time (a process
// is often first sampled while the dynamic loader still maps its
// libraries), then at most once per refreshInterval.
func (r *Registry) changed(pid uint32, now time.Time) {
	p, ok := r.procs[pid]
	if !ok {
		return // gone meanwhile
	}
	if p.refreshed && now.Sub(p.loaded) < refreshInterval {
		r.pending[pid] = true
		return
	}
	delete(r.pending, pid)
	if err := r.src.Refresh(pid); err != nil {
		return // gone: its exit notice follows
	}
	r.add(pid)
	if p, ok := r.procs[pid]; ok {
		p.refreshed = true
	}
	r.count(func(s *Stats) { s.Refreshes++ })
}

func (r *Registry) refreshPending(now time.Time) {
	for pid := range r.pending {
		r.changed(pid, now)
	}
}

// add loads the tables of pid's objects and gives the sink its ranges. A
// process none of whose objects has a table gets no ranges: the walker
// then uses frame pointers throughout, as cheaply as before tables.
func (r *Registry) add(pid uint32) {
	r.remove(pid) // a pid seen again without its exit noticed
	maps, err := r.src.Mappings(pid)
	if err != nil {
		return // gone already, or never snapshotted: frame pointers
	}
	now := time.Now()
	var (
		ranges []Range
		held   []*object
		tables bool
	)
	for _, m := range maps {
		rg := Range{Start: m.Start, Len: m.Limit - m.Start}
		if m.Object != nil {
			if o := r.object(pid, m.Object, now); o != nil {
				o.refs++
				o.lastUse = now
				held = append(held, o)
				if bias, ok := o.bias(m); ok {
					rg.Bias, rg.Table = bias, o.id
					tables = true
				}
			}
		}
		ranges = append(ranges, rg)
	}
	p := &proc{objects: held, loaded: now}
	r.procs[pid] = p
	if tables {
		if err := r.sink.LoadProcess(pid, ranges); err != nil {
			r.count(func(s *Stats) { s.LoadFailed++ })
			slog.Debug("unwind: loading the ranges of a process", "pid", pid, "err", err)
		} else {
			p.ranges = true
		}
	}
	r.publish()
}

// object returns the object of key, compiling and loading its table on
// first use (or again after it was evicted); nil when the Source cannot
// read it.
func (r *Registry) object(pid uint32, key any, now time.Time) *object {
	o, ok := r.objects[key]
	if ok && (o.id != 0 || o.failed) {
		return o
	}
	if !ok {
		o = &object{key: key}
		r.objects[key] = o
	}
	var t *Table
	start := time.Now()
	err := r.src.ReadObject(pid, key, func(ra io.ReaderAt) error {
		var err error
		t, err = Compile(ra)
		return err
	})
	elapsed := time.Since(start).Seconds()
	switch {
	case errors.Is(err, ErrNoFrameInfo):
		o.failed = true
		r.count(func(s *Stats) { s.NoFrameInfo++ })
		return o
	case errors.Is(err, ErrMalformed):
		o.failed = true
		r.count(func(s *Stats) { s.CompileFailed++; s.CompileSeconds += elapsed })
		slog.Debug("unwind: malformed call-frame information", "object", key, "err", err)
		return o
	case err != nil:
		delete(r.objects, key) // unreadable now; maybe not for the next process
		return nil
	}
	r.count(func(s *Stats) { s.Compiled++; s.CompileSeconds += elapsed })
	o.table = t
	o.rows = len(t.Rows)
	o.bytes = r.cfg.KernelBytes(t)
	if !r.makeRoom(o.bytes, now) {
		slog.Debug("unwind: no room for a table", "object", key, "bytes", o.bytes)
		r.forgetRows(o)
		return o
	}
	r.nextID++
	if err := r.sink.LoadTable(r.nextID, t); err != nil {
		r.count(func(s *Stats) { s.LoadFailed++ })
		slog.Debug("unwind: loading a table", "object", key, "err", err)
		r.forgetRows(o)
		return o
	}
	o.id = r.nextID
	r.forgetRows(o)
	if o.rows > largeTableRows {
		// Compiling it took tens of MB that are garbage now: give them back
		// at once rather than when the heap next grows, so a large object
		// (libLLVM) does not raise the daemon's resident memory for good.
		debug.FreeOSMemory()
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
	return o.table.Bias(m.Start, m.Offset)
}

// forgetRows drops a compiled table's rows, keeping its segments: once in
// the kernel, they are not needed here.
func (r *Registry) forgetRows(o *object) {
	if o.table != nil {
		o.table = &Table{Base: o.table.Base, Segments: o.table.Segments}
	}
}

// makeRoom evicts tables until n more bytes fit: first those no process
// maps, then the least recently used.
func (r *Registry) makeRoom(n int, now time.Time) bool {
	if n > r.cfg.MaxBytes {
		return false
	}
	for r.loadedBytes()+n > r.cfg.MaxBytes {
		var victim *object
		for _, o := range r.objects {
			if o.id != 0 && (victim == nil || colder(o, victim)) {
				victim = o
			}
		}
		if victim == nil {
			return false
		}
		r.unload(victim, EvictedSpace)
	}
	return true
}

// colder orders eviction: tables no process maps first, then by last use.
func colder(a, b *object) bool {
	if (a.refs == 0) != (b.refs == 0) {
		return a.refs == 0
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

// remove releases what pid held.
func (r *Registry) remove(pid uint32) {
	p, ok := r.procs[pid]
	if !ok {
		return
	}
	delete(r.procs, pid)
	now := time.Now()
	for _, o := range p.objects {
		o.refs--
		o.lastUse = now
	}
	if err := r.sink.UnloadProcess(pid); err != nil {
		slog.Debug("unwind: unloading the ranges of a process", "pid", pid, "err", err)
	}
	r.publish()
}

// sweep unloads the tables no process mapped for Config.Linger, and forgets
// objects known to have no table once unused as long.
func (r *Registry) sweep(now time.Time) {
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
	tables, bytes, rows, procs := 0, 0, 0, 0
	for _, o := range r.objects {
		if o.id != 0 {
			tables++
			bytes += o.bytes
			rows += o.rows
		}
	}
	for _, p := range r.procs {
		if p.ranges {
			procs++
		}
	}
	r.count(func(s *Stats) { s.Tables, s.TableBytes, s.Rows, s.Processes = tables, bytes, rows, procs })
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
	st.QueueDropped = r.dropped.Load()
	return st
}
