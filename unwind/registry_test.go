package unwind

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// The registry's bookkeeping, with a sink that records what the kernel
// would hold and a source of real objects (compiled C binaries).

type fakeSink struct {
	mu     sync.Mutex
	tables map[uint32]int // id -> rows
	procs  map[uint32][]Range
	loads  int
	refuse bool
	wants  map[uint64]bool // range starts whose code the walker meets
}

func newFakeSink() *fakeSink {
	return &fakeSink{tables: map[uint32]int{}, procs: map[uint32][]Range{}}
}

func (s *fakeSink) LoadTable(id uint32, t *Table) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refuse {
		return errors.New("refused")
	}
	if _, ok := s.tables[id]; ok {
		return fmt.Errorf("table %d loaded twice", id)
	}
	s.tables[id] = len(t.Rows)
	s.loads++
	return nil
}

func (s *fakeSink) UnloadTable(id uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tables, id)
	return nil
}

func (s *fakeSink) LoadProcess(pid uint32, image uint64, r []Range) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.procs[pid] = r
	s.loads++
	return nil
}

func (s *fakeSink) UnloadProcess(pid uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.procs, pid)
	return nil
}

// WantedTable plays the walker: it asks for the first range of pid
// loaded as TableOnDemand that wants holds.
func (s *fakeSink) WantedTable(pid uint32) (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.procs[pid] {
		if r.Table == TableOnDemand && s.wants[r.Start] {
			return r.Start, true
		}
	}
	return 0, false
}

// fakeSource maps pids to mappings of objects named by file path.
type fakeSource struct {
	mu        sync.Mutex
	maps      map[uint32][]Mapping
	reads     map[any]int
	refreshes int
}

func (s *fakeSource) Mappings(pid uint32) ([]Mapping, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.maps[pid]
	if !ok {
		return nil, errors.New("no such process")
	}
	return m, nil
}

func (s *fakeSource) Refresh(uint32) error {
	s.mu.Lock()
	s.refreshes++
	s.mu.Unlock()
	return nil
}

func (s *fakeSource) ReadObject(_ uint32, obj any, read func(io.ReaderAt) error) error {
	s.mu.Lock()
	s.reads[obj]++
	s.mu.Unlock()
	if b, ok := obj.([]byte); ok {
		return read(bytes.NewReader(b))
	}
	f, err := os.Open(obj.(string))
	if err != nil {
		return err
	}
	defer f.Close()
	return read(f)
}

// buildChain compiles testdata/chain.c with a variant constant (a different
// object each).
func buildChain(t *testing.T, variant int) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), fmt.Sprintf("chain%d", variant))
	out, err := exec.Command("gcc", "-O2", "-fomit-frame-pointer", fmt.Sprintf("-DVARIANT=%d", variant), "-o", bin, "testdata/chain.c").CombinedOutput()
	if err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	return bin
}

// textMapping maps the executable segment of an object as the kernel does.
func textMapping(t *testing.T, path string, start uint64) Mapping {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tab, err := Compile(f)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range tab.Segments {
		if s.Exec {
			off := s.Off &^ 0xfff
			return Mapping{Start: start, Limit: start + (s.Off-off+s.Filesz+0xfff)&^0xfff, Offset: off, Object: path}
		}
	}
	t.Fatalf("%s: no segment holds its code", path)
	return Mapping{}
}

// settle runs the worker until the queue is empty.
func settle(r *Registry) {
	for len(r.queue) > 0 {
		r.handle(<-r.queue)
	}
	r.handleOverflow()
}

// libc is the host's C library, an object every test process maps.
const libc = "/lib/x86_64-linux-gnu/libc.so.6"

// chainProcesses is a source of processes first..last-1, each mapping bin
// and libc at addresses of its own.
func chainProcesses(t *testing.T, bin string, first, last uint32) *fakeSource {
	src := &fakeSource{maps: map[uint32][]Mapping{}, reads: map[any]int{}}
	for pid := first; pid < last; pid++ {
		src.maps[pid] = []Mapping{
			textMapping(t, bin, 0x555500000000+uint64(pid)<<20),
			textMapping(t, libc, 0x7f0000000000+uint64(pid)<<24),
		}
	}
	return src
}

