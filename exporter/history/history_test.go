package history

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
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
	"github.com/cgscope/cgscope/internal/attribution"
	"github.com/cgscope/cgscope/internal/pipeline"
	"github.com/cgscope/cgscope/internal/store"
	"github.com/cgscope/cgscope/symbolizer"
)

func testWindows(n int, start time.Time) []*pipeline.Window {
	r := rand.New(rand.NewPCG(3, 4))
	progs := newBenchPrograms(r)
	zipf := rand.NewZipf(r, 1.3, 1, benchStacks-1)
	var ws []*pipeline.Window
	for i := range n {
		ws = append(ws, benchWindow(r, progs, zipf, start.Add(time.Duration(i)*benchInterval)))
	}
	addOffCPU(ws)
	return ws
}

var offCPUReasons = []string{"runnable", "sleeping", "io_wait", "uninterruptible", "other"}

// addOffCPU gives the windows off-CPU samples: a third of their threads
// also waited where they ran, each with one or two reasons (the same one
// twice at times, which the history must sum), counts and times of their
// own. It draws from its own source, so the CPU samples stay those the
// golden segments were written from.
func addOffCPU(ws []*pipeline.Window) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, w := range ws {
		for _, s := range w.Samples {
			if s.TID%3 != 0 {
				continue
			}
			for range 1 + r.IntN(2) {
				o := s
				o.Count = 1 + uint64(r.IntN(50))
				o.OffCPU = time.Duration(o.Count) * time.Duration(1+r.IntN(100_000)) * time.Microsecond
				o.Reason = offCPUReasons[r.IntN(len(offCPUReasons))]
				w.OffCPU = append(w.OffCPU, o)
			}
		}
	}
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
		k := fmt.Sprintf("%d/%d/%s/%s/%s", s.NumLabel["pid"][0], s.NumLabel["tid"][0], s.Label["comm"][0], s.Label["cgroup"][0], s.Label[pprof.ReasonLabel])
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
	withEncoderBytes(t, 4<<20)
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

			for _, sel := range []pprof.Selector{{Kind: pprof.OffCPU}, {Kind: pprof.OffCPU, PID: q.PID},
				{Kind: pprof.OffCPU, Workload: byNS.Workload}} {
				checkOffCPU(t, h, Query{From: q.From, To: q.To, Selector: sel}, ws[2:26])
			}
		})
	}
}

