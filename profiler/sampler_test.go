package profiler

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/cgscope/cgscope/internal/kerneltest"

	"github.com/cgscope/cgscope/internal/kerneltest/held"
)

// burn keeps one goroutine busy until stop is closed.
func burn(stop <-chan struct{}) {
	x := 0
	for {
		select {
		case <-stop:
			return
		default:
			for i := 0; i < 100000; i++ {
				x += i
			}
		}
	}
}

//go:noinline
func burnAtDepth(depth int, stop <-chan struct{}) {
	if depth > 0 {
		burnAtDepth(depth-1, stop)
		return
	}
	burn(stop)
}

// perfFDs counts this process's open perf event and BPF file descriptors.
func perfFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err == nil && (strings.Contains(target, "perf_event") || strings.Contains(target, "bpf")) {
			n++
		}
	}
	return n
}

func TestSamplerCloseLeaksNoDescriptors(t *testing.T) {
	kerneltest.RequireRoot(t)
	before := perfFDs(t)
	s, err := NewSampler(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if open := perfFDs(t); open < before+s.CPUs() {
		t.Fatalf("expected at least %d perf/bpf fds while running, have %d", before+s.CPUs(), open)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if after := perfFDs(t); after != before {
		t.Fatalf("perf/bpf fds: %d before, %d after Close", before, after)
	}
}

// Load attaches nothing: no CPU is sampled and no sample is taken until
// Attach.
func TestLoadThenAttach(t *testing.T) {
	kerneltest.RequireRoot(t)
	cfg := DefaultConfig()
	cfg.Frequency = 1000
	s, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	stop := make(chan struct{})
	defer close(stop)
	go burn(stop)
	time.Sleep(100 * time.Millisecond)
	if st, err := s.Stats(); err != nil || st.Samples != 0 || s.CPUs() != 0 {
		t.Fatalf("loaded only: %d samples on %d CPUs (%v), want none", st.Samples, s.CPUs(), err)
	}
	if err := s.Attach(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if st, err := s.Stats(); err != nil || st.Samples == 0 || s.CPUs() == 0 {
		t.Fatalf("attached: %d samples on %d CPUs (%v), want some", st.Samples, s.CPUs(), err)
	}
}

// Draining often while both CPUs are busy must neither lose nor double-count
// samples at the generation boundaries: once sampling stops and the rest is
// drained, the drained counts add up exactly to what the BPF program counted
// as taken since load.
func TestDrainLosesAndDuplicatesNothing(t *testing.T) {
	kerneltest.RequireRoot(t)
	cfg := DefaultConfig()
	cfg.Frequency = 1000
	s, err := NewSampler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	stop := make(chan struct{})
	for i := 0; i < runtime.NumCPU(); i++ {
		go burn(stop)
	}
	defer close(stop)

	var drained uint64
	drain := func() {
		b, err := s.Drain()
		if err != nil {
			t.Fatal(err)
		}
		for _, smp := range b.Samples {
			drained += smp.Count
		}
	}
	deadline := time.Now().Add(3 * time.Second)
	drains := 0
	for time.Now().Before(deadline) {
		drain()
		drains++
		time.Sleep(5 * time.Millisecond)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	drain()
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	lost := st.Dropped["counts_map_full"]
	t.Logf("%d drains: taken %d, drained %d, lost %d", drains+1, st.Samples, drained, lost)
	if st.Samples < 1000 {
		t.Fatalf("only %d samples taken in 3 s at 1000 Hz", st.Samples)
	}
	if drained+lost != st.Samples {
		t.Errorf("drained %d + lost %d != taken %d over %d drains", drained, lost, st.Samples, drains+1)
	}
}

// A process is announced on its first sample, once per image: again after
// an exec, but not when one of its threads exits; once it has exited the
// kernel side forgets it, so a reused pid is announced afresh.
func TestProcessImagesAnnounced(t *testing.T) {
	s, run := samplerAndBurnexec(t, "announce")
	h := &processLog{started: map[uint32]int{}, gone: map[uint32]int{}}
	go s.RunProcessEvents(h)
	pid := run()
	time.Sleep(200 * time.Millisecond) // the ring buffer reader catches up
	// An exit wakes nobody: the next drain reads it before the maps.
	if _, err := s.Drain(); err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	got, goneEvents := h.started[pid], h.gone[pid]
	h.mu.Unlock()
	if got != 2 {
		t.Errorf("pid %d announced %d times, want 2: on its first sample and again after its exec (a thread's exit must not count)", pid, got)
	}
	if goneEvents != 2 {
		t.Errorf("pid %d reported gone %d times, want 2: at its exec and at its exit", pid, goneEvents)
	}
	var one uint64
	if err := s.objs.KnownProcs.Lookup(pid, &one); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("pid %d still in known_procs after it exited (lookup: %v)", pid, err)
	}

	// An exited process a late sample put back (as a thread that outlives
	// its leader does) is swept out at the next drain; a live one stays.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	stale, live := uint32(gone.Process.Pid), uint32(os.Getpid())
	for _, p := range []uint32{stale, live} {
		if err := s.objs.KnownProcs.Put(p, uint64(1)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Drain(); err != nil {
		t.Fatal(err)
	}
	if err := s.objs.KnownProcs.Lookup(stale, &one); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("exited pid %d not swept out of known_procs by a drain (lookup: %v)", stale, err)
	}
	if err := s.objs.KnownProcs.Lookup(live, &one); err != nil {
		t.Errorf("live pid %d swept out of known_procs: %v", live, err)
	}
}

// samplerAndBurnexec starts the burnexec workload (an image that burns CPU,
// then execs one that does too) held, then a sampler at 499 Hz; run lets it
// go, waits for its end and returns its pid. The workload is started, and
// waits, before the sampler: the moments between the fork and the exec of
// its first image belong to this test process's image, and a sample there
// would announce a third one.
func samplerAndBurnexec(t *testing.T, name string) (s *Sampler, run func() uint32) {
	kerneltest.RequireRoot(t)
	cmd := kerneltest.NewCgroup(t, name).Command(t, nil, "burnexec", "300ms")
	cmd.Env = append(cmd.Env, "CGSCOPE_WORKLOAD_HOLD=1")
	w := held.Start(t, cmd)
	w.WaitFor(t, "ready")
	cfg := DefaultConfig()
	cfg.Frequency = 499
	s, err := NewSampler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, func() uint32 {
		w.Send(t, "go")
		if err := cmd.Wait(); err != nil {
			t.Fatalf("burnexec workload: %v", err)
		}
		return uint32(cmd.Process.Pid)
	}
}

// processLog records the process events a sampler reports.
type processLog struct {
	mu            sync.Mutex
	started, gone map[uint32]int
}

func (l *processLog) ProcessStarted(pid uint32, _ uint64) {
	l.mu.Lock()
	l.started[pid]++
	l.mu.Unlock()
}
func (l *processLog) ProcessForked(pid uint32, image uint64, _ uint32) { l.ProcessStarted(pid, image) }
func (l *processLog) ProcessGone(pid uint32, _ uint64)                 { l.mu.Lock(); l.gone[pid]++; l.mu.Unlock() }
func (l *processLog) ProcessMappingsChanged(uint32, uint64)            {}
func (l *processLog) ProcessVanished(uint32, uint64)                   {}

// An image whose exec or exit is in the ring when its notice is read is not
// announced: its mappings are another image's or none. The workload's two
// images both end before the ring is read.
func TestImagesGoneBeforeReadVanish(t *testing.T) {
	s, run := samplerAndBurnexec(t, "vanish")
	pid := run()
	h := &imageEvents{}
	if err := s.readProcessEvents(h); err != nil {
		t.Fatal(err)
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	vanished, gone := h.of(pid, "vanished"), h.of(pid, "gone")
	if len(vanished) != 2 || len(gone) != 2 {
		t.Errorf("pid %d: images vanished %v, gone %v; want both of its images in each", pid, vanished, gone)
	}
	// A thread sampled after the exit of its leader announces the process
	// again (the drain's sweep ends that image): such an image is started,
	// but none that ended in the batch.
	for _, img := range h.of(pid, "started") {
		if slices.Contains(gone, img) {
			t.Errorf("pid %d: image %d announced although its end was read with it", pid, img)
		}
	}
	if st.ImagesGoneUnread < 2 {
		t.Errorf("Stats.ImagesGoneUnread = %d, want at least the workload's 2", st.ImagesGoneUnread)
	}
}

// imageEvents records the images each process event names, in order.
type imageEvents struct{ events []imageEvent }

type imageEvent struct {
	kind  string
	pid   uint32
	image uint64
}

func (h *imageEvents) ProcessStarted(pid uint32, image uint64) {
	h.events = append(h.events, imageEvent{"started", pid, image})
}
func (h *imageEvents) ProcessForked(pid uint32, image uint64, _ uint32) { h.ProcessStarted(pid, image) }
func (h *imageEvents) ProcessGone(pid uint32, image uint64) {
	h.events = append(h.events, imageEvent{"gone", pid, image})
}
func (h *imageEvents) ProcessMappingsChanged(uint32, uint64) {}
func (h *imageEvents) ProcessVanished(pid uint32, image uint64) {
	h.events = append(h.events, imageEvent{"vanished", pid, image})
}

// of returns the images of pid's events of a kind.
func (h *imageEvents) of(pid uint32, kind string) []uint64 {
	var out []uint64
	for _, e := range h.events {
		if e.pid == pid && e.kind == kind {
			out = append(out, e.image)
		}
	}
	return out
}

// A full counts map is counted per reason, never dropped silently.
func TestFullMapIsCounted(t *testing.T) {
	kerneltest.RequireRoot(t)
	cfg := DefaultConfig()
	cfg.Frequency = 1000
	cfg.MaxSampleKeys = 64
	cfg.MaxStacks = 64
	s, err := NewSampler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	stop := make(chan struct{})
	for i := 0; i < 100; i++ { // many threads at many depths: many unique keys
		go func(depth int) {
			runtime.LockOSThread()
			burnAtDepth(depth, stop)
		}(i)
	}
	time.Sleep(2 * time.Second)
	close(stop)
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Drain()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("keys %d, stats %+v", len(b.Samples), st)
	if len(b.Samples) > 64 {
		t.Errorf("%d keys in a 64-entry map", len(b.Samples))
	}
	if st.Dropped["counts_map_full"] == 0 && st.Dropped["stacks_map_full"] == 0 {
		t.Errorf("tiny maps under load reported no drops: %+v", st)
	}
}

func TestConfigValidate(t *testing.T) {
	good := DefaultConfig()
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, mutate := range []func(*Config){
		func(c *Config) { c.Frequency = 0 },
		func(c *Config) { c.Frequency = 1001 },
		func(c *Config) { c.MaxSampleKeys = 1 },
		func(c *Config) { c.MaxStacks = 1 << 30 },
		func(c *Config) { c.MaxProcesses = 0 },
	} {
		c := good
		mutate(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("accepted %+v", c)
		}
	}
}

func TestParseCPUList(t *testing.T) {
	for in, want := range map[string]int{"0": 1, "0-1": 2, "0-3,5,7-8": 7} {
		got, err := parseCPUList(in)
		if err != nil || len(got) != want {
			t.Errorf("parseCPUList(%q) = %v, %v; want %d CPUs", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "3-1", "1-"} {
		if _, err := parseCPUList(bad); err == nil {
			t.Errorf("parseCPUList(%q) accepted", bad)
		}
	}
}
