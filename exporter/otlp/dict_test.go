package otlp

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"go.opentelemetry.io/collector/pdata/pprofile"

	"github.com/cgscope/cgscope/internal/pipeline"
	"github.com/cgscope/cgscope/symbolizer"
)

func TestIndexTable(t *testing.T) {
	var tab indexTable
	for round := range 3 { // reused across requests, as the converter does
		tab.reset()
		r := rand.New(rand.NewPCG(uint64(round), 2))
		keys := map[uint64]int32{}
		for len(keys) < 20000 {
			k := r.Uint64() >> (r.IntN(4) * 16) // small and large keys
			if _, dup := keys[k]; dup {
				continue
			}
			if _, ok := tab.get(k); ok {
				t.Fatalf("round %d: %x found before it was put", round, k)
			}
			keys[k] = int32(len(keys))
			tab.put(k, keys[k])
		}
		for k, want := range keys {
			if got, ok := tab.get(k); !ok || got != want {
				t.Fatalf("round %d: %x → %d %v, want %d", round, k, got, ok, want)
			}
		}
		if tab.n != len(keys) || 2*tab.n > len(tab.slots) {
			t.Errorf("round %d: %d keys in %d slots", round, tab.n, len(tab.slots))
		}
	}
}

// Two stacks with one hash are both kept and told apart.
func TestStackSetCollision(t *testing.T) {
	var s stackSet
	s.reset()
	intern := func(locs []int32) (int32, bool) {
		s.enc = appendIndices(s.enc[:0], locs)
		return s.internEncoded(42)
	}
	a, b := []int32{1, 2, 3}, []int32{3, 2, 1}
	for _, c := range []struct {
		locs []int32
		want int32
		seen bool
	}{{a, 1, false}, {b, 2, false}, {a, 1, true}, {b, 2, true}, {[]int32{9}, 3, false}} {
		if got, seen := intern(c.locs); got != c.want || seen != c.seen {
			t.Errorf("%v: stack %d seen %v, want %d %v", c.locs, got, seen, c.want, c.seen)
		}
	}
	if s.n != 4 {
		t.Errorf("%d entries in the stack table, want 4 (with the empty stack)", s.n)
	}
}

// Every dictionary table holds each entry once, also when windows repeat
// stacks and two Mapping values name one object.
func TestConvertDeduplicated(t *testing.T) {
	w1, w2 := synthWindow(20, 300, 12, 5), synthWindow(20, 300, 12, 5) // the same stacks, other Mapping values
	w3 := synthWindow(30, 200, 8, 6)
	pd := convert(t, NewConverter("test"), []*pipeline.Window{w1, w2, w3})
	d := pd.Dictionary()
	checkUniqueEntries(t, d)
	if got := d.MappingTable().Len(); got != 21 { // the zero entry and 20 objects
		t.Errorf("%d mappings, want 21", got)
	}
	var want, got int64
	for _, w := range []*pipeline.Window{w1, w2, w3} {
		for _, s := range w.Samples {
			want += int64(s.Count)
		}
	}
	for i := 0; i < pd.ResourceProfiles().Len(); i++ {
		samples := pd.ResourceProfiles().At(i).ScopeProfiles().At(0).Profiles().At(0).Samples()
		for j := 0; j < samples.Len(); j++ {
			got += samples.At(j).Values().At(0)
		}
	}
	if got != want {
		t.Errorf("samples sum to %d, want %d", got, want)
	}
}

