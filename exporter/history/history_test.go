package history

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/cgscope/cgscope/exporter/pprof"
	"github.com/cgscope/cgscope/internal/pipeline"
	"github.com/cgscope/cgscope/internal/store"
)

func testWindows(n int, start time.Time) []*pipeline.Window {
	r := rand.New(rand.NewPCG(3, 4))
	progs := newBenchPrograms(r)
	zipf := rand.NewZipf(r, 1.3, 1, benchStacks-1)
	var ws []*pipeline.Window
	for i := range n {
		ws = append(ws, benchWindow(r, progs, zipf, start.Add(time.Duration(i)*benchInterval)))
	}
	return ws
}

func writeAll(t *testing.T, st store.Store, ws []*pipeline.Window) *History {
	t.Helper()
	h := New(Options{Store: st, QueueSize: 1})
	h.Start()
	for _, w := range ws {
		h.queue <- w
	}
	h.Stop()
	return h
}

// canon renders a profile as sorted "labels;frames value" lines, so two
// profiles with the same samples compare equal whatever their ids.
func canon(p *profile.Profile, withContainer bool) []string {
	m := map[string][2]int64{}
	for _, s := range p.Sample {
		k := fmt.Sprintf("%d/%d/%s/%s", s.NumLabel["pid"][0], s.NumLabel["tid"][0], s.Label["comm"][0], s.Label["cgroup"][0])
		if withContainer {
			k += fmt.Sprint(s.Label["container_id"], s.Label["pod_uid"], s.Label["namespace"], s.Label["pod"], s.Label["container"])
		}
		for _, l := range s.Location {
			k += fmt.Sprintf(";%x", l.Address)
			if l.Mapping != nil {
				k += "@" + l.Mapping.File + "#" + l.Mapping.BuildID
			}
			for _, ln := range l.Line {
				k += fmt.Sprintf(":%s:%s:%d", ln.Function.Name, ln.Function.Filename, ln.Line)
			}
		}
		v := m[k]
		v[0] += s.Value[0]
		v[1] += s.Value[1]
		m[k] = v
	}
	var out []string
	for k, v := range m {
		out = append(out, fmt.Sprintf("%s %d %d", k, v[0], v[1]))
	}
	sort.Strings(out)
	return out
}

func sameLines(t *testing.T, got, want []string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d distinct samples, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("sample %d:\n got %s\nwant %s", i, got[i], want[i])
		}
	}
}

