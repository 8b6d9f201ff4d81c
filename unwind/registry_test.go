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

func (s *fakeSink) LoadProcess(pid uint32, r []Range) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.procs[pid] = r
	return nil
}

func (s *fakeSink) UnloadProcess(pid uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.procs, pid)
	return nil
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
		if tab.Base >= s.Vaddr && tab.Base < s.Vaddr+s.Filesz {
			off := s.Off &^ 0xfff
			return Mapping{Start: start, Limit: start + (s.Filesz+0xfff)&^0xfff, Offset: off, Object: path}
		}
	}
	t.Fatalf("%s: no segment holds its code", path)
	return Mapping{}
}

// settle runs the worker until the queue is empty.
func settle(r *Registry) {
	for len(r.queue) > 0 {
		n := <-r.queue
		switch n.kind {
		case noticeStarted:
			r.add(n.pid)
		case noticeGone:
			r.remove(n.pid)
		case noticeChanged:
			r.changed(n.pid, time.Now())
		}
	}
}

func TestRegistrySharesTablesAndReleasesThem(t *testing.T) {
	libc := "/lib/x86_64-linux-gnu/libc.so.6"
	bin := buildChain(t, 1)
	src := &fakeSource{maps: map[uint32][]Mapping{}, reads: map[any]int{}}
	for pid := uint32(100); pid < 103; pid++ {
		src.maps[pid] = []Mapping{
			textMapping(t, bin, 0x555500000000+uint64(pid)<<20),
			textMapping(t, libc, 0x7f0000000000+uint64(pid)<<24),
			{Start: 0x7e0000000000, Limit: 0x7e0000100000}, // anonymous: a JIT's
		}
	}
	sink := newFakeSink()
	r := NewRegistry(sink, src, Config{MaxBytes: 64 << 20, Linger: time.Minute})
	for pid := uint32(100); pid < 103; pid++ {
		r.ProcessStarted(pid)
	}
	settle(r)

	if src.reads[libc] != 1 || src.reads[bin] != 1 {
		t.Errorf("objects read %d and %d times for three processes, want once each", src.reads[libc], src.reads[bin])
	}
	if len(sink.tables) != 2 || len(sink.procs) != 3 {
		t.Fatalf("sink holds %d tables and %d processes, want 2 and 3", len(sink.tables), len(sink.procs))
	}
	for pid, ranges := range sink.procs {
		if len(ranges) != 3 || ranges[0].Table == 0 || ranges[1].Table == 0 || ranges[2].Table != 0 {
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
		r.ProcessGone(pid)
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
	r.ProcessStarted(1)
	r.ProcessStarted(2)
	r.ProcessGone(1) // bins[0] is now unused
	settle(r)
	r.ProcessStarted(3) // room for it: bins[0]'s table goes, not bins[1]'s
	settle(r)
	if len(sink.tables) != 2 || r.objects[bins[0]].id != 0 || r.objects[bins[1]].id == 0 || r.objects[bins[2]].id == 0 {
		t.Fatalf("after eviction: tables %v; want bins[1] and bins[2] loaded", sink.tables)
	}
	if st := r.Stats(); st.Evicted[EvictedSpace] != 1 {
		t.Errorf("evictions for space: %d, want 1", st.Evicted[EvictedSpace])
	}
	// A table larger than the whole budget is never loaded.
	big := NewRegistry(newFakeSink(), src, Config{MaxBytes: 50, KernelBytes: one})
	big.ProcessStarted(1)
	settle(big)
	if len(big.sink.(*fakeSink).tables) != 0 || len(big.sink.(*fakeSink).procs) != 0 {
		t.Errorf("a table over the budget was loaded")
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
	r.ProcessStarted(1)
	r.ProcessStarted(2)
	settle(r)
	// Unreadable now (the process may be gone): tried again for the next.
	if src.reads[missing] != 2 || len(sink.procs) != 0 {
		t.Errorf("unreadable object read %d times, %d processes loaded; want 2 and 0", src.reads[missing], len(sink.procs))
	}

	src.maps[4] = []Mapping{{Start: 0x1000, Limit: 0x2000, Object: malformed}}
	src.maps[5] = src.maps[4]
	r.src = malformedSource{src}
	r.ProcessStarted(4)
	r.ProcessStarted(5)
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
// time, then at most once per refreshInterval.
func TestRegistryRefreshIsRateLimited(t *testing.T) {
	bin := buildChain(t, 1)
	src := &fakeSource{maps: map[uint32][]Mapping{7: {textMapping(t, bin, 0x555500000000)}}, reads: map[any]int{}}
	sink := newFakeSink()
	r := NewRegistry(sink, src, Config{MaxBytes: 1 << 20, Linger: time.Minute})
	r.ProcessStarted(7)
	settle(r)
	for range 5 {
		r.ProcessMappingsChanged(7)
	}
	settle(r)
	if src.refreshes != 1 || !r.pending[7] {
		t.Fatalf("%d refreshes, pending %v: want one at once and one pending", src.refreshes, r.pending[7])
	}
	r.refreshPending(time.Now().Add(2 * refreshInterval))
	if src.refreshes != 2 || r.pending[7] {
		t.Errorf("%d refreshes after the interval, want 2", src.refreshes)
	}
	r.ProcessGone(7)
	r.ProcessMappingsChanged(7) // of a gone process: nothing
	settle(r)
	if src.refreshes != 2 || len(sink.procs) != 0 {
		t.Errorf("a gone process was refreshed or kept")
	}
}

// The worker stops with its context, and a full queue drops and counts.
func TestRegistryQueue(t *testing.T) {
	src := &fakeSource{maps: map[uint32][]Mapping{}, reads: map[any]int{}}
	r := NewRegistry(newFakeSink(), src, Config{MaxBytes: 1 << 20, QueueSize: 2})
	for pid := uint32(1); pid <= 5; pid++ {
		r.ProcessStarted(pid)
	}
	if st := r.Stats(); st.QueueDropped != 3 {
		t.Errorf("dropped %d notices, want 3", st.QueueDropped)
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
