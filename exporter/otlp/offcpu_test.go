package otlp

import (
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/pprofile"

	"github.com/cgscope/cgscope/internal/pipeline"
	"github.com/cgscope/cgscope/symbolizer"
)

// offCPUReasons are the pipeline's reasons, and none (unknown).
var offCPUReasons = []string{"runnable", "sleeping", "io_wait", "uninterruptible", "other", ""}

// addOffCPU gives w n off-CPU samples (and returns w), drawn from its CPU
// samples: some with exactly a CPU sample's thread and stack, some under
// the scheduler's kernel frames, some of another thread of the process or
// of a process without CPU samples; of every reason and none, some of them
// twice (to be merged).
func addOffCPU(w *pipeline.Window, n int, seed uint64) *pipeline.Window {
	r := rand.New(rand.NewPCG(seed, 4))
	sched := []symbolizer.Frame{
		{Address: 0xffffffff81c00010, ObjAddress: 0xffffffff81c00010, Function: "__schedule", Kernel: true},
		{Address: 0xffffffff81c00200, ObjAddress: 0xffffffff81c00200, Function: "schedule", Kernel: true},
	}
	for i := range n {
		s := w.Samples[r.IntN(len(w.Samples))]
		switch i % 4 {
		case 0: // the CPU sample's thread and stack: one stack in both kinds of profile
		case 1:
			s.Frames = append(slices.Clone(sched), s.Frames...)
		case 2: // a process that never ran in the window
			s.PID, s.TID, s.Comm = s.PID+5000, s.TID+5000, "sleeper"
			s.Frames = append(slices.Clone(sched), s.Frames...)
		case 3: // another thread of the process, which never ran in the window
			s.TID += 100_000
		}
		s.Reason = offCPUReasons[r.IntN(len(offCPUReasons))]
		s.Count = uint64(1 + r.IntN(20))
		s.OffCPU = time.Duration(s.Count) * time.Duration(1+r.IntN(5_000_000))
		w.OffCPU = append(w.OffCPU, s)
		if i%3 == 0 {
			w.OffCPU = append(w.OffCPU, s)
		}
	}
	return w
}

// typeOf names a value type "type/unit", as the request's string table
// says.
func typeOf(d pprofile.ProfilesDictionary, vt pprofile.ValueType) string {
	return d.StringTable().At(int(vt.TypeStrindex())) + "/" + d.StringTable().At(int(vt.UnitStrindex()))
}

