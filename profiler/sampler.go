package profiler

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/cgscope/cgscope/bpf"
)

// Config sizes and paces the CPU sampler.
type Config struct {
	// Frequency is the number of samples per second per CPU (1..1000).
	Frequency int
	// MaxSampleKeys bounds the unique (process, thread, cgroup, stack) keys
	// counted per drain interval; samples beyond it are counted as dropped.
	MaxSampleKeys int
	// OffCPUStacks is how many stacks the off-CPU sampler keeps (an LRU:
	// a sample's stacks are taken when its thread leaves the CPU, perhaps
	// in an earlier interval than it is drained); 0 when it will not be
	// loaded.
	OffCPUStacks int
	// MaxStacks bounds the unique stacks (user and kernel together) per drain
	// interval; a stack beyond it is lost (the sample is kept) and counted.
	MaxStacks int
	// MaxProcesses bounds the processes remembered as already announced.
	MaxProcesses int
	// UnwindTableBytes bounds the kernel memory of unwind tables (in leaves
	// of LeafBytes); UnwindProcesses the processes with unwind ranges at
	// once. The walker uses frame pointers for the rest.
	UnwindTableBytes int
	UnwindProcesses  int
	// BTF, when set, is the parsed kernel BTF shared with other loads;
	// parsing it is most of a load's CPU time. nil parses it afresh.
	BTF *btf.Cache
}

// DefaultConfig returns the sizes cgscope uses unless told otherwise.
func DefaultConfig() Config {
	return Config{Frequency: 19, MaxSampleKeys: 16384, MaxStacks: 8192, OffCPUStacks: 4096, MaxProcesses: 8192,
		UnwindTableBytes: 16 << 20, UnwindProcesses: 4096}
}

// RangeError reports a Config field outside its accepted range.
type RangeError struct {
	Field         string // the Config field's name
	Value, Lo, Hi int
}

func (e *RangeError) Error() string {
	return fmt.Sprintf("%s %d out of range %d..%d", e.Field, e.Value, e.Lo, e.Hi)
}

// Validate reports the first configuration value out of range.
func (c Config) Validate() error {
	for _, f := range []RangeError{
		{"Frequency", c.Frequency, 1, 1000},
		{"MaxSampleKeys", c.MaxSampleKeys, 64, 1 << 22},
		{"MaxStacks", c.MaxStacks, 64, 1 << 20},
		{"OffCPUStacks", c.OffCPUStacks, 0, 1 << 20},
		{"MaxProcesses", c.MaxProcesses, 64, 1 << 22},
		{"UnwindTableBytes", c.UnwindTableBytes, 64 * LeafBytes, 1 << 30},
		{"UnwindProcesses", c.UnwindProcesses, 16, 1 << 20},
	} {
		if f.Value < f.Lo || f.Value > f.Hi {
			return &f
		}
	}
	return nil
}

// Sampler owns the loaded CPU-sampling programs, their maps and perf events.
type Sampler struct {
	cfg     Config
	objs    samplerObjects
	namer   *kernelNamer // nil when the kernel refused it
	unwind  *UnwindTables
	interp  *InterpreterProcs
	links   []link.Link
	perfFDs []int
	events  *ringbuf.Reader
	// eventsFile is the ring's descriptor (a copy) in Go's network poller,
	// which wakes RunProcessEvents; eventRec its reused record.
	eventsFile *os.File
	eventRec   ringbuf.Record
	eventBatch []processEvent // reused by readEventBatch
	// imagesGoneUnread counts the images not announced: gone before their
	// notice was read.
	imagesGoneUnread atomic.Uint64
	closing          atomic.Bool // Close began: RunProcessEvents's error is expected

	drainMu    sync.Mutex // serializes Drain; guards generation, lastDrain and bufs
	generation uint32
	lastDrain  time.Time
	bufs       *drainBuffers // allocated by the first Drain

	stopOnce  sync.Once
	closeOnce sync.Once
	eventsWG  sync.WaitGroup

	offCPU           atomic.Pointer[OffCPU] // loaded by LoadOffCPU; drained with the CPU samples
	offCPUStacksLost atomic.Uint64          // off-CPU stacks evicted before their sample was drained

	// eventsMu orders the readers of the new-process ring: RunProcessEvents
	// on a wakeup, Drain before the maps. handler is RunProcessEvents' (nil
	// before it runs); it is also told of the exits the drain sweeps out.
	eventsMu sync.Mutex
	handler  ProcessHandler
}

