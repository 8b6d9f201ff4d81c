package interp

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/cgscope/cgscope/symbolizer"
)

// Results of looking for an interpreter in a process, for
// cgscope_interpreter_processes_total.
const (
	ResultProfiled       = "profiled"            // its interpreter is walked
	ResultUnsupported    = "unsupported_version" // a version without a layout: profiled natively
	ResultBuild          = "unsupported_build"   // a supported version whose structures failed a check: natively
	ResultNotInitialized = "not_initialized"     // its interpreter never started while it was tried
	ResultError          = "error"               // its memory or object could not be read, or the sink refused it
)

// Results lists the results in the order metrics show them.
var Results = []string{ResultProfiled, ResultUnsupported, ResultBuild, ResultNotInitialized, ResultError}

// Config bounds a Registry.
type Config struct {
	// CacheBytes bounds what is read of processes and kept (names, files,
	// line tables), for all processes together.
	CacheBytes int
	// QueueSize bounds the process notices waiting for the worker.
	QueueSize int
}

// retryDelays are the waits before each new try of a process whose
// interpreter has not initialized yet: a process announced at its first
// sample is often still loading.
var retryDelays = []time.Duration{20 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond,
	250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second, 5 * time.Second}

// changedDelay is how long after a process's mappings changed it is
// looked at again.
const changedDelay = time.Second

// maxLoggedUnsupported bounds the interpreters an unsupported version was
// logged for (one line each).
const maxLoggedUnsupported = 256

// Registry finds the interpreters of sampled processes, gives the BPF
// walkers their State (through the Sink), and names their frames for the
// pipeline (Merge). Process notices only queue; one worker (Run) reads the
// processes.
type Registry struct {
	sink     Sink
	src      Source
	runtimes []Runtime
	cache    *Cache
	queue    chan notice

	goneMu sync.Mutex
	gone   map[uint32]uint64 // exits and execs the queue had no room for
	// releases the queue had no room for
	released map[uint32]bool

	mu        sync.Mutex // guards procs and the counters below
	procs     map[uint32]*proc
	nextOwner uint64
	attached  map[string]map[string]uint64 // runtime → result → processes
	framesOK  map[string]uint64            // runtime → frames named
	framesBad map[string]uint64            // runtime → frames left unnamed
	dropped   uint64                       // notices lost to a full queue

	// Worker state.
	retries map[uint32]*retry
	logged  map[string]bool // unsupported interpreters logged, by runtime and object
}

type noticeKind uint8

const (
	noticeStarted noticeKind = iota
	noticeGone
	noticeChanged
	noticeReleased
)

type notice struct {
	pid   uint32
	image uint64
	kind  noticeKind
}

// proc is a process image the registry looked at.
type proc struct {
	image   uint64
	owner   uint64 // its key in the cache
	runtime Runtime
	process Process // nil: none to walk (unsupported, or none found)
	stopped bool    // the image is gone: kept to name its last samples
}

type retry struct {
	image uint64
	tries int
	at    time.Time
}

// NewRegistry returns a registry of the runtimes; call Run.
func NewRegistry(sink Sink, src Source, runtimes []Runtime, cfg Config) *Registry {
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 4096
	}
	if cfg.CacheBytes <= 0 {
		cfg.CacheBytes = 16 << 20
	}
	r := &Registry{
		sink: sink, src: src, runtimes: runtimes,
		cache:     NewCache(cfg.CacheBytes),
		queue:     make(chan notice, cfg.QueueSize),
		gone:      map[uint32]uint64{},
		released:  map[uint32]bool{},
		procs:     map[uint32]*proc{},
		attached:  map[string]map[string]uint64{},
		framesOK:  map[string]uint64{},
		framesBad: map[string]uint64{},
		retries:   map[uint32]*retry{},
		logged:    map[string]bool{},
	}
	for _, rt := range runtimes {
		r.attached[rt.Name()] = map[string]uint64{}
	}
	return r
}

// ProcessStarted asks for the interpreter of pid's image to be looked for,
// once its mappings are known to the Source.
func (r *Registry) ProcessStarted(pid uint32, image uint64) {
	r.post(notice{pid, image, noticeStarted})
}

// ProcessMappingsChanged asks for a process without an interpreter to be
// looked at again: it may have loaded one since (an embedded libpython).
func (r *Registry) ProcessMappingsChanged(pid uint32, image uint64) {
	r.post(notice{pid, image, noticeChanged})
}

// ProcessGone stops the walker for pid's image (it exec'd or exited; image
// 0: whatever image). What names its frames stays until ReleaseProcess (or
// a new image of the pid): the samples it left in the kernel's maps are
// named after it ended. Never lost: the queue's overflow is kept aside.
func (r *Registry) ProcessGone(pid uint32, image uint64) {
	select {
	case r.queue <- notice{pid, image, noticeGone}:
	default:
		r.goneMu.Lock()
		r.gone[pid] = image
		r.goneMu.Unlock()
	}
}

