package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/alecthomas/units"
	"github.com/cilium/ebpf/btf"

	"github.com/cgscope/cgscope/cgroup"
	"github.com/cgscope/cgscope/internal/attribution"
	"github.com/cgscope/cgscope/internal/bpfstats"
	"github.com/cgscope/cgscope/internal/dutycycle"
	"github.com/cgscope/cgscope/internal/pipeline"
	"github.com/cgscope/cgscope/interp"
	"github.com/cgscope/cgscope/interp/php"
	"github.com/cgscope/cgscope/interp/python"
	"github.com/cgscope/cgscope/interp/ruby"
	"github.com/cgscope/cgscope/profiler"
	"github.com/cgscope/cgscope/symbolizer"
	"github.com/cgscope/cgscope/unwind"
)

// profilingFlags are shared by the daemon and `record`.
type profilingFlags struct {
	sampler       profiler.Config
	interval      time.Duration
	maxObjects    int
	maxProcesses  int
	maxCgroups    int
	bpfStatsOnOff bool
	unwindTables  bool
	unwindBytes   units.Base2Bytes
	onDemandBytes units.Base2Bytes
	offCPU        bool
	offCPUConfig  profiler.OffCPUConfig
	interpreters  string
	interpCache   units.Base2Bytes
	switchBudget  time.Duration
	kube          *kubernetesFlags
}

func addProfilingFlags(app *kingpin.Application) *profilingFlags {
	f := &profilingFlags{}
	d := profiler.DefaultConfig()
	app.Flag("profiling.frequency", "CPU samples per second on each CPU (1..1000).").
		Default(fmt.Sprint(d.Frequency)).IntVar(&f.sampler.Frequency)
	app.Flag("profiling.interval", "How often the kernel maps are drained into a profile window.").
		Default("10s").DurationVar(&f.interval)
	app.Flag("profiling.max-sample-keys", "Unique (thread, cgroup, stack) keys kept in the kernel per interval; more are counted in cgscope_samples_dropped_total.").
		Default(fmt.Sprint(d.MaxSampleKeys)).IntVar(&f.sampler.MaxSampleKeys)
	app.Flag("profiling.max-stacks", "Unique stacks kept in the kernel per interval; more are counted in cgscope_samples_dropped_total.").
		Default(fmt.Sprint(d.MaxStacks)).IntVar(&f.sampler.MaxStacks)
	app.Flag("profiling.max-processes", "Processes remembered by the kernel side as already announced to the symbolizer.").
		Default(fmt.Sprint(d.MaxProcesses)).IntVar(&f.sampler.MaxProcesses)
	app.Flag("symbolizer.max-objects", "ELF objects the symbolizer holds open, at most; an object no held process maps is closed before that.").
		Default("512").IntVar(&f.maxObjects)
	app.Flag("symbolizer.max-processes", "Processes whose memory mappings the symbolizer holds, at most; a process is let go of after its exit and last drain before that.").
		Default("4096").IntVar(&f.maxProcesses)
	app.Flag("cgroup.max-paths", "cgroup2 directories indexed to name cgroups.").
		Default("65536").IntVar(&f.maxCgroups)
	app.Flag("unwind.tables", "Unwind user stacks of code without frame pointers with tables compiled from .eh_frame (--no-unwind.tables: frame pointers only).").
		Default("true").BoolVar(&f.unwindTables)
	app.Flag("unwind.max-table-bytes", "Kernel memory of the unwind tables; the coldest are evicted beyond it.").
		Default("16MiB").BytesVar(&f.unwindBytes)
	// A process maps many large libraries it rarely runs (bpftrace: libz3,
	// libclang, libLLVM, about 480 ms of compiling at its start on a busy
	// host, libz3's 165 ms for code it never runs); 1 MiB leaves out
	// libc (150 KB), python3 (400 KB) and libstdc++ (200 KB).
	app.Flag("unwind.on-demand-bytes", "Objects with this much call-frame information (.eh_frame) or more get their unwind table only once the stack walker meets their code (walked by frame pointers until then, a few ms); 0: every table when a process is first sampled.").
		Default("1MiB").BytesVar(&f.onDemandBytes)
	app.Flag("unwind.max-processes", "Processes the stack walker keeps mappings of; the others are walked by frame pointers.").
		Default(fmt.Sprint(d.UnwindProcesses)).IntVar(&f.sampler.UnwindProcesses)
	off := profiler.DefaultOffCPUConfig()
	f.offCPUConfig = off
	app.Flag("profiling.off-cpu", "Profile where threads wait off the CPU (sched_switch tracepoint): the off_cpu profile type (--no-profiling.off-cpu: CPU profiles only).").
		Default("true").BoolVar(&f.offCPU)
	app.Flag("profiling.off-cpu.per-thread", "Off-CPU samples per second of a thread's time off the CPU: switch-outs are sampled in proportion to how long the thread's last ones lasted, and weighted to keep totals unbiased.").
		Default(fmt.Sprint(off.PerThread)).IntVar(&f.offCPUConfig.PerThread)
	app.Flag("profiling.off-cpu.max-stacks", "Off-CPU stacks the kernel keeps (an LRU: a stack is taken when its thread leaves the CPU, maybe intervals before it is drained); an evicted one is counted in cgscope_offcpu_samples_lost_total{reason=\"stack_evicted\"}.").
		Default(fmt.Sprint(d.OffCPUStacks)).IntVar(&f.sampler.OffCPUStacks)
	app.Flag("profiling.off-cpu.max-samples", "Off-CPU stacks taken a second host-wide at most; above it every thread is sampled less.").
		Default(fmt.Sprint(off.MaxSamples)).IntVar(&f.offCPUConfig.MaxSamples)
	app.Flag("scheduler.bpf-budget", "BPF CPU time per second that the programs running at every context switch (off-CPU sampler, run-queue latency histogram) may use together; on hosts that switch more they are attached part of each second and what they count is scaled up.").
		Default("3ms").DurationVar(&f.switchBudget)
	app.Flag("profiling.interpreters", "Interpreted languages whose own frames (functions, files, lines) replace their interpreter's native frames in stacks, comma-separated: "+strings.Join(slices.Sorted(maps.Keys(runtimes)), ", ")+"; none turns it off.").
		Default("cpython,ruby,php").StringVar(&f.interpreters)
	app.Flag("profiling.interpreters.cache-size", "Memory for the names, files and line tables read from interpreted processes; the least recently used go beyond it.").
		Default("16MiB").BytesVar(&f.interpCache)
	app.Flag("profiling.bpf-stats", "Enable the kernel's BPF run-time statistics while running (for cgscope_bpf_program_* metrics).").
		Default("true").BoolVar(&f.bpfStatsOnOff)
	f.kube = addKubernetesFlags(app)
	return f
}