// NewSampler checks the host, loads the programs and starts sampling on every
// online CPU: Load, then Attach. The caller must Close it.
func NewSampler(cfg Config) (*Sampler, error) {
	s, err := Load(cfg)
	if err != nil {
		return nil, err
	}
	if err := s.Attach(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Load checks cfg and the host, and loads the sampler's programs and maps
// into the kernel, attaching nothing: nothing is sampled until Attach. The
// caller must Close it.
func Load(cfg Config) (*Sampler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := Preflight(); err != nil {
		return nil, err
	}
	s := &Sampler{cfg: cfg, lastDrain: time.Now()}
	err := s.load()
	// The parsed kernel BTF (~3 MiB of heap) is needed only to load; keeping
	// it in cfg would keep it for the Sampler's life.
	s.cfg.BTF = nil
	if err != nil {
		return nil, err
	}
	events, err := ringbuf.NewReader(s.objs.ProcEvents)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("opening new-process ring buffer: %w", err)
	}
	s.events = events
	if s.eventsFile, err = pollableFile(s.objs.ProcEvents.FD(), "proc_events"); err != nil {
		s.Close()
		return nil, fmt.Errorf("polling the new-process ring buffer: %w", err)
	}
	return s, nil
}

// samplerObjects are the Profile object's maps, its sampling program and
// the two programs that keep known_procs true across exec and exit;
// kernel_symbols loads on its own (see kernelNamer).
type samplerObjects struct {
	bpf.ProfileMaps
	SampleCpu   *ebpf.Program `ebpf:"sample_cpu"`
	ProcessExec *ebpf.Program `ebpf:"process_exec"`
	ProcessExit *ebpf.Program `ebpf:"process_exit"`
	// ProcessExitLeader replaces ProcessExit on kernels whose
	// sched_process_exit does not pass group_dead.
	ProcessExitLeader *ebpf.Program  `ebpf:"process_exit_leader"`
	ProcEpoch         *ebpf.Variable `ebpf:"proc_epoch"`
}

func (o *samplerObjects) Close() error {
	return errors.Join(o.SampleCpu.Close(), o.ProcessExec.Close(), o.ProcessExit.Close(), o.ProcessExitLeader.Close(), o.ProfileMaps.Close())
}

func (s *Sampler) load() error {
	spec, err := bpf.LoadProfile()
	if err != nil {
		return fmt.Errorf("reading embedded BPF object: %w", err)
	}
	for _, name := range []string{bpf.ProfileMapCounts0, bpf.ProfileMapCounts1} {
		spec.Maps[name].MaxEntries = uint32(s.cfg.MaxSampleKeys)
	}
	spec.Maps[bpf.ProfileMapCounts].InnerMap.MaxEntries = uint32(s.cfg.MaxSampleKeys)
	for _, name := range []string{bpf.ProfileMapStacks0, bpf.ProfileMapStacks1} {
		spec.Maps[name].MaxEntries = uint32(s.cfg.MaxStacks)
	}
	spec.Maps[bpf.ProfileMapStacks].InnerMap.MaxEntries = uint32(s.cfg.MaxStacks)
	for _, name := range []string{bpf.ProfileMapOffcpuCounts0, bpf.ProfileMapOffcpuCounts1} {
		spec.Maps[name].MaxEntries = uint32(s.cfg.MaxSampleKeys)
	}
	spec.Maps[bpf.ProfileMapOffcpuCounts].InnerMap.MaxEntries = uint32(s.cfg.MaxSampleKeys)
	// An LRU map is allocated whole: no room for off-CPU stacks unless the
	// off-CPU sampler will be loaded.
	spec.Maps[bpf.ProfileMapOffcpuStacks].MaxEntries = uint32(max(s.cfg.OffCPUStacks, 1))
	spec.Maps[bpf.ProfileMapKnownProcs].MaxEntries = uint32(s.cfg.MaxProcesses)
	leaves := s.cfg.UnwindTableBytes / LeafBytes
	spec.Maps[bpf.ProfileMapUnwindLeaves].MaxEntries = uint32(leaves)
	spec.Maps[bpf.ProfileMapUnwindIndex].MaxEntries = uint32(2 * leaves) // room for fragmentation
	spec.Maps[bpf.ProfileMapUnwindTables].MaxEntries = uint32(min(leaves, 1<<16))
	spec.Maps[bpf.ProfileMapUnwindProcs].MaxEntries = uint32(s.cfg.UnwindProcesses)

	if err := spec.LoadAndAssign(&s.objs, &ebpf.CollectionOptions{Cache: s.cfg.BTF}); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			slog.Error("BPF verifier rejected the CPU sampler", "log", fmt.Sprintf("%+v", verr))
		}
		return fmt.Errorf("%w: loading the CPU sampler BPF program: %w", ErrPreflight, err)
	}
	s.unwind = newUnwindTables(&s.objs, leaves)
	s.interp = &InterpreterProcs{procs: s.objs.InterpProcs}
	if s.namer, err = loadKernelNamer(spec, s.cfg.BTF); err != nil {
		slog.Warn("kernel frames will be named from /proc/kallsyms", "err", err)
	}
	return nil
}