// ReleaseProcess forgets what was read of pid (its exit was seen and its
// last samples named): the pipeline's per-process release. Never lost.
func (r *Registry) ReleaseProcess(pid uint32) {
	select {
	case r.queue <- notice{pid, 0, noticeReleased}:
	default:
		r.goneMu.Lock()
		r.released[pid] = true
		r.goneMu.Unlock()
	}
}

func (r *Registry) post(n notice) {
	select {
	case r.queue <- n:
	default:
		r.mu.Lock()
		r.dropped++ // profiled natively
		r.mu.Unlock()
	}
}

// Run handles notices and retries until ctx ends.
func (r *Registry) Run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		r.armTimer(timer)
		select {
		case <-ctx.Done():
			return
		case n := <-r.queue:
			r.handle(n)
		case <-timer.C:
			r.retryDue(time.Now())
		}
		r.handleOverflow()
	}
}

func (r *Registry) armTimer(t *time.Timer) {
	var next time.Time
	for _, rt := range r.retries {
		if next.IsZero() || rt.at.Before(next) {
			next = rt.at
		}
	}
	d := time.Hour
	if !next.IsZero() {
		d = max(time.Until(next), 0)
	}
	t.Reset(d)
}

func (r *Registry) handleOverflow() {
	r.goneMu.Lock()
	gone, released := r.gone, r.released
	if len(gone) > 0 {
		r.gone = map[uint32]uint64{}
	}
	if len(released) > 0 {
		r.released = map[uint32]bool{}
	}
	r.goneMu.Unlock()
	for pid, image := range gone {
		r.stop(pid, image)
	}
	for pid := range released {
		r.forget(pid, 0)
	}
}

func (r *Registry) handle(n notice) {
	switch n.kind {
	case noticeStarted:
		r.forget(n.pid, 0) // a new image of the pid: nothing of the old one holds
		r.look(n.pid, n.image, 0)
	case noticeChanged:
		// A library mapped since the process was announced: once the
		// symbolizer has read the mappings again (the unwind tables ask
		// it to, and so does naming an address in no known mapping),
		// look again if nothing was found before. With the whole retry
		// schedule: a library just mapped (an embedder's libpython) is
		// usually not initialized yet; a process whose new mappings hold
		// no candidate is looked at once.
		r.mu.Lock()
		p := r.procs[n.pid]
		r.mu.Unlock()
		if p == nil && r.retries[n.pid] == nil {
			r.retries[n.pid] = &retry{image: n.image, at: time.Now().Add(changedDelay)}
		}
	case noticeGone:
		r.stop(n.pid, n.image)
	case noticeReleased:
		r.forget(n.pid, 0)
	}
}

func (r *Registry) retryDue(now time.Time) {
	for pid, rt := range r.retries {
		if rt.at.After(now) {
			continue
		}
		delete(r.retries, pid)
		r.look(pid, rt.image, rt.tries)
	}
}

// stop takes pid's image (any image with image 0) from the walker and
// stops looking for its interpreter; what names its frames is kept.
func (r *Registry) stop(pid uint32, image uint64) {
	if rt := r.retries[pid]; rt != nil && (image == 0 || rt.image == image) {
		delete(r.retries, pid)
	}
	r.mu.Lock()
	p := r.procs[pid]
	walked := p != nil && p.process != nil && !p.stopped && (image == 0 || p.image == image)
	if walked {
		p.stopped = true
	}
	r.mu.Unlock()
	if walked {
		if err := r.sink.UnloadProcess(pid); err != nil {
			slog.Debug("unloading an interpreter", "pid", pid, "err", err)
		}
	}
}

// forget drops what is held of pid's image (any image with image 0).
func (r *Registry) forget(pid uint32, image uint64) {
	if rt := r.retries[pid]; rt != nil && (image == 0 || rt.image == image) {
		delete(r.retries, pid)
	}
	r.mu.Lock()
	p := r.procs[pid]
	if p != nil && (image == 0 || p.image == image) {
		delete(r.procs, pid)
	} else {
		p = nil
	}
	r.mu.Unlock()
	if p == nil {
		return
	}
	r.cache.DropOwner(p.owner)
	if p.process != nil && !p.stopped {
		if err := r.sink.UnloadProcess(pid); err != nil {
			slog.Debug("unloading an interpreter", "pid", pid, "err", err)
		}
	}
}

// look tries each runtime on pid's candidates. tries counts the earlier
// tries of an interpreter that had not initialized.
func (r *Registry) look(pid uint32, image uint64, tries int) {
	maps, err := r.src.Mappings(pid)
	if err != nil {
		return // gone, or not snapshotted: profiled natively
	}
	mem := NewMemory(pid)
	for _, rt := range r.runtimes {
		for _, m := range maps {
			if m.Object == nil || !rt.Candidate(m.Path) {
				continue
			}
			r.mu.Lock()
			r.nextOwner++
			owner := r.nextOwner
			r.mu.Unlock()
			t := &Target{PID: pid, Mem: mem, Mappings: maps, Candidate: m, Cache: r.cache, Owner: owner,
				Read: func(read func(io.ReaderAt) error) error { return r.src.ReadObject(pid, m.Object, read) }}
			process, err := rt.Attach(t)
			if errors.Is(err, ErrNotInterpreter) {
				continue
			}
			r.settle(pid, image, tries, rt, &m, owner, process, err)
			return
		}
	}
}

