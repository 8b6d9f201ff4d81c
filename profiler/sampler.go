package profiler

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
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
	// MaxStacks bounds the unique stacks (user and kernel together) per drain
	// interval; a stack beyond it is lost (the sample is kept) and counted.
	MaxStacks int
	// MaxProcesses bounds the processes remembered as already announced.
	MaxProcesses int
	// BTF, when set, is the parsed kernel BTF shared with other loads;
	// parsing it is most of a load's CPU time. nil parses it afresh.
	BTF *btf.Cache
}

// DefaultConfig returns the sizes cgscope uses unless told otherwise.
func DefaultConfig() Config {
	return Config{Frequency: 19, MaxSampleKeys: 16384, MaxStacks: 8192, MaxProcesses: 8192}
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
		{"MaxProcesses", c.MaxProcesses, 64, 1 << 22},
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
	links   []link.Link
	perfFDs []int
	events  *ringbuf.Reader

	drainMu    sync.Mutex // serializes Drain; guards generation, lastDrain and bufs
	generation uint32
	lastDrain  time.Time
	bufs       *drainBuffers // allocated by the first Drain

	stopOnce  sync.Once
	closeOnce sync.Once
	eventsWG  sync.WaitGroup
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
	return s, nil
}

// samplerObjects are the Profile object's maps, its sampling program and
// the two programs that keep known_procs true across exec and exit;
// kernel_symbols loads on its own (see kernelNamer).
type samplerObjects struct {
	bpf.ProfileMaps
	SampleCpu   *ebpf.Program  `ebpf:"sample_cpu"`
	ProcessExec *ebpf.Program  `ebpf:"process_exec"`
	ProcessExit *ebpf.Program  `ebpf:"process_exit"`
	ProcEpoch   *ebpf.Variable `ebpf:"proc_epoch"`
}

func (o *samplerObjects) Close() error {
	return errors.Join(o.SampleCpu.Close(), o.ProcessExec.Close(), o.ProcessExit.Close(), o.ProfileMaps.Close())
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
	spec.Maps[bpf.ProfileMapKnownProcs].MaxEntries = uint32(s.cfg.MaxProcesses)

	if err := spec.LoadAndAssign(&s.objs, &ebpf.CollectionOptions{Cache: s.cfg.BTF}); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			slog.Error("BPF verifier rejected the CPU sampler", "log", fmt.Sprintf("%+v", verr))
		}
		return fmt.Errorf("%w: loading the CPU sampler BPF program: %w", ErrPreflight, err)
	}
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
	for _, tp := range []struct {
		name string
		prog *ebpf.Program
	}{{"sched_process_exec", s.objs.ProcessExec}, {"sched_process_exit", s.objs.ProcessExit}} {
		l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: tp.name, Program: tp.prog})
		if err != nil {
			return fmt.Errorf("%w: attaching to the %s raw tracepoint: %w", ErrPreflight, tp.name, err)
		}
		s.links = append(s.links, l)
	}
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

// RunProcessEvents calls onNew with the pid of every process image (new
// process, reused pid, or exec) the moment its first sample is taken, until
// the sampler is closed. It blocks; run it in its own goroutine.
func (s *Sampler) RunProcessEvents(onNew func(pid uint32)) {
	s.eventsWG.Add(1)
	defer s.eventsWG.Done()
	var ev bpf.ProfileNewProcessEvent
	for {
		rec, err := s.events.Read()
		if err != nil {
			if !errors.Is(err, ringbuf.ErrClosed) {
				slog.Error("reading new-process events stopped", "err", err)
			}
			return
		}
		if len(rec.RawSample) < 4 {
			continue
		}
		ev.Pid = nativeEndian.Uint32(rec.RawSample)
		onNew(ev.Pid)
	}
}

// Stop ends sampling: it detaches the program and closes the perf events.
// What was sampled until then stays in the maps for a last Drain, so a
// shutdown loses nothing. It is safe to call more than once.
func (s *Sampler) Stop() error {
	var errs []error
	s.stopOnce.Do(func() {
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
		if s.events != nil {
			errs = append(errs, s.events.Close())
			s.eventsWG.Wait()
		}
		errs = append(errs, s.objs.Close(), s.namer.close())
	})
	return errors.Join(errs...)
}