// Attach starts sampling: it attaches the exec and exit hooks, then opens
// one cpu-clock event per online CPU with the sampling program, so that no
// process image is announced before its exec can be seen. On error, what
// was attached stays until Close.
func (s *Sampler) Attach() error {
	l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: "sched_process_exec", Program: s.objs.ProcessExec})
	if err != nil {
		return fmt.Errorf("%w: attaching to the sched_process_exec raw tracepoint: %w", ErrPreflight, err)
	}
	s.links = append(s.links, l)
	l, err = link.AttachRawTracepoint(link.RawTracepointOptions{Name: "sched_process_exit", Program: s.objs.ProcessExit})
	if err != nil {
		// An older kernel: its tracepoint has no group_dead argument.
		l, err = link.AttachRawTracepoint(link.RawTracepointOptions{Name: "sched_process_exit", Program: s.objs.ProcessExitLeader})
	}
	if err != nil {
		return fmt.Errorf("%w: attaching to the sched_process_exit raw tracepoint: %w", ErrPreflight, err)
	}
	s.links = append(s.links, l)
	cpus, err := onlineCPUs()
	if err != nil {
		return fmt.Errorf("listing online CPUs: %w", err)
	}
	s.drainMu.Lock()
	s.lastDrain = time.Now() // the first window starts with sampling
	s.drainMu.Unlock()
	for _, cpu := range cpus {
		if err := s.attachCPU(cpu); err != nil {
			return err
		}
	}
	return nil
}

// attachCPU opens the cpu-clock event of one CPU and attaches the sampling
// program to it.
func (s *Sampler) attachCPU(cpu int) error {
	fd, err := openCPUClock(cpu, s.cfg.Frequency)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrPreflight, err)
	}
	s.perfFDs = append(s.perfFDs, fd)
	l, err := link.AttachRawLink(link.RawLinkOptions{
		Target:  fd,
		Program: s.objs.SampleCpu,
		Attach:  ebpf.AttachPerfEvent,
	})
	if err != nil {
		return fmt.Errorf("%w: attaching the CPU sampler to CPU %d: %w", ErrPreflight, cpu, err)
	}
	s.links = append(s.links, l)
	return nil
}

// KernelNamer returns a function that names kernel addresses by asking the
// running kernel, one name per address ("" where no symbol covers it), or nil
// when the kernel refused the program that does it.
func (s *Sampler) KernelNamer() func(addrs []uint64) ([]string, error) {
	if s.namer == nil {
		return nil
	}
	return s.namer.Names
}