func TestRegistrySharesTablesAndReleasesThem(t *testing.T) {
	bin := buildChain(t, 1)
	src := chainProcesses(t, bin, 100, 103)
	for pid := range src.maps {
		src.maps[pid] = append(src.maps[pid], Mapping{Start: 0x7e0000000000, Limit: 0x7e0000100000}) // anonymous: a JIT's
	}
	sink := newFakeSink()
	r := NewRegistry(sink, src, Config{MaxBytes: 64 << 20, Linger: time.Minute})
	for pid := uint32(100); pid < 103; pid++ {
		r.ProcessStarted(pid, 1)
	}
	settle(r)

	if src.reads[libc] != 1 || src.reads[bin] != 1 {
		t.Errorf("objects read %d and %d times for three processes, want once each", src.reads[libc], src.reads[bin])
	}
	if len(sink.tables) != 2 || len(sink.procs) != 3 {
		t.Fatalf("sink holds %d tables and %d processes, want 2 and 3", len(sink.tables), len(sink.procs))
	}
	for pid, ranges := range sink.procs {
		// Sorted by address: the binary (0x5555...), the JIT (0x7e...), libc (0x7f...).
		if len(ranges) != 3 || ranges[0].Table == 0 || ranges[1].Table != 0 || ranges[2].Table == 0 {
			t.Errorf("pid %d ranges %+v: want the binary and libc with tables, the JIT range without", pid, ranges)
		}
		want := textMapping(t, bin, 0x555500000000+uint64(pid)<<20)
		f, _ := os.Open(bin)
		tab, _ := Compile(f)
		f.Close()
		if got := ranges[0].Bias + tab.Base; got < want.Start || got >= want.Limit {
			t.Errorf("pid %d: the binary's first code address lands at %#x, outside its mapping %#x-%#x", pid, got, want.Start, want.Limit)
		}
	}
	if st := r.Stats(); st.Compiled != 2 || st.Tables != 2 || st.Processes != 3 || st.TableBytes == 0 {
		t.Errorf("stats %+v", st)
	}

	// All gone: the tables stay for the linger, then go.
	for pid := uint32(100); pid < 103; pid++ {
		r.ProcessGone(pid, 1)
	}
	settle(r)
	if len(sink.procs) != 0 || len(sink.tables) != 2 {
		t.Fatalf("after the exits: %d processes, %d tables; want 0 and 2 (lingering)", len(sink.procs), len(sink.tables))
	}
	r.sweep(time.Now().Add(30 * time.Second))
	if len(sink.tables) != 2 {
		t.Fatalf("tables unloaded before the linger ended")
	}
	r.sweep(time.Now().Add(2 * time.Minute))
	if len(sink.tables) != 0 || len(r.objects) != 0 {
		t.Fatalf("after the linger: %d tables loaded, %d objects known; want none", len(sink.tables), len(r.objects))
	}
	if st := r.Stats(); st.Evicted[EvictedUnused] != 2 || st.Tables != 0 || st.TableBytes != 0 {
		t.Errorf("stats after the linger: %+v", st)
	}
}

