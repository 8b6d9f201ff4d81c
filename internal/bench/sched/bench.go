package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/cgscope/cgscope/internal/bench/benchutil"
)

// Sources of the loads, relative to the repository.
const (
	loadsSrc = "internal/bench/sched/testdata/loads.c"
	spinPkg  = "./internal/e2e/testdata/gosplit"
)

// load is one of the loads and how its figures are read.
type load struct {
	name   string
	title  string
	events string // what the host counts of it
	// eventCounter reads the host-wide count of its events.
	eventCounter func(hostCounts) uint64
	work         string // its own throughput's unit, per second
	// perCPU: one process per CPU; else one process (pingpong: which forks
	// its partner).
	perCPU bool
	// argv of its i-th process, ending on their own after secs.
	argv func(b binaries, counters string, i int, secs int, opt options) []string
	// cpuShare: its throughput is the share of their CPUs its processes
	// got (from schedstat), not a count of its own.
	cpuShare bool
	// rateTarget is the host event rate its targets are stated at (0:
	// none).
	rateTarget float64
	// bpfTarget is the most BPF time, in % of one core, that cgscope's
	// programs may take at rateTarget.
	bpfTarget float64
}

var loadTable = []*load{
	{name: "pingpong", title: "pipe ping-pong", events: "context switches",
		eventCounter: func(h hostCounts) uint64 { return h.ctxt }, work: "round trips",
		argv: func(b binaries, counters string, i, secs int, _ options) []string {
			return []string{b.loads, "pingpong", counters, strconv.Itoa(i), strconv.Itoa(secs)}
		},
		rateTarget: 150_000, bpfTarget: 0.5},
	{name: "faults", title: "page-fault storm", events: "page faults",
		eventCounter: func(h hostCounts) uint64 { return h.pgfault }, work: "pages touched", perCPU: true,
		argv: func(b binaries, counters string, i, secs int, opt options) []string {
			return []string{b.loads, "faults", counters, strconv.Itoa(i), strconv.Itoa(secs), strconv.Itoa(opt.faultKiB)}
		},
		rateTarget: 140_000, bpfTarget: 0.3},
	{name: "spin", title: "spin (CPU-bound)", events: "context switches",
		eventCounter: func(h hostCounts) uint64 { return h.ctxt }, work: "CPU share", perCPU: true, cpuShare: true,
		argv: func(b binaries, _ string, _, secs int, _ options) []string {
			return []string{b.spin, "-duration", fmt.Sprintf("%ds", secs)}
		}},
}

func loadByName(name string) *load {
	for _, l := range loadTable {
		if l.name == name {
			return l
		}
	}
	return nil
}

// binaries are the loads, built for the run.
type binaries struct{ loads, spin string }

func build(opt options, tmp string) (binaries, error) {
	b := binaries{loads: filepath.Join(tmp, "loads"), spin: filepath.Join(tmp, "gosplit")}
	if _, _, err := benchutil.RunShort(2*time.Minute, opt.Repo, "gcc", "-O2", "-Wall", "-o", b.loads, loadsSrc); err != nil {
		return b, fmt.Errorf("building the loads: %w", err)
	}
	if _, _, err := benchutil.RunShort(5*time.Minute, opt.Repo, "go", "build", "-o", b.spin, spinPkg); err != nil {
		return b, fmt.Errorf("building the spin load: %w", err)
	}
	return b, nil
}

// hostCounts are the host-wide event counters.
type hostCounts struct{ ctxt, pgfault uint64 }

func readHostCounts() (hostCounts, error) {
	var h hostCounts
	field := func(path, key string) (uint64, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return 0, err
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, key+" "); ok {
				return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			}
		}
		return 0, fmt.Errorf("%s has no %s", path, key)
	}
	var err1, err2 error
	h.ctxt, err1 = field("/proc/stat", "ctxt")
	h.pgfault, err2 = field("/proc/vmstat", "pgfault")
	return h, errors.Join(err1, err2)
}

// measurement is one window of one load in one configuration.
type measurement struct {
	cfg  *config
	load *load
	rep  int
	err  error

	wall   time.Duration
	events uint64  // the host's events of the load's kind
	work   float64 // the load's own count (CPU seconds for cpuShare)
	procs  int     // the load's processes
	other  time.Duration

	// cgscope only.
	bpf        bpfUse
	agentCPU   time.Duration // user+sys from /proc/PID/stat
	rss        int64
	metricsBPF time.Duration // cgscope's own /metrics, from scrape to scrape
	metricsOn  time.Duration
	offCPU     bool // an off-CPU program was among its programs
}