// The stored windows sum back to exactly what pprof.Build makes of them,
// across generations (small segments force several dictionaries), for the
// memory and the disk store, with and without filters.
func TestHistoryRoundTrip(t *testing.T) {
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	ws := testWindows(30, start)
	disk, err := store.OpenDisk(store.DiskOptions{Dir: t.TempDir(), MaxBytes: 1 << 30, SegmentBytes: 64 << 10, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	for name, st := range map[string]store.Store{"memory": store.NewMemory(4 << 20), "disk": disk} {
		t.Run(name, func(t *testing.T) {
			h := writeAll(t, st, ws)
			gens := map[uint64]bool{}
			for _, m := range st.List(levelWindow, start, start.Add(time.Hour)) {
				gens[m.Gen()] = true
			}
			if len(gens) < 2 {
				t.Fatalf("want several generations, got %d (%+v)", len(gens), st.Stats())
			}
			if len(st.List(levelWindow, start, start.Add(time.Hour))) != len(ws) {
				t.Fatalf("windows were evicted; raise the limit (%d, %+v)", len(st.List(levelWindow, start, start.Add(time.Hour))), st.Stats())
			}
			q := Query{From: start.Add(25 * time.Second), To: start.Add(255 * time.Second)}
			got, err := h.Profile(context.Background(), q)
			if err != nil {
				t.Fatal(err)
			}
			want := pprof.Build(ws[2:26], pprof.Selector{})
			sameLines(t, canon(got, true), canon(want, true))
			if err := got.CheckValid(); err != nil {
				t.Fatal(err)
			}
			checkInlinedLines(t, got)

			// Kubernetes names are stored, so a filter on them selects
			// what the same filter selects live.
			byNS := q
			byNS.Workload = pprof.WorkloadSelector{Namespace: "team-1", Container: "app"}
			got, err = h.Profile(context.Background(), byNS)
			if err != nil {
				t.Fatal(err)
			}
			want = pprof.Build(ws[2:26], pprof.Selector{Workload: byNS.Workload})
			if len(want.Sample) == 0 || len(want.Sample) == len(ws[2].Samples) {
				t.Fatalf("the namespace filter selects %d samples: not a test", len(want.Sample))
			}
			sameLines(t, canon(got, true), canon(want, true))

			q.PID = ws[3].Samples[0].PID
			got, err = h.Profile(context.Background(), q)
			if err != nil {
				t.Fatal(err)
			}
			sameLines(t, canon(got, false), canon(pprof.Build(ws[2:26], pprof.Selector{PID: q.PID}), false))

			tg, err := h.Targets(context.Background(), q)
			if err != nil {
				t.Fatal(err)
			}
			var total int64
			for _, s := range got.Sample {
				total += s.Value[0]
			}
			if tg.TotalSamples != total || len(tg.Processes) != 1 || tg.Processes[0].PID != q.PID || tg.Processes[0].ContainerID == "" {
				t.Fatalf("targets %+v, want one process with %d samples", tg, total)
			}
		})
	}
}

// checkInlinedLines checks that the calls inlined at an address (every
// fifth function of the test programs has some) are lines of its location,
// innermost first, in the profile's functions, and that their mapping says
// so.
func checkInlinedLines(t *testing.T, p *profile.Profile) {
	t.Helper()
	inlined := 0
	for _, l := range p.Location {
		if len(l.Line) < 2 {
			continue
		}
		inlined++
		if inner := l.Line[0].Function.Name; !strings.Contains(inner, "/util.small") {
			t.Fatalf("location %#x: innermost line %q, want the inlined util.small call", l.Address, inner)
		}
		if outer := l.Line[len(l.Line)-1].Function.Name; !strings.Contains(outer, ".(*Handler).Method") {
			t.Fatalf("location %#x: last line %q, want the function the calls were inlined into", l.Address, outer)
		}
		if l.Mapping == nil || !l.Mapping.HasInlineFrames {
			t.Fatalf("location %#x has inlined lines but its mapping does not say so", l.Address)
		}
	}
	if inlined == 0 {
		t.Fatal("no location with inlined calls: the test programs have them")
	}
}

// Records of format 2 (before Kubernetes names were stored), written by the
// previous release into testdata, still answer queries: ids from the cgroup
// path, no names.
func TestHistoryReadsFormat2(t *testing.T) {
	dir := t.TempDir()
	src := "testdata/history-v2"
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	disk, err := store.OpenDisk(store.DiskOptions{Dir: dir, MaxBytes: 1 << 30, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	h := New(Options{Store: disk, QueueSize: 1})
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	got, err := h.Profile(context.Background(), Query{From: start, To: start.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	ws := testWindows(1, start) // what the golden file was written from, but for the inlined calls format 4 added
	for _, w := range ws {
		for i := range w.Samples {
			frames := slices.Clone(w.Samples[i].Frames)
			for j := range frames {
				frames[j].Inlined = nil
			}
			w.Samples[i].Frames = frames
		}
	}
	sameLines(t, canon(got, false), canon(pprof.Build(ws, pprof.Selector{}), false))
	if h.undecodable.Load() != 0 {
		t.Fatalf("%d windows undecodable", h.undecodable.Load())
	}
	for _, s := range got.Sample {
		if len(s.Label["container_id"]) != 1 || s.Label["namespace"] != nil {
			t.Fatalf("format 2 sample labels %v: want container_id from the path and no names", s.Label)
		}
	}
}

// A corrupt dictionary record makes the windows that use it undecodable:
// they are skipped and counted, the others still answer, nothing crashes.
func TestHistoryLostDictionary(t *testing.T) {
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	ws := testWindows(12, start)
	dir := t.TempDir()
	st, err := store.OpenDisk(store.DiskOptions{Dir: dir, MaxBytes: 1 << 30, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	writeAll(t, st, ws)
	dicts := st.List(levelDict, start, start.Add(time.Hour))
	if len(dicts) < 2 {
		t.Fatalf("want several dictionary records, got %d", len(dicts))
	}
	st.Close()
	// Flip a byte in the middle of the second dictionary record's data: it
	// fails its CRC and is skipped on open.
	segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.cgs"))
	b, _ := os.ReadFile(segs[0])
	off := indexOfRecord(t, b, 1)
	b[off+40] ^= 0xff
	os.WriteFile(segs[0], b, 0o600)

	st, err = store.OpenDisk(store.DiskOptions{Dir: dir, MaxBytes: 1 << 30, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	h := New(Options{Store: st})
	p, err := h.Profile(context.Background(), Query{From: start, To: start.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.CheckValid(); err != nil {
		t.Fatal(err)
	}
	if h.undecodable.Load() == 0 || len(p.Sample) == 0 {
		t.Fatalf("undecodable %d, samples %d: want some windows skipped, some kept", h.undecodable.Load(), len(p.Sample))
	}
	if st.Stats().CorruptRecords != 1 {
		t.Fatalf("stats %+v", st.Stats())
	}
	// The first window only uses the first dictionary record.
	first, err := h.Profile(context.Background(), Query{From: start, To: start.Add(benchInterval)})
	if err != nil {
		t.Fatal(err)
	}
	sameLines(t, canon(first, false), canon(pprof.Build(ws[:1], pprof.Selector{}), false))
}

// indexOfRecord returns the offset of the data of the i-th dictionary
// record in a segment: records alternate dictionary, window while every
// window adds something (true for the first few of the bench data).
func indexOfRecord(t *testing.T, b []byte, i int) int {
	t.Helper()
	const headerSize, magic = 32, 8
	off, dict := magic, 0
	for off+headerSize <= len(b) {
		size := int(b[off+24]) | int(b[off+25])<<8 | int(b[off+26])<<16 | int(b[off+27])<<24
		if b[off+4] == levelDict {
			if dict == i {
				return off + headerSize
			}
			dict++
		}
		off += headerSize + size
	}
	t.Fatal("no such record")
	return 0
}

// Inlined calls in a record that cannot hold them are malformed input: the
// frameInlined flag in a format 3 record fails the record, and a format 4
// stack that ends with an inlined call (it must precede the frame it was
// inlined into) is undefined, so windows using it are skipped and counted.
func TestHistoryRejectsMisplacedInlinedCalls(t *testing.T) {
	u := binary.AppendUvarint
	record := func(version, flags byte) []byte {
		b := u(u(nil, 1), 1) // strings from id 1: one
		b = append(u(b, 2), "fn"...)
		b = u(u(b, 0), 1)             // frames from id 0: one
		b = u(u(u(u(b, 1), 0), 0), 0) // function, file, mapping path, build id
		b = append(u(u(b, 7), 0x1000), flags)
		b = u(u(b, 0), 0) // no label sets
		b = u(u(b, 0), 1) // stacks from id 0: one, of frame 0
		b = u(u(b, 1), 0)
		return zstdEncoder.EncodeAll(b, []byte{version})
	}
	if err := newGenDict().add(record(3, frameInlined)); err == nil {
		t.Error("a format 3 record with an inlined frame was accepted")
	}
	d := newGenDict()
	if err := d.add(record(4, frameInlined)); err != nil {
		t.Fatal(err)
	}
	if d.stackDefined(0) {
		t.Error("a stack that ends with an inlined call is defined")
	}
	d = newGenDict()
	if err := d.add(record(4, 0)); err != nil || !d.stackDefined(0) {
		t.Errorf("the same record without the flag: %v, stack defined %v", err, d.stackDefined(0))
	}
}

// A window the encoder cannot write (its generation's dictionary has more
// ids than a reader accepts) is not stored and is counted.
func TestHistoryCountsEncodeErrors(t *testing.T) {
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	ws := testWindows(2, start)
	st := store.NewMemory(4 << 20)
	h := New(Options{Store: st})
	if err := h.storeWindow(ws[0]); err != nil {
		t.Fatal(err)
	}
	before := st.Stats().Appended
	h.enc.nStr = maxDictIDs + 1
	if err := h.storeWindow(ws[1]); err == nil {
		t.Fatal("a window past the dictionary's ids was stored")
	}
	if got := h.encErrs.Load(); got != 1 {
		t.Errorf("encode errors %d, want 1", got)
	}
	if got := st.Stats().Appended; got != before {
		t.Errorf("%d records written for a window that failed to encode", got-before)
	}
}
