package store

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 3, 0, 0, 0, time.UTC)

func window(i int, size int) Record {
	start := t0.Add(time.Duration(i) * 10 * time.Second)
	data := bytes.Repeat([]byte{byte(i)}, size)
	return Record{Meta: Meta{Start: start, End: start.Add(10 * time.Second)}, Data: data}
}

func loadAll(t *testing.T, s Store, level uint8, from, to time.Time) []Record {
	t.Helper()
	var out []Record
	err := s.Load(s.List(level, from, to), func(m Meta, b []byte) error {
		out = append(out, Record{Meta: m, Data: append([]byte(nil), b...)})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func checkWindows(t *testing.T, got []Record, want ...int) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d records, want %d (%v)", len(got), len(want), want)
	}
	for k, i := range want {
		w := window(i, 1)
		if !got[k].Start.Equal(w.Start) || !got[k].End.Equal(w.End) || got[k].Data[0] != byte(i) {
			t.Fatalf("record %d: got start %v data %d, want window %d", k, got[k].Start, got[k].Data[0], i)
		}
	}
}

func all() (time.Time, time.Time) { return t0.Add(-time.Hour), t0.Add(100 * time.Hour) }

func TestMemoryWriteReadEvictBySize(t *testing.T) {
	m := NewMemory(1000)
	for i := range 25 {
		if err := m.Append(window(i, 100)); err != nil {
			t.Fatal(err)
		}
	}
	from, to := all()
	checkWindows(t, loadAll(t, m, 0, from, to), 15, 16, 17, 18, 19, 20, 21, 22, 23, 24)
	// A range selects the windows overlapping it.
	checkWindows(t, loadAll(t, m, 0, window(17, 1).Start.Add(time.Second), window(19, 1).Start), 17, 18)
	st := m.Stats()
	if st.Records != 10 || st.Bytes != 1000 || st.EvictedSize != 15 || st.Appended != 25 {
		t.Fatalf("stats %+v", st)
	}
}

func openDisk(t *testing.T, dir string, o DiskOptions) *Disk {
	t.Helper()
	o.Dir = dir
	if o.MaxBytes == 0 {
		o.MaxBytes = 1 << 30
	}
	d, err := OpenDisk(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestDiskRestartKeepsHistory(t *testing.T) {
	dir := t.TempDir()
	d := openDisk(t, dir, DiskOptions{SegmentBytes: 1000})
	for i := range 20 {
		if err := d.Append(window(i, 100)); err != nil {
			t.Fatal(err)
		}
	}
	d.Close()
	if segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.cgs")); len(segs) < 3 {
		t.Fatalf("want several segments, got %d", len(segs))
	}
	d = openDisk(t, dir, DiskOptions{SegmentBytes: 1000})
	from, to := all()
	want := make([]int, 20)
	for i := range want {
		want[i] = i
	}
	checkWindows(t, loadAll(t, d, 0, from, to), want...)
	// Appending after a restart continues in a new segment.
	if err := d.Append(window(20, 100)); err != nil {
		t.Fatal(err)
	}
	checkWindows(t, loadAll(t, d, 0, window(19, 1).End, to), 20)
	if last, ok := d.Latest(0); !ok || !last.Equal(window(20, 1).Start) {
		t.Fatalf("Latest = %v %v", last, ok)
	}
}

func TestDiskEvictsBySizeAndAge(t *testing.T) {
	now := window(100, 1).Start
	d := openDisk(t, t.TempDir(), DiskOptions{
		MaxBytes: 4000, SegmentBytes: 1000, Retention: time.Hour,
		Now: func() time.Time { return now },
	})
	for i := range 100 {
		if err := d.Append(window(i, 100)); err != nil {
			t.Fatal(err)
		}
	}
	st := d.Stats()
	if st.Bytes > 4000 || st.EvictedSize == 0 || st.EvictedAge != 0 {
		t.Fatalf("size eviction: %+v", st)
	}
	from, to := all()
	got := loadAll(t, d, 0, from, to)
	if len(got) == 0 || got[len(got)-1].Data[0] != 99 || int64(len(got)) != st.Records {
		t.Fatalf("after size eviction: %d records, stats %+v", len(got), st)
	}
	// Two hours later everything written is past the retention.
	now = now.Add(2 * time.Hour)
	if err := d.Append(window(1000, 100)); err != nil {
		t.Fatal(err)
	}
	st = d.Stats()
	if st.EvictedAge == 0 || st.Records != 1 {
		t.Fatalf("age eviction: %+v", st)
	}
	checkWindows(t, loadAll(t, d, 0, from, to.Add(1000*time.Hour)), 1000)
}

// A torn last record (a crash mid-write), a flipped byte in an older record
// and a file that is not a segment at all: each is skipped and counted, the
// rest of the history stays readable.
func TestDiskSkipsTornAndCorruptData(t *testing.T) {
	dir := t.TempDir()
	d := openDisk(t, dir, DiskOptions{})
	for i := range 5 {
		if err := d.Append(window(i, 100)); err != nil {
			t.Fatal(err)
		}
	}
	d.Close()
	segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.cgs"))
	if len(segs) != 1 {
		t.Fatalf("segments: %v", segs)
	}
	b, _ := os.ReadFile(segs[0])
	rec := headerSize + 100
	b[len(segmentMagic)+1*rec+headerSize+50] ^= 0xff // corrupt window 1's data
	b = b[:len(b)-30]                                // tear window 4
	os.WriteFile(segs[0], b, 0o600)
	os.WriteFile(filepath.Join(dir, "seg-00000000000000ff.cgs"), []byte("garbage, not a segment"), 0o600)

	d = openDisk(t, dir, DiskOptions{})
	from, to := all()
	checkWindows(t, loadAll(t, d, 0, from, to), 0, 2, 3)
	st := d.Stats()
	if st.CorruptRecords != 2 || st.CorruptFiles != 1 {
		t.Fatalf("stats %+v, want 2 corrupt records and 1 corrupt file", st)
	}
}

// Corruption that happens after the index was built is caught on read.
func TestDiskCorruptionAfterOpenIsSkipped(t *testing.T) {
	dir := t.TempDir()
	d := openDisk(t, dir, DiskOptions{})
	for i := range 3 {
		d.Append(window(i, 100))
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.cgs"))
	f, _ := os.OpenFile(segs[0], os.O_WRONLY, 0)
	f.WriteAt([]byte{0xAA}, int64(len(segmentMagic)+headerSize+10))
	f.Close()
	from, to := all()
	checkWindows(t, loadAll(t, d, 0, from, to), 1, 2)
	if st := d.Stats(); st.CorruptRecords != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// Queries run while windows are written and evicted; run with -race.
func TestConcurrentQueriesWhileWriting(t *testing.T) {
	for name, s := range map[string]Store{
		"memory": NewMemory(20 * 1000),
		"disk":   openDisk(t, t.TempDir(), DiskOptions{MaxBytes: 20 * 1000, SegmentBytes: 2000}),
	} {
		t.Run(name, func(t *testing.T) {
			var wg sync.WaitGroup
			done := make(chan struct{})
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-done:
							return
						default:
						}
						from, to := all()
						s.Load(s.List(0, from, to), func(m Meta, b []byte) error {
							if len(b) != 1000 || b[0] != b[999] {
								t.Errorf("torn read: %d bytes", len(b))
							}
							return nil
						})
						s.Stats()
					}
				}()
			}
			for i := range 300 {
				if err := s.Append(window(i, 1000)); err != nil {
					t.Error(err)
				}
			}
			close(done)
			wg.Wait()
			if st := s.Stats(); st.Bytes > 20*1000 || st.EvictedSize == 0 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

func TestDiskRejectsBadOptions(t *testing.T) {
	if _, err := OpenDisk(DiskOptions{Dir: t.TempDir()}); err == nil {
		t.Fatal("MaxBytes 0 accepted")
	}
}

func ExampleMemory() {
	m := NewMemory(1 << 20)
	m.Append(Record{Meta: Meta{Start: t0, End: t0.Add(10 * time.Second)}, Data: []byte("profile")})
	from, to := all()
	m.Load(m.List(0, from, to), func(meta Meta, b []byte) error {
		fmt.Println(meta.Start.Format(time.RFC3339), string(b))
		return nil
	})
	// Output: 2026-03-01T03:00:00Z profile
}

// A group lands whole in one generation, build learns which, and a new
// generation starts when the group does not fit the open one; Memory evicts
// whole generations and Disk starts a new one after a restart.
func TestGenerations(t *testing.T) {
	dir := t.TempDir()
	for name, s := range map[string]Store{
		"memory": NewMemory(6400), // generations of 400 bytes: two groups
		"disk":   openDisk(t, dir, DiskOptions{SegmentBytes: 8 + 4*(headerSize+100)}),
	} {
		t.Run(name, func(t *testing.T) {
			var gens []uint64
			for i := 0; i < 80; i += 2 {
				err := s.AppendFunc(func(gen uint64) ([]Record, error) {
					gens = append(gens, gen)
					dict := window(i, 100)
					dict.Level = 7
					return []Record{dict, window(i+1, 100)}, nil
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			from, to := all()
			ws := s.List(0, from, to)
			if len(ws) < 2 || ws[0].Gen() == ws[len(ws)-1].Gen() {
				t.Fatalf("want windows in several generations: %d windows", len(ws))
			}
			for _, w := range ws {
				dicts := s.ListGen(w.Gen(), 7)
				found := false
				for _, d := range dicts {
					found = found || d.Start.Equal(w.Start.Add(-10*time.Second))
				}
				if !found {
					t.Fatalf("window at %v: its group's first record is not in generation %d", w.Start, w.Gen())
				}
			}
			if got := gens[len(gens)-1]; got != ws[len(ws)-1].Gen() {
				t.Fatalf("last build saw generation %d, records are in %d", got, ws[len(ws)-1].Gen())
			}
			if st := s.Stats(); name == "memory" && (st.EvictedSize == 0 || st.EvictedSize%2 != 0 || st.Bytes > 6400) {
				t.Fatalf("memory evicts whole generations: %+v", st)
			}
		})
	}
	d := openDisk(t, dir, DiskOptions{SegmentBytes: 1 << 20})
	from, to := all()
	before := d.List(0, from, to)
	d.Append(window(100, 100))
	after := d.List(0, from, to)
	if after[len(after)-1].Gen() == before[len(before)-1].Gen() {
		t.Fatal("append after a restart went into an old generation")
	}
}