func (m *measurement) ok() bool { return m.err == nil && m.wall > 0 }

func (m *measurement) bpfPct() float64   { return 100 * m.bpf.total.Seconds() / m.wall.Seconds() }
func (m *measurement) agentPct() float64 { return 100 * m.agentCPU.Seconds() / m.wall.Seconds() }
func (m *measurement) otherPct() float64 { return 100 * m.other.Seconds() / m.wall.Seconds() }
func (m *measurement) rate() float64     { return float64(m.events) / m.wall.Seconds() }

// workRate is the load's throughput: its count per second, or the share
// of its CPUs it got.
func (m *measurement) workRate() float64 {
	if m.load.cpuShare {
		return m.work / m.wall.Seconds() / float64(max(m.procs, 1))
	}
	return m.work / m.wall.Seconds()
}

func (m *measurement) nsPerEvent() float64 {
	if m.events == 0 {
		return 0
	}
	return float64(m.bpf.total.Nanoseconds()) / float64(m.events)
}

// session is what happened to one cgscope run (one configuration, one
// repetition) outside the measurements.
type session struct {
	cfg      *config
	rep      int
	startErr error
	unclean  string // how it ended, when not on SIGTERM with status 0
}

func run(opt options) error {
	res := &result{opt: opt, started: time.Now().UTC(), loadBefore: benchutil.Loadavg(), cpus: runtime.NumCPU()}
	tmp, err := benchutil.Prepare("cgscope-sched-bench-")
	if err != nil {
		return err
	}
	// The kernel keeps bpf_stats while this descriptor is open: for the
	// whole run, the baseline included, and whatever cgscope's own
	// --profiling.bpf-stats does. The kernel closes it however we exit.
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return fmt.Errorf("turning on the kernel's BPF statistics: %w", err)
	}
	defer stats.Close()

	res.version = benchutil.Version(opt.Cgscope, opt.Repo)
	flags, err := readFlags(opt.Cgscope)
	if err != nil {
		return err
	}
	res.cfgs, res.warnings = makeConfigs(flags)
	for _, c := range res.cfgs {
		if c.unavailable != "" {
			loud("CONFIGURATION %q NOT RUN: %s", c.name, c.unavailable)
		}
	}
	for _, w := range res.warnings {
		logf("warning: %s", w)
	}

	logf("building the loads in %s", tmp)
	bins, err := build(opt, tmp)
	if err != nil {
		return err
	}
	var quiet bool
	res.busyBefore, quiet, err = benchutil.WaitQuiet(opt.quiet)
	res.quiet = err == nil && quiet
	logf("about %v of measuring: %d repetitions of %d configurations × %d loads, %v windows",
		res.estimate().Round(time.Second), opt.reps, len(res.runnable()), len(opt.loads), opt.window)

	for rep := 1; rep <= opt.reps; rep++ {
		for _, c := range res.runnable() {
			s, ms := runSession(opt, c, rep, tmp, bins)
			res.sessions = append(res.sessions, s)
			res.ms = append(res.ms, ms...)
		}
	}
	res.finished = time.Now().UTC()
	res.loadAfter = benchutil.Loadavg()

	if err := benchutil.WriteReport(opt.Out, sectionTitle, res.markdown()); err != nil {
		return err
	}
	if opt.Out != "" {
		logf("wrote the section %q of %s", sectionTitle, opt.Out)
	}
	fmt.Fprint(os.Stderr, res.summary())
	// A target not met is a result; a measurement that failed is an error.
	var errs []error
	for _, s := range res.sessions {
		if s.startErr != nil {
			errs = append(errs, fmt.Errorf("%s, repetition %d: %w", s.cfg.name, s.rep, s.startErr))
		}
	}
	for _, m := range res.ms {
		if m.err != nil {
			errs = append(errs, fmt.Errorf("%s, %s, repetition %d: %w", m.cfg.name, m.load.name, m.rep, m.err))
		}
	}
	return errors.Join(errs...)
}