// Beyond MaxBytes, tables no process maps go first, then the least recently
// used; a process whose table went is walked by frame pointers.
func TestRegistryEvictsColdTablesFirst(t *testing.T) {
	bins := []string{buildChain(t, 1), buildChain(t, 2), buildChain(t, 3)}
	src := &fakeSource{maps: map[uint32][]Mapping{}, reads: map[any]int{}}
	for i, b := range bins {
		src.maps[uint32(i+1)] = []Mapping{textMapping(t, b, 0x555500000000)}
	}
	sink := newFakeSink()
	one := func(*Table) int { return 100 }
	r := NewRegistry(sink, src, Config{MaxBytes: 250, KernelBytes: one, Linger: time.Minute})
	r.ProcessStarted(1, 1)
	r.ProcessStarted(2, 1)
	r.ProcessGone(1, 1) // bins[0] is now unused
	settle(r)
	r.ProcessStarted(3, 1) // room for it: bins[0]'s table goes, not bins[1]'s
	settle(r)
	if len(sink.tables) != 2 || r.objects[bins[0]].id != 0 || r.objects[bins[1]].id == 0 || r.objects[bins[2]].id == 0 {
		t.Fatalf("after eviction: tables %v; want bins[1] and bins[2] loaded", sink.tables)
	}
	if st := r.Stats(); st.Evicted[EvictedSpace] != 1 {
		t.Errorf("evictions for space: %d, want 1", st.Evicted[EvictedSpace])
	}
	// bins[0] was unused when it made room: run again, it comes straight
	// back (into the room of bins[1], unused now too), not after the Linger.
	src.maps[4] = src.maps[1]
	r.ProcessGone(2, 1)
	r.ProcessStarted(4, 1)
	settle(r)
	if r.objects[bins[0]].id == 0 || r.objects[bins[1]].id != 0 || len(sink.tables) != 2 {
		t.Fatalf("bins[0] run again after its eviction as unused: tables %v, bins[0] id %d; want it loaded at once",
			sink.tables, r.objects[bins[0]].id)
	}
	delete(src.maps, 4)
	// A table larger than the whole budget is never loaded.
	clear(src.reads)
	big := NewRegistry(newFakeSink(), src, Config{MaxBytes: 50, KernelBytes: one, Linger: time.Minute})
	big.ProcessStarted(1, 1)
	big.ProcessStarted(2, 1)
	src.maps[4] = src.maps[1]
	big.ProcessStarted(4, 1)
	settle(big)
	if len(big.sink.(*fakeSink).tables) != 0 || len(big.sink.(*fakeSink).procs) != 0 {
		t.Errorf("a table over the budget was loaded")
	}
	// Not compiled again for the next process: it would not fit either.
	if src.reads[bins[0]] != 1 || big.Stats().Unloadable != 2 {
		t.Errorf("an object too large to load was read %d times (want once), %d times unloadable (want 2: bins[0] and bins[1])",
			src.reads[bins[0]], big.Stats().Unloadable)
	}
}

// A table one process needs does not push out a table more processes walk
// through: a compiler's large library must not cost every process its libc.
func TestRegistryKeepsSharedTables(t *testing.T) {
	bins := []string{buildChain(t, 1), buildChain(t, 2), buildChain(t, 3)}
	src := &fakeSource{maps: map[uint32][]Mapping{}, reads: map[any]int{}}
	src.maps[1] = []Mapping{textMapping(t, bins[0], 0x555500000000)}
	src.maps[2] = src.maps[1] // bins[0]: two processes
	src.maps[3] = []Mapping{textMapping(t, bins[1], 0x555500000000)}
	src.maps[4] = []Mapping{textMapping(t, bins[2], 0x555500000000)}
	src.maps[5] = src.maps[4]
	src.maps[6] = src.maps[4]
	sink := newFakeSink()
	one := func(*Table) int { return 100 }
	r := NewRegistry(sink, src, Config{MaxBytes: 250, KernelBytes: one, Linger: time.Minute})
	for pid := uint32(1); pid <= 4; pid++ {
		r.ProcessStarted(pid, 1)
	}
	settle(r)
	if r.objects[bins[0]].id == 0 || r.objects[bins[1]].id == 0 || r.objects[bins[2]].id != 0 {
		t.Fatalf("tables %v: want bins[0] (two processes) and bins[1] (one) kept, bins[2] (one, no room) without", sink.tables)
	}
	if st := r.Stats(); st.Evicted[EvictedSpace] != 0 || st.Unloadable != 1 {
		t.Errorf("evictions for space %d (want 0), unloadable %d (want 1)", st.Evicted[EvictedSpace], st.Unloadable)
	}
	// Once more processes map bins[2] than bins[1], it takes bins[1]'s room
	// (its retry time passed).
	r.objects[bins[2]].retryAt = time.Time{}
	r.ProcessStarted(5, 1)
	r.ProcessStarted(6, 1)
	settle(r)
	if r.objects[bins[0]].id == 0 || r.objects[bins[1]].id != 0 || r.objects[bins[2]].id == 0 {
		t.Fatalf("tables %v: want bins[0] and bins[2] loaded, bins[1] evicted", sink.tables)
	}
	if st := r.Stats(); st.Evicted[EvictedSpace] != 1 {
		t.Errorf("evictions for space %d, want 1 (bins[1])", st.Evicted[EvictedSpace])
	}
}