func (f *profilingFlags) validate() error {
	f.sampler.UnwindTableBytes = int(min(f.unwindBytes, 1<<40))
	if !f.offCPU {
		f.sampler.OffCPUStacks = 0 // the map is allocated whole: none without the sampler
	}
	var rangeErr *profiler.RangeError
	if err := f.sampler.Validate(); errors.As(err, &rangeErr) {
		return fmt.Errorf("--%s=%d: want %d..%d", samplerFlagNames[rangeErr.Field], rangeErr.Value, rangeErr.Lo, rangeErr.Hi)
	} else if err != nil {
		return err
	}
	switch {
	case f.interval < time.Second || f.interval > 10*time.Minute:
		return fmt.Errorf("--profiling.interval=%s: want 1s..10m", f.interval)
	case f.onDemandBytes < 0 || f.onDemandBytes > 1<<30:
		return fmt.Errorf("--unwind.on-demand-bytes=%s: want 0..1GiB", f.onDemandBytes)
	case f.maxObjects < 1:
		return fmt.Errorf("--symbolizer.max-objects=%d: want at least 1", f.maxObjects)
	case f.maxProcesses < 1:
		return fmt.Errorf("--symbolizer.max-processes=%d: want at least 1", f.maxProcesses)
	case f.maxCgroups < 1:
		return fmt.Errorf("--cgroup.max-paths=%d: want at least 1", f.maxCgroups)
	case f.offCPUConfig.PerThread < 1 || f.offCPUConfig.PerThread > 100000:
		return fmt.Errorf("--profiling.off-cpu.per-thread=%d: want 1..100000", f.offCPUConfig.PerThread)
	case f.offCPUConfig.MaxSamples < 1 || f.offCPUConfig.MaxSamples > 1000000:
		return fmt.Errorf("--profiling.off-cpu.max-samples=%d: want 1..1000000", f.offCPUConfig.MaxSamples)
	case f.switchBudget < 100*time.Microsecond || f.switchBudget > 100*time.Millisecond:
		return fmt.Errorf("--scheduler.bpf-budget=%s: want 100µs..100ms", f.switchBudget)
	case f.interpCache < 1<<20 || f.interpCache > 1<<30:
		return fmt.Errorf("--profiling.interpreters.cache-size=%s: want 1MiB..1GiB", f.interpCache)
	}
	if _, err := f.runtimes(); err != nil {
		return err
	}
	return f.kube.validate()
}