// CPUs returns the number of CPUs being sampled.
func (s *Sampler) CPUs() int { return len(s.perfFDs) }

// Frequency returns the per-CPU sampling frequency in Hz.
func (s *Sampler) Frequency() int { return s.cfg.Frequency }

// UnwindTables returns the writer of the sampler's unwind tables.
func (s *Sampler) UnwindTables() *UnwindTables { return s.unwind }

// ProcessHandler is told about process images as the sampler sees them.
// Each image has a cookie (never 0); what is loaded for the walker carries
// it (UnwindTables.LoadProcess), so it is never used for another image of
// the pid.
type ProcessHandler interface {
	// ProcessStarted: the first sample of a process image (new process,
	// reused pid, or exec) was just taken.
	ProcessStarted(pid uint32, image uint64)
	// ProcessForked is ProcessStarted for a process forked from parent
	// that has not exec'd since and runs the same executable: its
	// mappings are parent's as of the fork.
	ProcessForked(pid uint32, image uint64, parent uint32)
	// ProcessGone: an announced image exec'd or exited (image 0: the
	// drain found the process gone).
	ProcessGone(pid uint32, image uint64)
	// ProcessMappingsChanged: the stack walker met code outside the
	// process's mappings it was given.
	ProcessMappingsChanged(pid uint32, image uint64)
	// ProcessVanished is told instead of ProcessStarted or ProcessForked
	// when the image exec'd or exited before its notice was read: its
	// mappings are gone (or another image's). Its ProcessGone follows.
	ProcessVanished(pid uint32, image uint64)
}

// RunProcessEvents tells h about process images until the sampler is
// closed. It blocks; run it in its own goroutine.
//
// It reads the ring when the sampler wakes it: for a new image, whose
// mappings are read while the process lives, or a changed mapping. The other
// events (exits, processes forked without an exec) wait for the next wakeup
// or drain (Drain reads the ring first): it does not poll, since on an idle
// host ten polls a second were four tenths of the daemon's CPU.
//
// It waits for the ring in Go's network poller, not in a blocking
// epoll_wait of its own: a goroutine blocked in a system call makes the
// runtime's sysmon hand its P off and poll every 20 µs for a while after,
// which cost more than the events themselves on a host starting 100
// processes a second.
func (s *Sampler) RunProcessEvents(h ProcessHandler) {
	s.eventsWG.Add(1)
	defer s.eventsWG.Done()
	s.eventsMu.Lock()
	s.handler = h
	s.eventsMu.Unlock()
	rc, err := s.eventsFile.SyscallConn()
	if err != nil {
		slog.Error("reading new-process events", "err", err)
		return
	}
	var readErr error
	drain := func(uintptr) bool {
		readErr = s.readPendingEvents()
		return readErr != nil // else wait for the next wakeup
	}
	err = rc.Read(drain) // drains first, then after each wakeup
	if readErr != nil {
		err = readErr
	}
	if !s.closing.Load() {
		slog.Error("reading new-process events stopped", "err", err)
	}
}

// readPendingEvents tells RunProcessEvents' handler, if it runs, about every
// event in the ring now.
func (s *Sampler) readPendingEvents() error {
	s.eventsMu.Lock()
	defer s.eventsMu.Unlock()
	if s.handler == nil {
		return nil
	}
	return s.readProcessEvents(s.handler)
}