// loud logs a line that must not be missed.
func loud(format string, args ...any) {
	bar := strings.Repeat("!", 72)
	logf("%s", bar)
	logf("!!! "+format, args...)
	logf("%s", bar)
}

// runSession starts cgscope in configuration c (nothing for the
// baseline), lets it settle, measures every load, and stops it.
func runSession(opt options, c *config, rep int, tmp string, bins binaries) (*session, []*measurement) {
	s := &session{cfg: c, rep: rep}
	logf("=== repetition %d/%d: %s", rep, opt.reps, c.name)
	var cg *benchutil.Child
	port := 0
	if c.cgscope {
		var err error
		if port, err = benchutil.FreePort(); err != nil {
			s.startErr = fmt.Errorf("no free port: %w", err)
			return s, nil
		}
		logPath := filepath.Join(tmp, fmt.Sprintf("cgscope-%s-%d.log", strings.ReplaceAll(c.name, " ", "-"), rep))
		if cg, err = benchutil.Start("cgscope", logPath, c.argv(opt.Cgscope, port)...); err != nil {
			s.startErr = err
			return s, nil
		}
		defer func() {
			if !cg.Stop(syscall.SIGTERM, 30*time.Second) {
				s.unclean = fmt.Sprintf("did not exit on SIGTERM within 30 s, or had already exited: %v: %s", cg.WaitErr, cg.LogTail(2))
			} else if cg.WaitErr != nil {
				s.unclean = fmt.Sprintf("exit on SIGTERM: %v: %s", cg.WaitErr, cg.LogTail(2))
			}
		}()
		if _, err := benchutil.WaitHealthy(cg, port, 30*time.Second); err != nil {
			s.startErr = err
			return s, nil
		}
		time.Sleep(opt.settle)
	}
	var ms []*measurement
	for _, name := range opt.loads {
		m := measure(opt, c, loadByName(name), rep, tmp, bins, cg, port)
		ms = append(ms, m)
		if m.err != nil {
			logf("%s, %s: %v", c.name, name, m.err)
			continue
		}
		work := fmt.Sprintf("%s %.0f/s", m.load.work, m.workRate())
		if m.load.cpuShare {
			work = fmt.Sprintf("%s %.1f%%", m.load.work, 100*m.workRate())
		}
		line := fmt.Sprintf("%s, %s: %.0f %s/s, %s", c.name, name, m.rate(), m.load.events, work)
		if cg != nil {
			line += fmt.Sprintf("; cgscope BPF %.3f%% of a core (%.0f ns per event), agent %.3f%%, RSS %.1f MiB; off-CPU program: %v",
				m.bpfPct(), m.nsPerEvent(), m.agentPct(), mib(m.rss), m.offCPU)
		}
		logf("%s", line)
	}
	return s, ms
}

// runningLoad is a load's processes and its counters.
type runningLoad struct {
	procs    []*benchutil.Child
	counters []uint64 // mapped from the counter file
	unmap    func()
}

func startLoad(l *load, opt options, tmp string, bins binaries, secs int) (*runningLoad, error) {
	r := &runningLoad{unmap: func() {}}
	path := filepath.Join(tmp, "counters-"+l.name)
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	const slots = 64 // as testdata/loads.c
	err = f.Truncate(slots * 8)
	var b []byte
	if err == nil {
		b, err = unix.Mmap(int(f.Fd()), 0, slots*8, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	}
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("counter file: %w", err)
	}
	r.counters = unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), slots)
	r.unmap = func() { unix.Munmap(b) }
	n := 1
	if l.perCPU {
		n = runtime.NumCPU()
	}
	for i := 0; i < n; i++ {
		c, err := benchutil.Start(fmt.Sprintf("%s-%d", l.name, i), filepath.Join(tmp, fmt.Sprintf("%s-%d.log", l.name, i)),
			l.argv(bins, path, i, secs, opt)...)
		if err != nil {
			r.stop()
			return nil, err
		}
		r.procs = append(r.procs, c)
	}
	return r, nil
}

func (r *runningLoad) stop() {
	for _, c := range r.procs {
		c.Stop(syscall.SIGKILL, 5*time.Second)
	}
	r.unmap()
}

// alive returns an error when one of the load's processes has exited.
func (r *runningLoad) alive() error {
	for _, c := range r.procs {
		if c.Exited() {
			return fmt.Errorf("load process %s exited early: %v: %s", c.Name, c.WaitErr, c.LogTail(3))
		}
	}
	return nil
}