// settle records what Attach found.
func (r *Registry) settle(pid uint32, image uint64, tries int, rt Runtime, m *Mapping, owner uint64, process Process, err error) {
	var unsupported *UnsupportedError
	result := ResultProfiled
	switch {
	case err == nil:
		if err = r.sink.LoadProcess(pid, image, process.State()); err != nil {
			slog.Debug("loading an interpreter", "pid", pid, "runtime", rt.Name(), "err", err)
			result, process = ResultError, nil
		}
	case (errors.Is(err, ErrNotReady) || errors.As(err, &unsupported) && unsupported.Retry) && tries < len(retryDelays):
		r.retries[pid] = &retry{image: image, tries: tries + 1, at: time.Now().Add(retryDelays[tries])}
		return
	case errors.Is(err, ErrNotReady):
		result = ResultNotInitialized
	case errors.As(err, &unsupported):
		result = ResultUnsupported
		if unsupported.Build {
			result = ResultBuild
		}
		r.logUnsupported(rt, m, pid, unsupported)
	default:
		slog.Debug("reading an interpreter", "pid", pid, "runtime", rt.Name(), "err", err)
		result = ResultError
	}
	if err != nil {
		process = nil
	}
	r.mu.Lock()
	r.attached[rt.Name()][result]++
	r.procs[pid] = &proc{image: image, owner: owner, runtime: rt, process: process}
	r.mu.Unlock()
}

// logUnsupported logs an unsupported interpreter once per object.
func (r *Registry) logUnsupported(rt Runtime, m *Mapping, pid uint32, e *UnsupportedError) {
	key := rt.Name() + "\x00" + m.BuildID + "\x00" + m.Path
	if r.logged[key] || len(r.logged) >= maxLoggedUnsupported {
		return
	}
	r.logged[key] = true
	msg := "interpreter version not supported: its processes are profiled natively"
	if e.Build {
		msg = "interpreter build not supported (its structures do not match the version's layout): its processes are profiled natively"
	}
	slog.Warn(msg, "runtime", rt.Name(), "version", e.Version, "reason", e.Reason, "object", m.Path, "pid", pid)
}

// Merge returns the native user frames of a sample of pid with the
// interpreted frames its walker recorded (words, of walker kind, and how
// the walk ended) in place of the interpreter loop's frames. Without an
// interpreter of that kind for pid now (the process exec'd since), the
// native frames are returned as they are.
func (r *Registry) Merge(pid uint32, kind Kind, native []symbolizer.Frame, words []uint64, end string) []symbolizer.Frame {
	r.mu.Lock()
	p := r.procs[pid]
	r.mu.Unlock()
	if p == nil || p.process == nil || p.process.State().Kind != kind || len(words) == 0 {
		return native
	}
	frames := p.process.Frames(words)
	named := 0
	for i := range frames {
		if frames[i].Function != "" {
			named++
		}
	}
	name := p.runtime.Name()
	r.mu.Lock()
	r.framesOK[name] += uint64(named)
	r.framesBad[name] += uint64(len(frames) - named)
	r.mu.Unlock()
	var truncated *symbolizer.Frame
	if end != "" {
		truncated = &symbolizer.Frame{Function: "[truncated: " + name + " " + end + "]"}
	}
	return splice(native, frames, p.process.IsLoop, truncated)
}

// Stats are the registry's self-metrics.
type Stats struct {
	// Processes counts the processes looked at, by runtime and result
	// (Results); processes with no candidate of any runtime are not.
	Processes map[string]map[string]uint64
	// Walked is the processes whose interpreter is walked now, by runtime.
	Walked map[string]int
	// FramesNamed and FramesUnnamed count interpreted frames by runtime.
	FramesNamed, FramesUnnamed map[string]uint64
	// NoticesDropped counts process notices lost to a full queue.
	NoticesDropped uint64
	Cache          CacheStats
}

// Stats returns the registry's counters.
func (r *Registry) Stats() Stats {
	st := Stats{Processes: map[string]map[string]uint64{}, Walked: map[string]int{},
		FramesNamed: map[string]uint64{}, FramesUnnamed: map[string]uint64{}}
	r.mu.Lock()
	for name, results := range r.attached {
		st.Processes[name] = map[string]uint64{}
		for res, n := range results {
			st.Processes[name][res] = n
		}
		st.FramesNamed[name], st.FramesUnnamed[name] = r.framesOK[name], r.framesBad[name]
		st.Walked[name] = 0
	}
	for _, p := range r.procs {
		if p.process != nil && !p.stopped {
			st.Walked[p.runtime.Name()]++
		}
	}
	st.NoticesDropped = r.dropped
	r.mu.Unlock()
	st.Cache = r.cache.Stats()
	return st
}