// An object without call-frame information, or with malformed information,
// is read once, and its process is walked by frame pointers.
func TestRegistryRemembersObjectsWithoutTables(t *testing.T) {
	src := &fakeSource{maps: map[uint32][]Mapping{}, reads: map[any]int{}}
	const missing, malformed = "/nonexistent/object", "malformed"
	src.maps[1] = []Mapping{{Start: 0x1000, Limit: 0x2000, Object: missing}}
	src.maps[2] = src.maps[1]
	sink := newFakeSink()
	r := NewRegistry(sink, src, Config{MaxBytes: 1 << 20, Linger: time.Minute})
	r.ProcessStarted(1, 1)
	r.ProcessStarted(2, 1)
	settle(r)
	// Unreadable now (the process may be gone): tried again for the next.
	if src.reads[missing] != 2 || len(sink.procs) != 0 {
		t.Errorf("unreadable object read %d times, %d processes loaded; want 2 and 0", src.reads[missing], len(sink.procs))
	}

	src.maps[4] = []Mapping{{Start: 0x1000, Limit: 0x2000, Object: malformed}}
	src.maps[5] = src.maps[4]
	r.src = malformedSource{src}
	r.ProcessStarted(4, 1)
	r.ProcessStarted(5, 1)
	settle(r)
	if src.reads[malformed] != 1 {
		t.Errorf("malformed object read %d times, want once", src.reads[malformed])
	}
	if st := r.Stats(); st.CompileFailed != 1 || len(sink.tables) != 0 || len(sink.procs) != 0 {
		t.Errorf("stats %+v, tables %v, processes %v", st, sink.tables, sink.procs)
	}
}

// malformedSource serves garbage for every object.
type malformedSource struct{ *fakeSource }

func (s malformedSource) ReadObject(pid uint32, obj any, read func(io.ReaderAt) error) error {
	s.mu.Lock()
	s.reads[obj]++
	s.mu.Unlock()
	return read(bytes.NewReader([]byte("\x7fELF garbage that is not an object")))
}

// A request to read a process's mappings again is served at once the first
// time, then at most once per refreshInterval; when it finds nothing new,
// the ranges are not loaded again (the walker's request stays answered)
// until the process is re-armed a Linger later.
func TestRegistryRefresh(t *testing.T) {
	bin := buildChain(t, 1)
	src := &fakeSource{maps: map[uint32][]Mapping{7: {textMapping(t, bin, 0x555500000000)}}, reads: map[any]int{}}
	sink := newFakeSink()
	r := NewRegistry(sink, src, Config{MaxBytes: 1 << 20, Linger: time.Minute})
	r.ProcessStarted(7, 1)
	settle(r)
	loads := sink.loads
	for range 5 {
		r.ProcessMappingsChanged(7, 1)
	}
	settle(r)
	if src.refreshes != 1 || !r.pending[7] {
		t.Fatalf("%d refreshes, pending %v: want one at once and one pending", src.refreshes, r.pending[7])
	}
	if sink.loads != loads || r.procs[7].rearmAt.IsZero() {
		t.Errorf("an unchanged refresh loaded the ranges again (%d loads, %d before)", sink.loads, loads)
	}
	// A library mapped since: the next refresh loads it.
	lib := buildChain(t, 2)
	src.maps[7] = append(src.maps[7], textMapping(t, lib, 0x7f0000000000))
	r.refreshPending(time.Now().Add(2 * refreshInterval))
	if src.refreshes != 2 || r.pending[7] || len(sink.procs[7]) != 2 {
		t.Errorf("%d refreshes, ranges %+v: want the new library's range", src.refreshes, sink.procs[7])
	}
	// Another image's request, and a gone process's, do nothing.
	r.ProcessMappingsChanged(7, 2)
	r.ProcessGone(7, 1)
	r.ProcessMappingsChanged(7, 1)
	settle(r)
	if src.refreshes != 2 || len(sink.procs) != 0 {
		t.Errorf("a stale request was served: %d refreshes, %d processes", src.refreshes, len(sink.procs))
	}
}

// A gone notice for an earlier image of the pid leaves the current one.
func TestRegistryImages(t *testing.T) {
	bin := buildChain(t, 1)
	src := &fakeSource{maps: map[uint32][]Mapping{7: {textMapping(t, bin, 0x555500000000)}}, reads: map[any]int{}}
	sink := newFakeSink()
	r := NewRegistry(sink, src, Config{MaxBytes: 1 << 20, Linger: time.Minute})
	r.ProcessStarted(7, 1)
	r.ProcessStarted(7, 2) // exec'd: the gone notice of image 1 comes late
	r.ProcessGone(7, 1)
	settle(r)
	if p := r.procs[7]; p == nil || p.image != 2 || len(sink.procs[7]) != 1 {
		t.Fatalf("after a late gone notice of the old image: %+v, sink %v", p, sink.procs)
	}
	if r.objects[bin].refs != 1 {
		t.Errorf("the binary is referenced %d times, want once", r.objects[bin].refs)
	}
}