// count is the load's own count so far: the sum of its counters, or of
// its processes' CPU time in seconds.
func (r *runningLoad) count(l *load) (float64, error) {
	var sum float64
	if l.cpuShare {
		for _, c := range r.procs {
			d, err := benchutil.ThreadsCPU(c.PID())
			if err != nil {
				return 0, err
			}
			sum += d.Seconds()
		}
		return sum, nil
	}
	for i := range r.counters {
		sum += float64(atomic.LoadUint64(&r.counters[i]))
	}
	return sum, nil
}

// measure runs load l for its warm-up and one window, with cgscope (when
// cg is not nil) already running, and reads everything at the window's
// ends.
func measure(opt options, c *config, l *load, rep int, tmp string, bins binaries, cg *benchutil.Child, port int) *measurement {
	m := &measurement{cfg: c, load: l, rep: rep}
	secs := int((opt.warmup + opt.window + time.Minute).Seconds())
	r, err := startLoad(l, opt, tmp, bins, secs)
	if err != nil {
		m.err = err
		return m
	}
	defer r.stop()
	m.procs = len(r.procs)
	time.Sleep(opt.warmup)
	if m.err = r.alive(); m.err != nil {
		return m
	}
	// A scrape before the window, for the comparison with cgscope's own
	// figures; the one at its end is inside it, as a Prometheus scraping
	// every 15 s would be.
	var m0 benchutil.Metrics
	if cg != nil {
		if m0, err = benchutil.Scrape(port); err != nil {
			m.err = fmt.Errorf("scrape before the window: %w", err)
			return m
		}
	}

	// The window's start.
	var tr *tracker
	var cpu0 time.Duration
	host0 := hostProgs()
	h0, err := readHostCounts()
	if err != nil {
		m.err = err
		return m
	}
	w0, err := r.count(l)
	if err != nil {
		m.err = err
		return m
	}
	if cg != nil {
		if cpu0, err = benchutil.StatCPU(cg.PID()); err == nil {
			tr, err = startTracking(cg.PID(), opt.poll)
		}
		if err != nil {
			m.err = fmt.Errorf("cgscope at the window's start: %w", err)
			return m
		}
	}
	t0 := time.Now()

	time.Sleep(opt.window)
	var m1 benchutil.Metrics
	var scrapeErr error
	if cg != nil {
		m1, scrapeErr = benchutil.Scrape(port)
	}

	// The window's end.
	h1, err := readHostCounts()
	if err != nil {
		m.err = err
		return m
	}
	w1, err := r.count(l)
	m.wall = time.Since(t0)
	if err != nil {
		m.err = err
		return m
	}
	if cg != nil {
		var cpu1 time.Duration
		if cpu1, err = benchutil.StatCPU(cg.PID()); err == nil {
			m.agentCPU = max(cpu1-cpu0, 0)
			m.rss, err = benchutil.StatusBytes(cg.PID(), "VmRSS")
		}
		use, terr := tr.finish()
		m.bpf = use
		if err = errors.Join(err, terr); err != nil {
			if cg.Exited() {
				err = fmt.Errorf("cgscope exited: %v: %s", cg.WaitErr, cg.LogTail(3))
			}
			m.err = fmt.Errorf("cgscope at the window's end: %w", err)
			return m
		}
		for name := range use.byName {
			if strings.HasPrefix(name, offCPUPrefix) {
				m.offCPU = true
			}
		}
		if scrapeErr == nil {
			before := m0.ByLabel("cgscope_bpf_program_run_seconds_total", "program")
			for prog, v := range m1.ByLabel("cgscope_bpf_program_run_seconds_total", "program") {
				m.metricsBPF += time.Duration((v - before[prog]) * 1e9)
			}
			m.metricsOn = m1.At.Sub(m0.At)
		}
	}
	m.other = otherBPF(host0, hostProgs(), m.bpf.ids)
	if m.err = r.alive(); m.err != nil {
		return m
	}
	if scrapeErr != nil {
		m.err = fmt.Errorf("scrape at the window's end: %w", scrapeErr)
		return m
	}
	m.events = l.eventCounter(h1) - l.eventCounter(h0)
	m.work = w1 - w0
	return m
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