// readProcessEvents tells h about every event in the ring now, without
// waiting for more. It reads them all first: an image whose exec or exit
// is among them is gone, so it is told as vanished, not started (its
// mappings would be another image's, or none: under churn, half the reads
// failed so), and counted (Stats.ImagesGoneUnread).
func (s *Sampler) readProcessEvents(h ProcessHandler) error {
	batch, err := s.readEventBatch()
	var gone map[processImage]bool // nil (no allocation) in a batch without an end
	for _, ev := range batch {
		if ev.kind == bpf.ProfileProcessEventKindPROCESS_GONE {
			if gone == nil {
				gone = map[processImage]bool{}
			}
			gone[processImage{ev.pid, ev.image}] = true
		}
	}
	for _, ev := range batch {
		switch ev.kind {
		case bpf.ProfileProcessEventKindPROCESS_NEW:
			switch {
			case gone[processImage{ev.pid, ev.image}]:
				s.imagesGoneUnread.Add(1)
				h.ProcessVanished(ev.pid, ev.image)
			case ev.parent != 0 && ev.parent != ev.pid:
				h.ProcessForked(ev.pid, ev.image, ev.parent)
			default:
				h.ProcessStarted(ev.pid, ev.image)
			}
		case bpf.ProfileProcessEventKindPROCESS_GONE:
			h.ProcessGone(ev.pid, ev.image)
		case bpf.ProfileProcessEventKindPROCESS_MAPPINGS_CHANGED:
			if !gone[processImage{ev.pid, ev.image}] {
				h.ProcessMappingsChanged(ev.pid, ev.image)
			}
		}
	}
	return err
}

// processEvent is a record of the new-process ring (struct new_process_event).
type processEvent struct {
	kind        bpf.ProfileProcessEventKind
	pid, parent uint32
	image       uint64
}

// processImage names an image of a process: its pid and cookie.
type processImage struct {
	pid   uint32
	image uint64
}

// readEventBatch returns the events in the ring now, in s.eventBatch (the
// ring holds a few thousand at most).
func (s *Sampler) readEventBatch() ([]processEvent, error) {
	s.events.SetDeadline(time.Unix(1, 0)) // in the past: never wait
	batch := s.eventBatch[:0]
	defer func() { s.eventBatch = batch[:0] }()
	for {
		// An empty ring is seen from its positions: ReadInto would ask
		// epoll, a system call per look (two at the end of every batch).
		if s.events.AvailableBytes() == 0 {
			return batch, nil
		}
		err := s.events.ReadInto(&s.eventRec)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return batch, nil
		}
		if err != nil {
			return batch, err
		}
		rec := s.eventRec.RawSample
		if len(rec) < 20 {
			continue
		}
		batch = append(batch, processEvent{
			pid:    nativeEndian.Uint32(rec),
			kind:   bpf.ProfileProcessEventKind(nativeEndian.Uint32(rec[4:])),
			image:  nativeEndian.Uint64(rec[8:]),
			parent: nativeEndian.Uint32(rec[16:]),
		})
	}
}

// Stop ends sampling: it detaches the program and closes the perf events.
// What was sampled until then stays in the maps for a last Drain, so a
// shutdown loses nothing. It is safe to call more than once.
func (s *Sampler) Stop() error {
	var errs []error
	s.stopOnce.Do(func() {
		if o := s.offCPU.Load(); o != nil {
			errs = append(errs, o.halt())
		}
		for _, l := range s.links {
			errs = append(errs, l.Close())
		}
		for _, fd := range s.perfFDs {
			errs = append(errs, unix.Close(fd))
		}
	})
	return errors.Join(errs...)
}

// Close stops sampling and frees the maps. It is safe to call more than once.
func (s *Sampler) Close() error {
	errs := []error{s.Stop()}
	s.closeOnce.Do(func() {
		if o := s.offCPU.Load(); o != nil {
			errs = append(errs, o.Close()) // before the maps it shares
		}
		s.closing.Store(true)
		if s.eventsFile != nil {
			errs = append(errs, s.eventsFile.Close()) // wakes RunProcessEvents
		}
		if s.events != nil {
			errs = append(errs, s.events.Close())
			s.eventsWG.Wait()
		}
		errs = append(errs, s.objs.Close(), s.namer.close())
	})
	return errors.Join(errs...)
}

// pollableFile returns a non-blocking copy of fd that Go's network poller
// watches (a BPF ring buffer's fd is pollable).
func pollableFile(fd int, name string) (*os.File, error) {
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(dup, true); err != nil {
		unix.Close(dup)
		return nil, err
	}
	f := os.NewFile(uintptr(dup), name)
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s is not pollable: %w", name, err)
	}
	return f, nil
}