// runtimes are the interpreted languages cgscope can walk, by the name
// --profiling.interpreters takes (OpenTelemetry's profile.frame.type).
var runtimes = map[string]func() interp.Runtime{
	"cpython": func() interp.Runtime { return python.New() },
	"ruby":    func() interp.Runtime { return ruby.New() },
	"php":     func() interp.Runtime { return php.New() },
}

// runtimes returns the runtimes --profiling.interpreters names.
func (f *profilingFlags) runtimes() ([]interp.Runtime, error) {
	var out []interp.Runtime
	for _, name := range strings.Split(f.interpreters, ",") {
		switch name = strings.TrimSpace(name); {
		case name == "" || name == "none":
		case runtimes[name] != nil:
			out = append(out, runtimes[name]())
		default:
			return nil, fmt.Errorf("--profiling.interpreters: unknown %q, want a list of %s, or none", name, strings.Join(slices.Sorted(maps.Keys(runtimes)), ", "))
		}
	}
	return out, nil
}

// samplerFlagNames names the flag behind each profiler.Config field.
var samplerFlagNames = map[string]string{
	"Frequency":        "profiling.frequency",
	"MaxSampleKeys":    "profiling.max-sample-keys",
	"MaxStacks":        "profiling.max-stacks",
	"OffCPUStacks":     "profiling.off-cpu.max-stacks",
	"MaxProcesses":     "profiling.max-processes",
	"UnwindTableBytes": "unwind.max-table-bytes",
	"UnwindProcesses":  "unwind.max-processes",
}

// agent is the running profiling stack: sampler, symbolizer and pipeline.
type agent struct {
	sampler *profiler.Sampler
	sym     *symbolizer.Symbolizer
	cgroups *cgroup.Resolver // nil without a cgroup2 mount
	// workloads names the containers and pods of cgroups.
	workloads *attribution.Resolver
	// btf is the kernel BTF parsed once for every BPF load at start-up;
	// releaseBTF drops it once everything is loaded.
	btf      *btf.Cache
	pipeline *pipeline.Pipeline
	unwind   *unwind.Registry // nil with --no-unwind.tables
	interp   *interp.Registry // nil with --profiling.interpreters=none
	// switchTime attaches the programs that run at every context switch
	// part of the time, within --scheduler.bpf-budget.
	switchTime     *dutycycle.Controller
	stopSwitchTime func()
	closers        []func() error
}