// checkOffCPU checks that the history answers q's off-CPU profile and
// targets exactly as pprof.Build makes them of the windows q covers.
func checkOffCPU(t *testing.T, h *History, q Query, covered []*pipeline.Window) {
	t.Helper()
	want := pprof.Build(covered, q.Selector)
	if len(want.Sample) == 0 {
		t.Fatalf("%+v selects no off-CPU sample: not a test", q.Selector)
	}
	got, err := h.Profile(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	if got.DefaultSampleType != "off_cpu" || got.Period != 0 {
		t.Errorf("off-CPU profile: default sample type %q, period %d", got.DefaultSampleType, got.Period)
	}
	sameLines(t, canon(got, true), canon(want, true))
	tg, err := h.Targets(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	var switches, nanos int64
	for _, s := range want.Sample {
		switches += s.Value[0]
		nanos += s.Value[1]
	}
	if tg.Type != "off_cpu" || tg.TotalSamples != switches || tg.TotalOffCPU != float64(nanos)/1e9 || tg.TotalCPU != 0 {
		t.Errorf("targets: type %q, %d switches, %v s off CPU, %v s CPU; want off_cpu, %d, %v s, 0",
			tg.Type, tg.TotalSamples, tg.TotalOffCPU, tg.TotalCPU, switches, float64(nanos)/1e9)
	}
	var share float64
	for _, c := range tg.Cgroups {
		share += c.Share
	}
	if math.Abs(share-1) > 1e-9 || tg.Cgroups[0].OffCPU == 0 || tg.Cgroups[0].CPU != 0 {
		t.Errorf("cgroups' shares add up to %v, first %+v: want shares of off-CPU time", share, tg.Cgroups[0])
	}
}

// Off-CPU windows are on disk: a store written, closed and opened again
// (a daemon restart) answers the same off-CPU profile and totals, and the
// same CPU profile, as the windows it was written from.
func TestHistoryOffCPUSurvivesReopen(t *testing.T) {
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	ws := testWindows(6, start)
	dir := t.TempDir()
	st := openDisk(t, dir)
	writeAll(t, st, ws)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st = openDisk(t, dir)
	if n := len(st.List(levelOffCPU, start, start.Add(time.Hour))); n != len(ws) {
		t.Fatalf("%d off-CPU records after reopening, want %d", n, len(ws))
	}
	h := New(Options{Store: st})
	all := Query{From: start, To: start.Add(time.Hour)}
	checkOffCPU(t, h, Query{From: all.From, To: all.To, Selector: pprof.Selector{Kind: pprof.OffCPU}}, ws)
	cpu, err := h.Profile(context.Background(), all)
	if err != nil {
		t.Fatal(err)
	}
	sameLines(t, canon(cpu, true), canon(pprof.Build(ws, pprof.Selector{}), true))
	if h.undecodable.Load() != 0 {
		t.Fatalf("%d windows undecodable", h.undecodable.Load())
	}
}

// The memory limit bounds CPU and off-CPU records together: they share
// generations, so a window's two records are evicted together, and what is
// left never exceeds the limit.
func TestHistoryMemoryLimitCoversOffCPU(t *testing.T) {
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	ws := testWindows(30, start)
	const limit = 1 << 20
	st := store.NewMemory(limit)
	writeAll(t, st, ws)
	stats := st.Stats()
	if stats.Bytes > limit || stats.EvictedSize == 0 {
		t.Fatalf("stats %+v: want evictions and at most %d bytes", stats, limit)
	}
	starts := func(level uint8) []time.Time {
		var ts []time.Time
		for _, m := range st.List(level, start, start.Add(time.Hour)) {
			ts = append(ts, m.Start)
		}
		return ts
	}
	cpu, off := starts(levelWindow), starts(levelOffCPU)
	if len(off) == 0 || len(cpu) == len(ws) || !slices.Equal(cpu, off) {
		t.Fatalf("windows kept: CPU %v, off-CPU %v; want the same, fewer than %d", cpu, off, len(ws))
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
	h := openGolden(t, "testdata/history-v2", formatV2)
	got := checkGoldenProfiles(t, h, func(ws []*pipeline.Window) {
		for _, w := range ws { // format 3 added the names, format 4 the inlined calls
			for i := range w.Samples {
				s := &w.Samples[i]
				s.Workload = &attribution.Workload{ContainerID: s.Workload.ContainerID, PodUID: s.Workload.PodUID}
				s.Frames = slices.Clone(s.Frames)
				for j := range s.Frames {
					s.Frames[j].Inlined = nil
				}
			}
		}
	})
	for _, s := range got.Sample {
		if len(s.Label["container_id"]) != 1 || s.Label["namespace"] != nil {
			t.Fatalf("format 2 sample labels %v: want container_id from the path and no names", s.Label)
		}
	}
}

// Records of format 4 (before off-CPU windows), written by the release
// before format 5 into testdata, answer CPU queries as they did, inlined
// calls and Kubernetes names included, and off-CPU queries with an empty
// profile: those windows had none.
func TestHistoryReadsFormat4(t *testing.T) {
	h := openGolden(t, "testdata/history-v4", formatV4)
	got := checkGoldenProfiles(t, h, func([]*pipeline.Window) {})
	checkInlinedLines(t, got)
	for _, s := range got.Sample {
		if s.Label["namespace"] == nil || s.Label[pprof.ReasonLabel] != nil {
			t.Fatalf("format 4 sample labels %v: want the Kubernetes names, no off-CPU reason", s.Label)
		}
	}
}

// Records of format 5 (before interpreted frames), written by the release
// before format 6 into testdata, answer CPU queries as they did (the
// profile pprof.Build makes of the window they were written from) and
// off-CPU queries with its totals.
func TestHistoryReadsFormat5(t *testing.T) {
	h := openGolden(t, "testdata/history-v5", formatV5)
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	q := Query{From: start, To: start.Add(time.Hour)}
	got, err := h.Profile(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	ws := testWindows(1, start)
	sameLines(t, canon(got, true), canon(pprof.Build(ws, pprof.Selector{}), true))
	checkInlinedLines(t, got)
	// The off-CPU samples testWindows draws depend on the order of its
	// CPU samples, which is not fixed: their totals are.
	q.Kind = pprof.OffCPU
	off, err := h.Profile(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	want := pprof.Build(ws, pprof.Selector{Kind: pprof.OffCPU})
	sum := func(p *profile.Profile) (n [2]int64, reasons int) {
		for _, s := range p.Sample {
			n[0], n[1] = n[0]+s.Value[0], n[1]+s.Value[1]
			if len(s.Label[pprof.ReasonLabel]) == 1 {
				reasons++
			}
		}
		return n, reasons
	}
	gotN, gotReasons := sum(off)
	wantN, _ := sum(want)
	if off.DefaultSampleType != "off_cpu" || gotN != wantN || gotReasons != len(off.Sample) || len(off.Sample) == 0 {
		t.Errorf("off-CPU profile of format 5: type %q, totals %v, %d of %d samples with a reason; want off_cpu, %v, all",
			off.DefaultSampleType, gotN, gotReasons, len(off.Sample), wantN)
	}
	if h.undecodable.Load() != 0 {
		t.Fatalf("%d windows undecodable", h.undecodable.Load())
	}
}

// openGolden opens a copy of a segment directory of testdata, checking
// that its records are of the format it stands for.
func openGolden(t *testing.T, src string, version byte) *History {
	t.Helper()
	dir := t.TempDir()
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
	disk := openDisk(t, dir)
	all := disk.List(levelDict, time.Time{}, time.Now().Add(time.Hour*24*365*10))
	all = append(all, disk.List(levelWindow, time.Time{}, time.Now().Add(time.Hour*24*365*10))...)
	if len(all) < 2 {
		t.Fatalf("%s holds %d records", src, len(all))
	}
	err = disk.Load(all, func(_ store.Meta, b []byte) error {
		if b[0] != version {
			return fmt.Errorf("a record of format %d, want %d", b[0], version)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s: %v", src, err)
	}
	return New(Options{Store: disk, QueueSize: 1})
}

// openDisk opens the disk store in dir, closed when the test ends.
func openDisk(t *testing.T, dir string) *store.Disk {
	t.Helper()
	st, err := store.OpenDisk(store.DiskOptions{Dir: dir, MaxBytes: 1 << 30, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// checkGoldenProfiles checks that a golden segment's CPU profile is what
// pprof.Build makes of the window it was written from (testWindows(1, ...)
// with what its format could not hold taken out by strip), and that its
// off-CPU profile is empty. It returns the CPU profile.
func checkGoldenProfiles(t *testing.T, h *History, strip func([]*pipeline.Window)) *profile.Profile {
	t.Helper()
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	q := Query{From: start, To: start.Add(time.Hour)}
	got, err := h.Profile(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	ws := testWindows(1, start)
	strip(ws)
	sameLines(t, canon(got, true), canon(pprof.Build(ws, pprof.Selector{}), true))
	q.Kind = pprof.OffCPU
	off, err := h.Profile(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	if len(off.Sample) != 0 || off.DefaultSampleType != "off_cpu" {
		t.Fatalf("off-CPU profile of an old segment: %d samples, type %q", len(off.Sample), off.DefaultSampleType)
	}
	if h.undecodable.Load() != 0 {
		t.Fatalf("%d windows undecodable", h.undecodable.Load())
	}
	return got
}

// A corrupt dictionary record makes the windows that use it undecodable:
// they are skipped and counted, the others still answer, nothing crashes.
func TestHistoryLostDictionary(t *testing.T) {
	withEncoderBytes(t, 4<<20)
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

// A generation whose dictionary has as many ids as a reader accepts takes
// no more: the next window opens a new generation, is stored there and can
// be read, and nothing counts as an encode error.
func TestHistoryFullDictionaryOpensAGeneration(t *testing.T) {
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	ws := testWindows(2, start)
	st := store.NewMemory(64 << 20)
	h := New(Options{Store: st})
	if err := h.storeWindow(ws[0]); err != nil {
		t.Fatal(err)
	}
	gen := h.enc.gen
	h.enc.nStr = maxDictIDs + 1
	if err := h.storeWindow(ws[1]); err != nil {
		t.Fatal(err)
	}
	if h.enc.gen == gen {
		t.Errorf("the window went to the full generation %d", gen)
	}
	if got := h.encErrs.Load(); got != 0 {
		t.Errorf("encode errors %d, want 0", got)
	}
	got, err := h.Profile(context.Background(), Query{From: start, To: start.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	sameLines(t, canon(got, true), canon(pprof.Build(ws, pprof.Selector{}), true))
}

// An off-CPU window record is read only as format 5 on (a record marked
// older cannot be one), and only when the dictionary has the strings of
// its reasons: a window is never shown with a reason it cannot name.
func TestHistoryOffCPURecordChecks(t *testing.T) {
	ws := testWindows(1, time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC))
	var e windowEncoder
	recs, err := e.encode(ws[0], 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 3 || recs[0].Level != levelDict || recs[1].Level != levelWindow || recs[2].Level != levelOffCPU {
		t.Fatalf("records %d: want a dictionary, a CPU and an off-CPU window", len(recs))
	}
	d := newGenDict()
	if err := d.add(recs[0].Data); err != nil {
		t.Fatal(err)
	}
	var rows windowRows
	if err := decodeWindow(recs[2].Data, d, &rows, pprof.OffCPU); err != nil || len(rows.reasons) == 0 {
		t.Fatalf("off-CPU record: %v, %d rows", err, len(rows.reasons))
	}
	asV4 := append([]byte{formatV4}, recs[2].Data[1:]...)
	if err := decodeWindow(asV4, d, &rows, pprof.OffCPU); err != errBadRecord {
		t.Errorf("an off-CPU record of format 4: %v, want %v", err, errBadRecord)
	}
	d.strOK[rows.reasons[0]] = false
	if err := decodeWindow(recs[2].Data, d, &rows, pprof.OffCPU); err != errMissingDict {
		t.Errorf("a reason whose string is lost: %v, want %v", err, errMissingDict)
	}
}

// Interpreted frames (format 6: Python functions, with no mapping nor
// address, told apart by function, file and line) come back from the
// history as they went in: as pprof.Build makes them, and in the
// dictionary with their runtime, next to native frames of the same
// function name.
func TestHistoryInterpretedFrames(t *testing.T) {
	withEncoderBytes(t, 4<<20)
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	ws := testWindows(3, start)
	py := func(fn string, line int) symbolizer.Frame {
		return symbolizer.Frame{Function: fn, File: "/srv/app/chain.py", Line: line, Interpreter: "cpython"}
	}
	native := ws[0].Samples[0].Frames[len(ws[0].Samples[0].Frames)-1]
	for i, w := range ws {
		for j := range w.Samples {
			if j%2 != 0 {
				continue
			}
			s := &w.Samples[j]
			// The same function on two lines, and a native frame named like
			// an interpreted one, are distinct frames.
			leaf := py("chain.fid_leaf", 8+j%3)
			s.Frames = append([]symbolizer.Frame{leaf, py("chain.fid_middle", 14), py("chain.Outer.fid_outer", 19+i)}, s.Frames...)
			if j%4 == 0 {
				n := native
				n.Function = "chain.fid_leaf"
				s.Frames = append(s.Frames, n)
			}
		}
	}
	st := store.NewMemory(16 << 20)
	h := writeAll(t, st, ws)
	q := Query{From: start, To: start.Add(time.Hour)}
	got, err := h.Profile(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	sameLines(t, canon(got, true), canon(pprof.Build(ws, pprof.Selector{}), true))
	if h.undecodable.Load() != 0 {
		t.Fatalf("%d windows undecodable", h.undecodable.Load())
	}

	// The dictionary keeps the runtime; a format 5 record with the flag is
	// refused (that format never wrote it).
	d := newGenDict()
	var interpreted int
	err = st.Load(st.List(levelDict, start, start.Add(time.Hour)), func(_ store.Meta, b []byte) error {
		if b[0] != formatV6 {
			return fmt.Errorf("a record of format %d, want %d", b[0], formatV6)
		}
		return d.add(b)
	})
	if err != nil {
		t.Fatal(err)
	}
	for id := range d.frames {
		fr := d.symFrame(uint32(id))
		if fr.Interpreter == "" {
			continue
		}
		interpreted++
		if fr.Interpreter != "cpython" || fr.Mapping != nil || fr.Kernel || fr.File != "/srv/app/chain.py" || !strings.HasPrefix(fr.Function, "chain.") || fr.Line == 0 {
			t.Errorf("interpreted frame read back as %+v", fr)
		}
	}
	if interpreted != 3+1+3 { // fid_leaf on 3 lines, fid_middle, fid_outer on 3
		t.Errorf("%d interpreted frames in the dictionary, want 7", interpreted)
	}
	u := binary.AppendUvarint
	record := func(version byte) []byte {
		b := u(u(nil, 1), 1)
		b = append(u(b, 2), "fn"...)
		b = u(u(b, 0), 1)
		b = u(u(u(u(b, 1), 0), 1), 0) // function, file, runtime ("fn"), build id
		b = append(u(u(b, 7), 0), frameInterpreted)
		b = u(u(b, 0), 0)
		b = u(u(b, 0), 0)
		return zstdEncoder.EncodeAll(b, []byte{version})
	}
	if err := newGenDict().add(record(formatV5)); err == nil {
		t.Error("a format 5 record with an interpreted frame was accepted")
	}
	if err := newGenDict().add(record(formatV6)); err != nil {
		t.Errorf("a format 6 record with an interpreted frame: %v", err)
	}
}

// withEncoderBytes sets the writer's dictionary bound for one test. The
// tests of the round trip, of a lost dictionary record and of interpreted
// frames lay out generations by segment size alone, as with the 4 MiB bound
// their fixtures were written for; the bound has its own test below.
func withEncoderBytes(t *testing.T, n int) {
	old := maxEncoderBytes
	maxEncoderBytes = n
	t.Cleanup(func() { maxEncoderBytes = old })
}

// On a host that starts processes all day every window brings new pids:
// the writer's dictionary stays under its bound by closing generations
// early (the store alone would keep one for its whole span), and a query
// over all of them still returns every sample.
func TestHistoryDictionaryBoundedUnderChurn(t *testing.T) {
	withEncoderBytes(t, 256<<10)

	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	ws := testWindows(40, start)
	for i, w := range ws { // small windows, every one's processes new
		w.Samples, w.OffCPU = w.Samples[:min(len(w.Samples), 30)], w.OffCPU[:min(len(w.OffCPU), 10)]
		for _, samples := range [][]pipeline.Sample{w.Samples, w.OffCPU} {
			for j := range samples {
				samples[j].PID += uint32(i) * 100_000
				samples[j].TID += uint32(i) * 100_000
			}
		}
	}
	disk, err := store.OpenDisk(store.DiskOptions{Dir: t.TempDir(), MaxBytes: 1 << 30, SegmentBytes: 1 << 30, SegmentSpan: 24 * time.Hour, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()

	h := New(Options{Store: disk, QueueSize: 1})
	h.Start()
	peak, maxAdd := 0, 0 // the encoder's bytes, and the most one window added
	for _, w := range ws {
		gen, before := h.enc.gen, h.enc.bytes
		if err := h.storeWindow(w); err != nil {
			t.Fatal(err)
		}
		if h.enc.gen != gen {
			before = 0
		}
		peak, maxAdd = max(peak, h.enc.bytes), max(maxAdd, h.enc.bytes-before)
	}
	h.Stop()

	gens := map[uint64]bool{}
	for _, m := range disk.List(levelWindow, start, start.Add(time.Hour)) {
		gens[m.Gen()] = true
	}
	t.Logf("%d generations, encoder peak %d bytes (bound %d, a window adds up to %d)", len(gens), peak, maxEncoderBytes, maxAdd)
	if len(gens) < 3 {
		t.Errorf("%d generations: the dictionary bound never closed one", len(gens))
	}
	if peak > maxEncoderBytes+maxAdd {
		t.Errorf("encoder held %d bytes: more than the bound %d and one window", peak, maxEncoderBytes)
	}
	if n := h.encErrs.Load(); n != 0 {
		t.Errorf("%d encode errors counted for generations closed on purpose", n)
	}
	got, err := h.Profile(context.Background(), Query{From: start, To: start.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	sameLines(t, canon(got, true), canon(pprof.Build(ws, pprof.Selector{}), true))
}
