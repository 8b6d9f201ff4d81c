package symbolizer

import (
	"errors"
	"hash/maphash"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// Frame is one symbolized stack frame.
type Frame struct {
	Address    uint64   // the runtime address as sampled
	ObjAddress uint64   // the address in the object's own ELF virtual address space (for PIE/.so relocated); == Address for kernel frames and unmapped ones
	Function   string   // demangled name; "" when unknown (never invent a name)
	File       string   // source file when known (Go pclntab gives it), else ""
	Line       int      // source line when known, else 0
	Mapping    *Mapping // the mapping the address falls in; nil for kernel frames and for addresses in no mapping. Shared: do not modify.
	Kernel     bool
	// Interpreter is set on a frame of interpreted code (a Python function, which
	// package interp names): the runtime, as OpenTelemetry's profile.frame.type
	// names it ("cpython"). Such a frame has no Mapping nor address: Function, File
	// and Line say where it was.
	Interpreter string
	// Inlined are the calls the compiler inlined at this address, innermost first, each
	// inlined into the next and the last into Function; nil when there are none or the
	// object does not record them (only Go pclntabs do). When it is set, Function, File
	// and Line are the physical function and the position of the call the outermost
	// inlined call was inlined at (what runtime.CallersFrames reports for the last
	// frame). Shared: treat it as read-only.
	Inlined []InlinedCall
}

// Options configures a Symbolizer; zero fields take their defaults.
type Options struct {
	ProcRoot string // default "/proc"
	// MaxObjects bounds the object cache (LRU), default 512: each cached object keeps its
	// file open. Objects are closed as soon as no cached process maps them; the bound
	// only matters when the processes held map more.
	MaxObjects int
	// MaxProcesses bounds the process snapshots (LRU), default 4096. Snapshots are
	// released by ReleaseProcess; the bound is a second line for callers that do not say
	// when processes are done with, or hosts with more sampled processes than it.
	MaxProcesses int
	// FrameCacheSize is how many object addresses and what they name are
	// remembered (two-way set-associative, rounded up to a power of two),
	// default 16384; negative turns the cache off.
	FrameCacheSize int
}

// Stats are the Symbolizer's self-metrics: monotonically increasing counters, except for
// the gauges marked so.
type Stats struct {
	FramesSymbolized                   uint64 // named frames ("hits")
	FramesUnsymbolized                 uint64 // frames returned with Function=="" ("misses")
	Errors                             uint64 // failures reading maps / opening or parsing objects
	ObjectCacheHits, ObjectCacheMisses uint64
	FrameCacheHits, FrameCacheMisses   uint64 // user frames named from the frame cache, and looked up in their object
	ObjectsCached, ProcessesCached     int    // current sizes (gauges)
	MapsReads                          uint64
	PerfMapBadLines                    uint64 // unparsable lines skipped in /tmp/perf-PID.map files

	// ObjectsMapped is how many distinct objects the cached processes map, OpenFiles
	// how many object files are open (gauges).
	ObjectsMapped, OpenFiles int
	// ProcessBytes estimates the heap the cached process snapshots take (gauge).
	ProcessBytes int
	// ProcessesForgotten counts snapshots released by ReleaseProcess, ProcessesEvicted
	// those pushed out by MaxProcesses.
	ProcessesForgotten, ProcessesEvicted uint64
	// ObjectsUnmapped counts objects closed because no cached process mapped them any
	// more, ObjectsEvicted those pushed out by MaxObjects.
	ObjectsUnmapped, ObjectsEvicted uint64
	// MapsQueries counts snapshots read with the PROCMAP_QUERY ioctl (executable
	// mappings only, build IDs from the kernel), the rest of MapsReads parsed the text.
	MapsQueries uint64
	// ForkSnapshots counts processes forked without an exec since whose
	// snapshot was their parent's, not a read of /proc (ProcessForked).
	ForkSnapshots uint64
}

const (
	defaultProcRoot   = "/proc"
	defaultMaxObjects = 512
	// defaultMaxProcesses holds a busy host's sampled processes plus those that exited
	// during the last drain intervals (100 sampled exits a second for 20 s is 2,000),
	// at about 1.5 KiB each for a process mapping ten objects.
	defaultMaxProcesses = 4096
	// defaultMapsReread bounds how often an address outside every known mapping makes User
	// re-read /proc/PID/maps: often enough to catch dlopen'ed libraries quickly, rarely
	// enough that a garbage return address in every sample costs nothing.
	defaultMapsReread = 500 * time.Millisecond
	// filesPerObject sizes the (dev, inode) -> build ID index relative to the object cache:
	// one object is often reachable through several files (containers, copies).
	filesPerObject = 4
)

// Symbolizer names user and kernel addresses. Create it with New.
type Symbolizer struct {
	procRoot   string
	mapsReread time.Duration
	maxVDSOs   int
	seed       maphash.Seed // for vDSO content hashes

	// noProcmapQuery is set once the maps files did not answer PROCMAP_QUERY (procmap.go).
	noProcmapQuery atomic.Bool

	knames       kernelNames // names from the kernel itself, when a KernelNamer is set
	kernelLoader sync.Mutex  // serializes kallsyms loads
	kernel       atomic.Pointer[symbolTable]

	ownVDSOOnce  sync.Once
	ownVDSOImage *vdsoImage

	blocks *blockCache // recently read blocks of the cached objects' files
	frames *frameCache // what recent object addresses name; nil when off

	mu       sync.Mutex // guards the fields below
	objects  *lru[objKey, *objEntry]
	files    *lru[fileKey, fileInfo] // which object a (dev, inode) held, to skip opening it
	procs    *lru[uint32, *process]
	loading  map[fileKey]*loadCall
	vdsoKeys map[uint64]objKey // vDSO content hash -> object key
	// mapped counts, per object, the cached (or being built) snapshots that map it:
	// an object is closed when its count drops to zero (release.go).
	mapped map[objKey]int
	// missing holds pids whose maps could not be read lately (UnixNano of the attempt).
	missing   map[uint32]int64
	procBytes int // estimated heap of the cached snapshots

	framesNamed, framesUnnamed, errors  atomic.Uint64
	objectHits, objectMisses, mapsReads atomic.Uint64
	forkSnapshots                       atomic.Uint64
	perfMapBadLines, mapsQueries        atomic.Uint64
	processesForgotten, objectsUnmapped atomic.Uint64
	openFiles                           atomic.Int64
}

// New returns a Symbolizer with empty caches.
func New(opts Options) *Symbolizer {
	if opts.ProcRoot == "" {
		opts.ProcRoot = defaultProcRoot
	}
	if opts.MaxObjects <= 0 {
		opts.MaxObjects = defaultMaxObjects
	}
	if opts.MaxProcesses <= 0 {
		opts.MaxProcesses = defaultMaxProcesses
	}
	objects := newLRU[objKey, *objEntry](opts.MaxObjects)
	objects.onEvict = func(_ objKey, e *objEntry) { e.evict() }
	s := &Symbolizer{
		procRoot:   opts.ProcRoot,
		mapsReread: defaultMapsReread,
		maxVDSOs:   16,
		blocks:     newBlockCache(blockCacheBytes),
		frames:     newFrameCache(opts.FrameCacheSize),
		objects:    objects,
		files:      newLRU[fileKey, fileInfo](opts.MaxObjects * filesPerObject),
		procs:      newLRU[uint32, *process](opts.MaxProcesses),
		loading:    make(map[fileKey]*loadCall),
		vdsoKeys:   make(map[uint64]objKey),
		mapped:     make(map[objKey]int),
		missing:    make(map[uint32]int64),
		seed:       maphash.MakeSeed(),
	}
	s.procs.onEvict = func(_ uint32, p *process) { s.releaseSnapshotLocked(p) }
	return s
}

// Stats returns the counters and cache sizes.
func (s *Symbolizer) Stats() Stats {
	st := Stats{
		FramesSymbolized:   s.framesNamed.Load(),
		FramesUnsymbolized: s.framesUnnamed.Load(),
		Errors:             s.errors.Load(),
		ObjectCacheHits:    s.objectHits.Load(),
		ObjectCacheMisses:  s.objectMisses.Load(),
		MapsReads:          s.mapsReads.Load(),
		MapsQueries:        s.mapsQueries.Load(),
		ForkSnapshots:      s.forkSnapshots.Load(),
		PerfMapBadLines:    s.perfMapBadLines.Load(),
		FrameCacheHits:     s.frames.hitCount(),
		FrameCacheMisses:   s.frames.missCount(),
		ProcessesForgotten: s.processesForgotten.Load(),
		ObjectsUnmapped:    s.objectsUnmapped.Load(),
		OpenFiles:          int(s.openFiles.Load()),
	}
	s.mu.Lock()
	st.ObjectsCached, st.ProcessesCached = s.objects.len(), s.procs.len()
	st.ObjectsEvicted, st.ProcessesEvicted = s.objects.evicted, s.procs.evicted
	st.ObjectsMapped, st.ProcessBytes = len(s.mapped), s.procBytes
	s.mu.Unlock()
	return st
}

func (s *Symbolizer) countFrames(frames []Frame) {
	named := 0
	for i := range frames {
		if frames[i].Function != "" {
			named++
		}
	}
	s.framesNamed.Add(uint64(named))
	s.framesUnnamed.Add(uint64(len(frames) - named))
}

// ExactAddress marks a user address passed to User that is an interrupted
// instruction, not a return address (user addresses never have this bit).
const ExactAddress = 1 << 63

// lookupAddress is where a frame's function is looked up: return addresses (every frame
// but the leaf) point after the call instruction, which for a call at the very end of a
// function is already the next function, so they are looked up one byte earlier.
func lookupAddress(addr uint64, leaf bool) uint64 {
	if leaf || addr == 0 {
		return addr
	}
	return addr - 1
}

// Kernel symbolizes kernel addresses (Kernel true, Mapping nil; module functions are named
// without their module). With a KernelNamer (SetKernelNamer) the running kernel names them;
// otherwise, or if it fails, /proc/kallsyms does (loaded lazily once, reloadable via
// ReloadKallsyms). If kallsyms shows zero addresses (kptr_restrict / missing CAP_SYSLOG),
// ReloadKallsyms returns an error once and frames stay unnamed.
func (s *Symbolizer) Kernel(addrs []uint64) []Frame {
	frames := make([]Frame, len(addrs))
	for i, addr := range addrs {
		frames[i] = Frame{Address: addr, ObjAddress: addr, Kernel: true}
	}
	if !s.nameKernelFrames(frames) {
		table := s.kernelTable()
		for i, addr := range addrs {
			if j := table.lookup(lookupAddress(addr, i == 0)); j >= 0 {
				frames[i].Function = table.name(j)
			}
		}
	}
	s.countFrames(frames)
	return frames
}

// kernelTable returns the kallsyms table, loading it on first use.
func (s *Symbolizer) kernelTable() *symbolTable {
	if t := s.kernel.Load(); t != nil {
		return t
	}
	s.kernelLoader.Lock()
	defer s.kernelLoader.Unlock()
	if t := s.kernel.Load(); t != nil {
		return t
	}
	_ = s.loadKallsyms()
	return s.kernel.Load()
}

// ReloadKallsyms re-reads /proc/kallsyms, e.g. after modules were loaded. It returns
// ErrKallsymsRestricted if the kernel hides the addresses; kernel frames then stay unnamed.
// With a KernelNamer it does nothing: the kernel names every new address itself, modules
// loaded since included.
func (s *Symbolizer) ReloadKallsyms() error {
	if s.hasKernelNamer() {
		return nil
	}
	s.kernelLoader.Lock()
	defer s.kernelLoader.Unlock()
	return s.loadKallsyms()
}

// loadKallsyms replaces the kernel table. When reading fails it keeps the previous table,
// or installs an empty one so that lookups do not retry on every call; when the addresses
// are hidden, the old ones are not trusted either. Callers hold kernelLoader.
func (s *Symbolizer) loadKallsyms() error {
	table, err := s.readKallsyms()
	if err != nil {
		s.errors.Add(1)
		if s.kernel.Load() != nil && !errors.Is(err, ErrKallsymsRestricted) {
			return err
		}
		table = symbolTable{}
	}
	s.kernel.Store(&table)
	return err
}

func (s *Symbolizer) readKallsyms() (symbolTable, error) {
	f, err := os.Open(filepath.Join(s.procRoot, "kallsyms"))
	if err != nil {
		return symbolTable{}, err
	}
	defer f.Close()
	return parseKallsyms(f)
}