// A window's off-CPU samples arrive, read back by pdata, as two more
// profiles in each process's scope, after its CPU profile (when it has
// CPU samples): off_cpu/nanoseconds without a period, and
// context_switch/count with period context_switch/count 1. Together they
// carry each thread's, stack's and reason's switch-outs and time off the
// CPU, merged across windows, with the reason as a sample attribute, and
// they share the request's one dictionary with the CPU profile.
func TestConvertOffCPU(t *testing.T) {
	w1 := addOffCPU(synthWindow(4, 40, 6, 11), 60, 11)
	// A later window of off-CPU samples only, some of them the first's.
	w2 := &pipeline.Window{Start: w1.End, End: w1.End.Add(10 * time.Second), OffCPU: slices.Clone(w1.OffCPU[:10])}
	windows := []*pipeline.Window{w1, w2}
	pd := convert(t, NewConverter("test"), windows)
	d := pd.Dictionary()
	checkDictionary(t, d)
	checkUniqueEntries(t, d)

	want, got := wantByType(windows), gotByType(t, pd)
	if !equalByType(got, want) {
		t.Errorf("samples differ from the windows':\n got %v\nwant %v", got, want)
	}
	var wantNanos, wantSwitches, gotNanos, gotSwitches int64
	hasCPU, hasOffCPU, wantReasons := map[int64]bool{}, map[int64]bool{}, map[string]bool{}
	for _, w := range windows {
		for _, s := range w.Samples {
			hasCPU[int64(s.PID)] = true
		}
		for _, s := range w.OffCPU {
			wantNanos += int64(s.OffCPU)
			wantSwitches += int64(s.Count)
			hasOffCPU[int64(s.PID)] = true
			wantReasons[s.Reason] = s.Reason != ""
		}
	}
	delete(wantReasons, "")
	for _, n := range got[offCPUType] {
		gotNanos += n
	}
	for _, n := range got[switchesType] {
		gotSwitches += n
	}
	if gotNanos != wantNanos || gotSwitches != wantSwitches {
		t.Errorf("off-CPU totals %d ns in %d switch-outs, want %d ns in %d", gotNanos, gotSwitches, wantNanos, wantSwitches)
	}
	if len(hasOffCPU) == len(hasCPU) {
		t.Fatal("the test windows have no process with off-CPU samples only")
	}

	ids := map[pprofile.ProfileID]bool{}
	stacks := map[string]map[int32]bool{} // by profile type, the stacks its samples use
	gotReasons := map[string]bool{}
	for _, rp := range pd.ResourceProfiles().All() {
		pidValue, _ := rp.Resource().Attributes().Get(attrPID)
		pid := pidValue.Int()
		profiles := rp.ScopeProfiles().At(0).Profiles()
		var types, wantTypes []string
		if hasCPU[pid] {
			wantTypes = append(wantTypes, cpuType)
		}
		if hasOffCPU[pid] {
			wantTypes = append(wantTypes, offCPUType, switchesType)
		}
		for _, prof := range profiles.All() {
			typ := typeOf(d, prof.SampleType())
			types = append(types, typ)
			period := map[string]string{cpuType: "cpu/nanoseconds", offCPUType: "/", switchesType: "context_switch/count"}[typ]
			wantPeriod := map[string]int64{cpuType: int64(w1.Period), offCPUType: 0, switchesType: 1}[typ]
			if typeOf(d, prof.PeriodType()) != period || prof.Period() != wantPeriod {
				t.Errorf("pid %d %s: period %d %s, want %d %s", pid, typ, prof.Period(), typeOf(d, prof.PeriodType()), wantPeriod, period)
			}
			if prof.Time().AsTime() != w1.Start.UTC() || prof.DurationNano() != uint64(w2.End.Sub(w1.Start)) {
				t.Errorf("pid %d %s: time %v for %d ns, want the windows'", pid, typ, prof.Time(), prof.DurationNano())
			}
			if prof.ProfileID().IsEmpty() || ids[prof.ProfileID()] {
				t.Errorf("pid %d %s: profile id %v empty or not unique", pid, typ, prof.ProfileID())
			}
			ids[prof.ProfileID()] = true
			if stacks[typ] == nil {
				stacks[typ] = map[int32]bool{}
			}
			for _, s := range prof.Samples().All() {
				stacks[typ][s.StackIndex()] = true
				if idx := s.AttributeIndices(); idx.Len() == 3 {
					gotReasons[d.AttributeTable().At(int(idx.At(2))).Value().Str()] = true
				}
			}
		}
		if !slices.Equal(types, wantTypes) {
			t.Errorf("pid %d: profiles %v, want %v", pid, types, wantTypes)
			continue
		}
		if hasOffCPU[pid] { // sample i of one off-CPU profile is sample i of the other
			nanos, switches := profiles.At(len(types)-2).Samples(), profiles.At(len(types)-1).Samples()
			for i := range nanos.Len() {
				if i >= switches.Len() || nanos.At(i).StackIndex() != switches.At(i).StackIndex() ||
					!nanos.At(i).AttributeIndices().Equal(switches.At(i).AttributeIndices()) {
					t.Fatalf("pid %d: off-CPU sample %d differs between the two off-CPU profiles", pid, i)
				}
			}
			if nanos.Len() != switches.Len() {
				t.Errorf("pid %d: %d and %d samples in the off-CPU profiles", pid, nanos.Len(), switches.Len())
			}
		}
	}
	if !maps.Equal(gotReasons, wantReasons) {
		t.Errorf("reasons %v, want %v", gotReasons, wantReasons)
	}
	shared := 0 // stacks of CPU and off-CPU samples both: one entry for both
	for s := range stacks[offCPUType] {
		if stacks[cpuType][s] {
			shared++
		}
	}
	if shared == 0 {
		t.Error("no stack entry serves both CPU and off-CPU samples")
	}
}

// A window without off-CPU samples gives the request it gave before there
// were any: one CPU profile a process, and nothing of the off-CPU profiles
// in the dictionary.
func TestConvertWithoutOffCPU(t *testing.T) {
	windows := []*pipeline.Window{oddWindow(12), synthWindow(5, 50, 6, 12)}
	windows[1].OffCPU = []pipeline.Sample{} // empty, not nil
	pd := convert(t, NewConverter("test"), windows)
	d := pd.Dictionary()
	for _, rp := range pd.ResourceProfiles().All() {
		profiles := rp.ScopeProfiles().At(0).Profiles()
		if profiles.Len() != 1 || typeOf(d, profiles.At(0).SampleType()) != cpuType {
			t.Fatalf("%d profiles in a process's scope, want its CPU profile alone", profiles.Len())
		}
	}
	for _, s := range d.StringTable().All() {
		if s == "off_cpu" || s == "context_switch" || s == attrOffCPUReason {
			t.Errorf("%q in the dictionary of a request without off-CPU samples", s)
		}
	}
	if got, want := gotSamples(t, pd), wantSamples(windows); !maps.Equal(got, want) {
		t.Errorf("samples differ from the windows'")
	}
}