// Gone notices are never lost to a full queue; start notices are, counted.
func TestRegistryQueue(t *testing.T) {
	bin := buildChain(t, 1)
	src := &fakeSource{maps: map[uint32][]Mapping{}, reads: map[any]int{}}
	for pid := uint32(1); pid <= 5; pid++ {
		src.maps[pid] = []Mapping{textMapping(t, bin, 0x555500000000)}
	}
	sink := newFakeSink()
	r := NewRegistry(sink, src, Config{MaxBytes: 1 << 20, QueueSize: 2, Linger: time.Minute})
	r.ProcessStarted(1, 1)
	r.ProcessStarted(2, 1)
	for pid := uint32(3); pid <= 5; pid++ {
		r.ProcessStarted(pid, 1) // dropped: the queue holds 2
	}
	if st := r.Stats(); st.QueueDropped != 3 {
		t.Errorf("dropped %d start notices, want 3", st.QueueDropped)
	}
	settle(r)
	r.ProcessGone(1, 1)
	r.ProcessGone(2, 1)
	r.ProcessGone(1, 1) // the queue is full: kept aside
	r.ProcessGone(2, 1)
	settle(r)
	if len(r.procs) != 0 || r.objects[bin].refs != 0 {
		t.Errorf("after the exits: %d processes, %d references", len(r.procs), r.objects[bin].refs)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

// A process that exited without a notice is released by the sweep.
func TestRegistrySweepsDeadProcesses(t *testing.T) {
	bin := buildChain(t, 1)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	pid := uint32(dead.Process.Pid)
	src := &fakeSource{maps: map[uint32][]Mapping{pid: {textMapping(t, bin, 0x555500000000)}}, reads: map[any]int{}}
	sink := newFakeSink()
	r := NewRegistry(sink, src, Config{MaxBytes: 1 << 20, Linger: time.Minute})
	r.ProcessStarted(pid, 1)
	settle(r)
	r.sweep(time.Now())
	if len(r.procs) != 0 || len(sink.procs) != 0 {
		t.Errorf("a dead process was kept: %d, sink %d", len(r.procs), len(sink.procs))
	}
}

// Ranges: adjacent ones without a table are merged; beyond MaxRanges,
// those without tables go first, then those of objects fewer processes map.
func TestRegistryRanges(t *testing.T) {
	objs := []*object{{key: "a", id: 1, refs: 3}, {key: "b", id: 2, refs: 1}}
	for _, o := range objs {
		o.table = &Table{Segments: []Segment{{Off: 0, Vaddr: 0, Filesz: 1 << 20, Exec: true}}}
	}
	r := NewRegistry(newFakeSink(), &fakeSource{}, Config{MaxBytes: 1, MaxRanges: 3})
	maps := []Mapping{
		{Start: 0x1000, Limit: 0x2000},
		{Start: 0x2000, Limit: 0x3000}, // merged with the one before
		{Start: 0x10000, Limit: 0x11000, Object: "b"},
		{Start: 0x20000, Limit: 0x21000},
		{Start: 0x30000, Limit: 0x31000, Object: "a"},
	}
	ranges, dropped := r.rangesOf(maps, objs)
	want := []Range{{Start: 0x1000, Len: 0x2000}, {Start: 0x10000, Len: 0x1000, Bias: 0x10000, Table: 2}, {Start: 0x30000, Len: 0x1000, Bias: 0x30000, Table: 1}}
	if !slices.Equal(ranges, want) || dropped != 1 {
		t.Errorf("ranges %+v dropped %d, want %+v and 1", ranges, dropped, want)
	}
	r.cfg.MaxRanges = 1
	if ranges, _ := r.rangesOf(maps, objs); len(ranges) != 1 || ranges[0].Table != 1 {
		t.Errorf("with room for one range: %+v, want the object more processes map", ranges)
	}
	if ranges, _ := r.rangesOf(maps[:2], objs); ranges != nil {
		t.Errorf("no object with a table: %+v, want none (frame pointers)", ranges)
	}
}

// LLD packs the end of the read-only segment and the start of the code in
// one file page; the bias must come from the executable segment.
func TestBiasPackedSegments(t *testing.T) {
	tab := &Table{Segments: []Segment{
		{Off: 0, Vaddr: 0, Filesz: 0x14b2f4},
		{Off: 0x14b300, Vaddr: 0x14c300, Filesz: 0x39d140, Exec: true},
	}}
	// The kernel maps the code from file offset 0x14b000 at base+0x14c000.
	const base = 0x7f0000000000
	bias, ok := tab.Bias(base+0x14c000, base+0x14c000+0x39e000, 0x14b000)
	if !ok || bias != base {
		t.Errorf("bias %#x, %v; want %#x", bias, ok, uint64(base))
	}
	if _, ok := tab.Bias(base, base+0x1000, 0); ok {
		t.Error("a mapping of the read-only segment alone got a bias")
	}
}

// Objects with call-frame information of Config.OnDemandBytes or more get a
// TableOnDemand range and no table until the walker asks for one; then it
// is compiled once and given to every process that maps it, while an
// object no walk met stays uncompiled.
func TestRegistryCompilesOnDemand(t *testing.T) {
	bin := buildChain(t, 1)
	src := chainProcesses(t, bin, 100, 102)
	sink := newFakeSink()
	sink.wants = map[uint64]bool{}
	// Every object is large enough to wait.
	r := NewRegistry(sink, src, Config{MaxBytes: 64 << 20, Linger: time.Minute, OnDemandBytes: 1})
	r.ProcessStarted(100, 1)
	r.ProcessStarted(101, 1)
	settle(r)
	if len(sink.tables) != 0 || len(sink.procs) != 2 {
		t.Fatalf("%d tables, %d processes: want no table, and ranges for both processes", len(sink.tables), len(sink.procs))
	}
	for pid, ranges := range sink.procs {
		if len(ranges) != 2 || ranges[0].Table != TableOnDemand || ranges[1].Table != TableOnDemand {
			t.Errorf("pid %d ranges %+v: want both on demand", pid, ranges)
		}
	}
	if st := r.Stats(); st.OnDemand != 2 || st.Compiled != 0 {
		t.Errorf("stats %+v: want two objects on demand, none compiled", st)
	}

	// A request the walker did not make (no range wanted) changes nothing
	// but the refresh it stands for.
	r.ProcessMappingsChanged(100, 1)
	settle(r)
	if len(sink.tables) != 0 || src.refreshes != 1 {
		t.Fatalf("a refresh compiled %d tables (%d refreshes)", len(sink.tables), src.refreshes)
	}

	// Process 100's walk meets the binary's code: its table is compiled,
	// and both processes get it; libc stays on demand.
	sink.wants[src.maps[100][0].Start] = true
	r.ProcessMappingsChanged(100, 1)
	settle(r)
	if src.reads[bin] != 2 || len(sink.tables) != 1 {
		t.Fatalf("binary read %d times (want 2: headers, then the compile), %d tables loaded (want 1)", src.reads[bin], len(sink.tables))
	}
	for pid, ranges := range sink.procs {
		if ranges[0].Table == 0 || ranges[0].Table == TableOnDemand || ranges[1].Table != TableOnDemand {
			t.Errorf("pid %d ranges %+v: want the binary's table, libc still on demand", pid, ranges)
		}
	}
	if st := r.Stats(); st.Wanted != 1 || st.Compiled != 1 || st.OnDemand != 1 {
		t.Errorf("stats %+v: want one table compiled on demand, one object waiting", st)
	}

	// Asked again for the same range (a stale request): nothing more.
	sink.procs[101][0].Table = TableOnDemand
	sink.wants[src.maps[101][0].Start] = true
	r.ProcessMappingsChanged(101, 1)
	settle(r)
	if src.reads[bin] != 2 || r.Stats().Wanted != 1 {
		t.Errorf("a stale request compiled again: %d reads, stats %+v", src.reads[bin], r.Stats())
	}

	// A new process gets the compiled table at once, and libc on demand.
	src.maps[102] = []Mapping{textMapping(t, bin, 0x555600000000), textMapping(t, libc, 0x7f1000000000)}
	r.ProcessStarted(102, 1)
	settle(r)
	if rg := sink.procs[102]; len(rg) != 2 || rg[0].Table == 0 || rg[0].Table == TableOnDemand || rg[1].Table != TableOnDemand {
		t.Errorf("new process ranges %+v: want the binary's table, libc on demand", rg)
	}
}