// startAgent loads and attaches the sampler and starts delivering new-process
// notices to the symbolizer. The pipeline does not drain until Run is called.
func startAgent(f *profilingFlags) (*agent, error) {
	a := &agent{btf: btf.NewCache()}
	cfg := f.sampler
	cfg.BTF = a.btf
	s, err := profiler.NewSampler(cfg)
	if err != nil {
		return nil, err
	}
	a.sampler = s
	if f.bpfStatsOnOff {
		if c, err := bpfstats.Enable(); err == nil {
			a.closers = append(a.closers, c.Close)
		} else if !bpfstats.Enabled() {
			slog.Warn("BPF run-time statistics unavailable: cgscope_bpf_program_* metrics stay at 0; grant CAP_SYS_ADMIN or set sysctl kernel.bpf_stats_enabled=1", "err", err)
		}
	}
	a.sym = symbolizer.New(symbolizer.Options{MaxObjects: f.maxObjects, MaxProcesses: f.maxProcesses})
	cgroups, err := cgroup.NewResolver(f.maxCgroups)
	if err != nil {
		slog.Warn("cgroup paths unavailable; samples get an empty cgroup label", "err", err)
		cgroups = nil
	}
	a.cgroups = cgroups
	if namer := s.KernelNamer(); namer != nil {
		a.sym.SetKernelNamer(namer) // the kernel names its addresses: no /proc/kallsyms
	}
	var paths pipeline.CgroupPaths // a nil *cgroup.Resolver would be a non-nil interface
	if cgroups != nil {
		paths = cgroups
	}
	a.pipeline = pipeline.New(s, a.sym, paths, f.interval)
	workloads, stopWorkloads, err := f.kube.startWorkloads()
	if err != nil {
		a.close()
		return nil, err
	}
	a.workloads = workloads
	a.closers = append(a.closers, stopWorkloads)
	a.pipeline.SetWorkloads(workloads)
	var notices processNotices
	if f.unwindTables {
		reg := unwind.NewRegistry(s.UnwindTables(), pipeline.UnwindSource(a.sym), unwind.Config{
			MaxBytes: f.sampler.UnwindTableBytes, KernelBytes: profiler.TableKernelBytes, Linger: time.Minute,
			OnDemandBytes: int(f.onDemandBytes),
		})
		ctx, cancel := context.WithCancel(context.Background())
		go reg.Run(ctx)
		a.closers = append(a.closers, func() error { cancel(); return nil })
		a.unwind = reg
		notices = append(notices, reg)
	}
	if rts, _ := f.runtimes(); len(rts) > 0 {
		reg := interp.NewRegistry(s.Interpreters(), pipeline.InterpSource(a.sym), rts, interp.Config{CacheBytes: int(f.interpCache)})
		ctx, cancel := context.WithCancel(context.Background())
		go reg.Run(ctx)
		a.closers = append(a.closers, func() error { cancel(); return nil })
		a.interp = reg
		a.pipeline.SetInterpreters(reg)
		// What names a process's frames goes with the process, once its
		// last samples are named.
		a.pipeline.OnProcessReleased(reg)
		notices = append(notices, reg)
	}
	if len(notices) > 0 {
		a.pipeline.SetUnwinder(notices)
	}
	a.startSwitchTime(f)
	go s.RunProcessEvents(a.pipeline)
	go func() {
		if err := a.sym.ReloadKallsyms(); err != nil {
			slog.Warn("kernel frames will stay unnamed", "err", err)
		}
	}()
	slog.Info("profiling", "cpus", s.CPUs(), "frequency_hz", f.sampler.Frequency, "interval", f.interval)
	return a, nil
}

// processNotices hands the pipeline's process notices (after the
// symbolizer has read a new process's mappings) to each of what loads
// things for the walkers: the unwind tables and the interpreters.
type processNotices []pipeline.Unwinder

func (n processNotices) ProcessStarted(pid uint32, image uint64) {
	for _, u := range n {
		u.ProcessStarted(pid, image)
	}
}

func (n processNotices) ProcessGone(pid uint32, image uint64) {
	for _, u := range n {
		u.ProcessGone(pid, image)
	}
}

func (n processNotices) ProcessMappingsChanged(pid uint32, image uint64) {
	for _, u := range n {
		u.ProcessMappingsChanged(pid, image)
	}
}

// startSwitchTime loads the off-CPU sampler (unless turned off) and starts
// the duty cycle of the programs that run at every context switch; others
// join it with a.switchTime.Add. A kernel that cannot run the off-CPU
// sampler leaves CPU profiling on, with one log line.
func (a *agent) startSwitchTime(f *profilingFlags) {
	// Half the budget for what grows with the time attached (every switch
	// seen), half for the off-CPU sampler's stacks, which it holds to that
	// share a second by itself.
	a.switchTime = dutycycle.New(dutycycle.Config{Budget: f.switchBudget / 2})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.switchTime.Run(ctx) }()
	a.stopSwitchTime = func() { cancel(); <-done }
	if !f.offCPU {
		return
	}
	cfg := f.offCPUConfig
	cfg.BTF = a.btf
	cfg.SampleBudget = f.switchBudget / 2
	off, err := a.sampler.LoadOffCPU(cfg)
	if err != nil {
		slog.Warn("off-CPU profiling is off: this kernel cannot run its sched_switch program", "err", err)
		return
	}
	a.switchTime.Add(off)
}

// runPipeline drains on the interval until ctx ends.
func (a *agent) runPipeline(ctx context.Context) { a.pipeline.Run(ctx) }

// releaseBTF lets the parsed kernel BTF be garbage collected: it is only
// needed while programs load, and it is several MiB of heap.
func (a *agent) releaseBTF() { a.btf = nil }

// addCloser runs c when the agent closes, after the sampler is closed, in
// the order added.
func (a *agent) addCloser(c func() error) { a.closers = append(a.closers, c) }

func (a *agent) close() error {
	var errs []error
	if a.stopSwitchTime != nil {
		a.stopSwitchTime() // before the programs it attaches are closed
	}
	if a.sampler != nil {
		errs = append(errs, a.sampler.Close())
	}
	for _, c := range a.closers {
		errs = append(errs, c())
	}
	return errors.Join(errs...)
}