// checkUniqueEntries checks that every table of d holds each entry once.
func checkUniqueEntries(t *testing.T, d pprofile.ProfilesDictionary) {
	t.Helper()
	str := func(i int32) string { return d.StringTable().At(int(i)) }
	unique := func(table string, n int, key func(int) string) {
		seen := map[string]int{}
		for i := range n {
			k := key(i)
			if j, dup := seen[k]; dup {
				t.Errorf("%s: entries %d and %d are both %s", table, j, i, k)
			}
			seen[k] = i
		}
	}
	unique("strings", d.StringTable().Len(), func(i int) string { return d.StringTable().At(i) })
	unique("functions", d.FunctionTable().Len(), func(i int) string {
		f := d.FunctionTable().At(i)
		return str(f.NameStrindex()) + "|" + str(f.SystemNameStrindex()) + "|" + str(f.FilenameStrindex())
	})
	unique("mappings", d.MappingTable().Len(), func(i int) string {
		m := d.MappingTable().At(i)
		return fmt.Sprint(str(m.FilenameStrindex()), m.AttributeIndices().AsRaw())
	})
	unique("locations", d.LocationTable().Len(), func(i int) string {
		l := d.LocationTable().At(i)
		k := fmt.Sprint(l.MappingIndex(), l.Address(), l.AttributeIndices().AsRaw())
		for j := 0; j < l.Lines().Len(); j++ {
			k += fmt.Sprint(l.Lines().At(j).FunctionIndex(), l.Lines().At(j).Line())
		}
		return k
	})
	unique("stacks", d.StackTable().Len(), func(i int) string { return fmt.Sprint(d.StackTable().At(i).LocationIndices().AsRaw()) })
	unique("attributes", d.AttributeTable().Len(), func(i int) string {
		a := d.AttributeTable().At(i)
		return str(a.KeyStrindex()) + "=" + a.Value().AsString()
	})
}

// A converter reused across intervals (its tables emptied, not
// reallocated, and each request written into the memory of the last one,
// released) gives the request a new converter gives: after a larger, a
// smaller, or a differently shaped request (kernel frames, frames without
// a name, several windows).
func TestEncodeReuse(t *testing.T) {
	big, small, odd := synthWindow(50, 2000, 16, 8), synthWindow(10, 200, 6, 9), oddWindow(10)
	c := NewConverter("test")
	var last []byte
	for i, w := range [][]*pipeline.Window{{big}, {small}, {odd}, {big, odd}, {small}, {odd}, {big}} {
		reused, err := c.Encode(w)
		if err != nil {
			t.Fatal(err)
		}
		if last != nil && len(reused) <= cap(last) && &reused[0] != &last[:1][0] {
			t.Errorf("request %d: not written into the released memory of the last", i)
		}
		fresh, err := NewConverter("test").Encode(w)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := withoutIDs(t, reused), withoutIDs(t, fresh); !bytes.Equal(got, want) {
			t.Errorf("request %d: a reused converter's request differs from a new converter's", i)
		}
		c.Release(reused)
		last = reused
	}
	if body, err := c.Encode([]*pipeline.Window{{}}); body != nil || err != nil {
		t.Errorf("no samples: %d bytes, %v; want nothing", len(body), err)
	}
}

// withoutIDs is a request without its profile IDs, which are random:
// decoded and encoded again by pdata.
func withoutIDs(t *testing.T, body []byte) []byte {
	t.Helper()
	pd := decode(t, body)
	for _, rp := range pd.ResourceProfiles().All() {
		for _, prof := range rp.ScopeProfiles().At(0).Profiles().All() {
			prof.SetProfileID(pprofile.ProfileID{})
		}
	}
	b, err := (&pprofile.ProtoMarshaler{}).MarshalProfiles(pd)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A thread id reused by another process within one request gives each
// process its own sample, with its own thread name.
func TestConvertReusedTID(t *testing.T) {
	fr := []symbolizer.Frame{{ObjAddress: 0x10, Function: "f", Mapping: &symbolizer.Mapping{Path: "/bin/x"}}}
	w := &pipeline.Window{Samples: []pipeline.Sample{
		{PID: 10, TID: 77, Comm: "old", Frames: fr, Count: 2},
		{PID: 20, TID: 77, Comm: "new", Frames: fr, Count: 3},
		{PID: 20, TID: 77, Comm: "new", Frames: fr, Count: 4},
	}}
	pd := convert(t, NewConverter("test"), []*pipeline.Window{w})
	d := pd.Dictionary()
	if n := pd.ResourceProfiles().Len(); n != 2 {
		t.Fatalf("%d processes, want 2", n)
	}
	for i, want := range []struct {
		count int64
		name  string
	}{{2, "old"}, {7, "new"}} {
		samples := pd.ResourceProfiles().At(i).ScopeProfiles().At(0).Profiles().At(0).Samples()
		if samples.Len() != 1 {
			t.Fatalf("process %d: %d samples, want 1", i, samples.Len())
		}
		s := samples.At(0)
		name := d.AttributeTable().At(int(s.AttributeIndices().At(1))).Value().Str()
		if s.Values().At(0) != want.count || name != want.name {
			t.Errorf("process %d: count %d thread %q, want %d %q", i, s.Values().At(0), name, want.count, want.name)
		}
	}
}
