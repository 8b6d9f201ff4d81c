package otlp

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pprofile"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/cgscope/cgscope/exporter/queue"
	"github.com/cgscope/cgscope/internal/attribution"
	"github.com/cgscope/cgscope/internal/pipeline"
	"github.com/cgscope/cgscope/symbolizer"
)

// decode is a request as a receiver sees it: decoded by pdata.
func decode(tb testing.TB, body []byte) pprofile.Profiles {
	tb.Helper()
	pd, err := (&pprofile.ProtoUnmarshaler{}).UnmarshalProfiles(body)
	if err != nil {
		tb.Fatalf("pdata cannot decode the request: %v", err)
	}
	return pd
}

// convert is c's request for windows decoded by pdata; empty when the
// windows hold no samples.
func convert(tb testing.TB, c *Converter, windows []*pipeline.Window) pprofile.Profiles {
	tb.Helper()
	body, err := c.Encode(windows)
	if err != nil {
		tb.Fatal(err)
	}
	if body == nil {
		return pprofile.NewProfiles()
	}
	return decode(tb, body)
}

// oddWindow has what synthWindow lacks: kernel frames with and without a
// name, frames in no mapping and without a function, a Go build ID, a
// thread renamed, a thread id reused by another process, samples without
// frames, and processes in containers.
func oddWindow(seed uint64) *pipeline.Window {
	w := synthWindow(5, 60, 4, seed)
	goBin := &symbolizer.Mapping{Path: "/usr/local/bin/app (deleted)", BuildID: fmt.Sprintf("%x", "aaaa/bbbb/cccc/dddd-go-build-id-that-is-long")}
	pod := &attribution.Workload{ContainerID: strings.Repeat("cd", 32), PodUID: "01234567-89ab-cdef-0123-456789abcdef",
		Namespace: "shop", Pod: "cart-7d9f", Container: "app"}
	for i := range w.Samples {
		s := &w.Samples[i]
		switch i % 5 {
		case 0:
			s.Frames = append([]symbolizer.Frame{
				{Address: 0xffffffff81000000 + uint64(i), ObjAddress: 0xffffffff81000000 + uint64(i), Function: "do_syscall_64", Kernel: true},
				{Address: 0xffffffff82000000 + uint64(i), ObjAddress: 0xffffffff82000000 + uint64(i), Kernel: true},
			}, s.Frames...)
			s.Frames = append(s.Frames, symbolizer.Frame{Address: 0x700 + uint64(i), ObjAddress: 0x700 + uint64(i)})
		case 1:
			s.Frames = append(s.Frames, symbolizer.Frame{ObjAddress: 0x4000 + uint64(i), Mapping: goBin},
				symbolizer.Frame{ObjAddress: 0x5000, Function: "main.main", File: "/src/main.go", Line: 12, Mapping: goBin})
			s.Cgroup, s.Workload = "/kubepods/burstable/pod"+pod.PodUID+"/"+pod.ContainerID, pod
		case 2:
			s.Frames = nil
			s.Comm = "renamed"
		case 3:
			s.Frames = append(s.Frames, symbolizer.Frame{ObjAddress: 1 << 45, Function: "far", Mapping: goBin}) // beyond userAddrBits
			s.TID = 1000                                                                                        // the tid of process 1000's thread
		case 4: // calls inlined at an address: one, and so many that the location outgrows a one-byte length
			for j, depth := range []int{1, 20} {
				var calls []symbolizer.InlinedCall
				for k := range depth {
					calls = append(calls, symbolizer.InlinedCall{Function: fmt.Sprintf("main.inlined%d_%d", j, k), File: "/src/inl.go", Line: 100*j + k + 1})
				}
				s.Frames = append(s.Frames, symbolizer.Frame{ObjAddress: 0x9000 + uint64(j), Function: "main.outer", File: "/src/main.go",
					Line: 40 + j, Mapping: goBin, Inlined: calls})
			}
		}
	}
	return w
}

// A request pdata decodes and encodes again is the same bytes: what
// Encode writes is what pdata's marshaler writes for the same request.
func TestEncodeAsPdata(t *testing.T) {
	c := NewConverter("test")
	c.HostName = "host1"
	for i, windows := range [][]*pipeline.Window{
		{synthWindow(3, 30, 5, 1)},
		{oddWindow(2)},
		{synthWindow(50, 2000, 16, 8), oddWindow(3)},
		{{Start: time.Unix(1, 0), End: time.Unix(2, 0), Samples: []pipeline.Sample{{PID: 1, TID: 1, Count: 1}}}},
		{addOffCPU(synthWindow(3, 30, 5, 4), 40, 4)},
		{addOffCPU(oddWindow(5), 100, 5), synthWindow(20, 200, 8, 6)},
		{{Start: time.Unix(1, 0), End: time.Unix(2, 0), OffCPU: []pipeline.Sample{{PID: 1, TID: 1, Count: 1, OffCPU: 5, Reason: "io_wait"}}}},
	} {
		body, err := c.Encode(windows)
		if err != nil {
			t.Fatal(err)
		}
		again, err := (&pprofile.ProtoMarshaler{}).MarshalProfiles(decode(t, body))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(body, again) {
			n := 0
			for n < min(len(body), len(again)) && body[n] == again[n] {
				n++
			}
			t.Errorf("request %d: %d bytes, pdata writes %d; first difference at byte %d", i, len(body), len(again), n)
		}
	}
}

// appendIndices writes what protowire writes, for indices of every size.
func TestAppendIndices(t *testing.T) {
	vals := []int32{0, 1, 127, 128, 255, 16383, 16384, 1<<21 - 1, 1 << 21, 1<<28 - 1, 1 << 28, 1<<31 - 1, -1, -1 << 31}
	r := rand.New(rand.NewPCG(1, 1))
	for range 10000 {
		vals = append(vals, int32(r.Uint32()>>r.IntN(32)))
	}
	var want []byte
	for _, v := range vals {
		want = protowire.AppendVarint(want, uint64(v))
	}
	if got := appendIndices([]byte{}, vals); !bytes.Equal(got, want) {
		t.Errorf("appendIndices differs from protowire.AppendVarint")
	}
	for _, v := range vals[:14] {
		if got, want := appendIndex(nil, v), protowire.AppendVarint(nil, uint64(v)); !bytes.Equal(got, want) {
			t.Errorf("%d: % x, want % x", v, got, want)
		}
	}
}

// sampleKey is a sample as cgscope sees it: a thread of a process, its
// name, and its stack, leaf first, described frame by frame (frameText).
type sampleKey struct {
	pid, tid uint32
	thread   string
	stack    string
	reason   string // an off-CPU sample's; "" for CPU samples
}

// The profile types of a request, "type/unit".
const (
	cpuType      = "samples/count"
	offCPUType   = "off_cpu/nanoseconds"
	switchesType = "context_switch/count"
)

// byType are a request's samples by profile type.
type byType map[string]map[sampleKey]int64

// add counts v more for k in profile type typ.
func (b byType) add(typ string, k sampleKey, v int64) {
	if b[typ] == nil {
		b[typ] = map[sampleKey]int64{}
	}
	b[typ][k] += v
}

// equalByType reports whether a and b carry the same samples (a type
// absent from one and without samples in the other is no difference).
func equalByType(a, b byType) bool {
	for typ := range a {
		if !maps.Equal(a[typ], b[typ]) {
			return false
		}
	}
	for typ := range b {
		if !maps.Equal(a[typ], b[typ]) {
			return false
		}
	}
	return true
}

// frameText describes a frame by what the request says of it.
func frameText(mapping, buildID string, addr uint64, fn, file string, line int64, kernel bool) string {
	if fn == "" {
		file, line = "", 0
	}
	return fmt.Sprintf("%s[%s] %#x %s %s:%d kernel=%v;", mapping, buildID, addr, fn, file, line, kernel)
}

// wantSamples is what a request of windows must carry in its CPU
// profiles: counts by thread and stack (wantByType).
func wantSamples(windows []*pipeline.Window) map[sampleKey]int64 {
	return wantByType(windows)[cpuType]
}

// wantByType is what a request of windows must carry, by profile type:
// the CPU samples' counts by thread and stack, and the off-CPU samples'
// nanoseconds and switch-outs by thread, stack and reason. A thread is
// named as the converter first meets it: in its CPU samples, else in its
// off-CPU samples.
func wantByType(windows []*pipeline.Window) byType {
	names := map[[2]uint32]string{}
	for _, offCPU := range []bool{false, true} {
		for _, w := range windows {
			samples := w.Samples
			if offCPU {
				samples = w.OffCPU
			}
			for _, s := range samples {
				if _, ok := names[[2]uint32{s.PID, s.TID}]; !ok {
					names[[2]uint32{s.PID, s.TID}] = s.Comm
				}
			}
		}
	}
	key := func(s *pipeline.Sample, reason string) sampleKey {
		return sampleKey{s.PID, s.TID, names[[2]uint32{s.PID, s.TID}], stackText(s.Frames), reason}
	}
	want := byType{}
	for _, w := range windows {
		for i := range w.Samples {
			s := &w.Samples[i]
			want.add(cpuType, key(s, ""), int64(s.Count))
		}
		for i := range w.OffCPU {
			s := &w.OffCPU[i]
			want.add(offCPUType, key(s, s.Reason), int64(s.OffCPU))
			want.add(switchesType, key(s, s.Reason), int64(s.Count))
		}
	}
	return want
}

// stackText describes a leaf-first stack frame by frame (frameText), as
// a request says it.
func stackText(frames []symbolizer.Frame) string {
	var stack strings.Builder
	for _, f := range frames {
		mapping, buildID := "", ""
		switch {
		case f.Kernel:
			mapping = kernelMappingName
		case f.Mapping != nil:
			mapping = f.Mapping.FilePath()
			if k, v := buildIDAttr(f.Mapping.BuildID); k != "" {
				buildID = k + "=" + v
			}
		}
		for _, c := range f.Inlined { // a line each, innermost first
			stack.WriteString(frameText(mapping, buildID, f.ObjAddress, c.Function, c.File, int64(c.Line), f.Kernel))
		}
		stack.WriteString(frameText(mapping, buildID, f.ObjAddress, f.Function, f.File, int64(f.Line), f.Kernel))
	}
	return stack.String()
}

// gotSamples reads the samples of a decoded request's CPU profiles back
// into cgscope's terms (gotByType).
func gotSamples(t *testing.T, pd pprofile.Profiles) map[sampleKey]int64 {
	return gotByType(t, pd)[cpuType]
}

// gotByType reads the samples of a decoded request back into cgscope's
// terms, by profile type, checking every index it follows, that a process
// has one scope and at most one profile of a type, and that no thread has
// two samples of one stack (and reason) in a profile.
func gotByType(t *testing.T, pd pprofile.Profiles) byType {
	t.Helper()
	d := pd.Dictionary()
	str := func(i int32) string {
		if i < 0 || int(i) >= d.StringTable().Len() {
			t.Fatalf("string index %d out of range", i)
		}
		return d.StringTable().At(int(i))
	}
	attr := func(i int32) (string, pcommon.Value) {
		if i <= 0 || int(i) >= d.AttributeTable().Len() {
			t.Fatalf("attribute index %d out of range", i)
		}
		a := d.AttributeTable().At(int(i))
		return str(a.KeyStrindex()), a.Value()
	}
	frame := func(li int32) string {
		if li <= 0 || int(li) >= d.LocationTable().Len() {
			t.Fatalf("location index %d out of range", li)
		}
		l := d.LocationTable().At(int(li))
		if l.MappingIndex() < 0 || int(l.MappingIndex()) >= d.MappingTable().Len() {
			t.Fatalf("mapping index %d out of range", l.MappingIndex())
		}
		m := d.MappingTable().At(int(l.MappingIndex()))
		buildID := ""
		for _, ai := range m.AttributeIndices().AsRaw() {
			k, v := attr(ai)
			buildID = k + "=" + v.Str()
		}
		kernel := false
		for _, ai := range l.AttributeIndices().AsRaw() {
			k, v := attr(ai)
			kernel = kernel || k == attrFrameType && v.Str() == "kernel"
		}
		if l.Lines().Len() == 0 {
			return frameText(str(m.FilenameStrindex()), buildID, l.Address(), "", "", 0, kernel)
		}
		var text strings.Builder // a frame per line: inlined calls first
		for i := range l.Lines().Len() {
			ln := l.Lines().At(i)
			if ln.FunctionIndex() <= 0 || int(ln.FunctionIndex()) >= d.FunctionTable().Len() {
				t.Fatalf("function index %d out of range", ln.FunctionIndex())
			}
			f := d.FunctionTable().At(int(ln.FunctionIndex()))
			if f.SystemNameStrindex() != f.NameStrindex() {
				t.Errorf("function %s: system name %s", str(f.NameStrindex()), str(f.SystemNameStrindex()))
			}
			text.WriteString(frameText(str(m.FilenameStrindex()), buildID, l.Address(), str(f.NameStrindex()), str(f.FilenameStrindex()), ln.Line(), kernel))
		}
		return text.String()
	}
	got := byType{}
	for i := 0; i < pd.ResourceProfiles().Len(); i++ {
		rp := pd.ResourceProfiles().At(i)
		pid, _ := rp.Resource().Attributes().Get(attrPID)
		if rp.ScopeProfiles().Len() != 1 {
			t.Fatalf("pid %d: %d scopes, want 1", pid.Int(), rp.ScopeProfiles().Len())
		}
		profiles := rp.ScopeProfiles().At(0).Profiles()
		types := map[string]bool{}
		for p := 0; p < profiles.Len(); p++ {
			st := profiles.At(p).SampleType()
			typ := str(st.TypeStrindex()) + "/" + str(st.UnitStrindex())
			if types[typ] {
				t.Errorf("pid %d: two %s profiles", pid.Int(), typ)
			}
			types[typ] = true
			samples := profiles.At(p).Samples()
			seen := map[sampleKey]bool{}
			for j := 0; j < samples.Len(); j++ {
				s := samples.At(j)
				if n := s.AttributeIndices().Len(); s.Values().Len() != 1 || n < 2 || n > 3 {
					t.Fatalf("pid %d %s sample %d: %d values, %d attributes", pid.Int(), typ, j, s.Values().Len(), n)
				}
				idKey, id := attr(s.AttributeIndices().At(0))
				nameKey, name := attr(s.AttributeIndices().At(1))
				if idKey != attrThreadID || nameKey != attrThreadName {
					t.Fatalf("sample attributes %s, %s", idKey, nameKey)
				}
				reason := ""
				if s.AttributeIndices().Len() == 3 {
					key, v := attr(s.AttributeIndices().At(2))
					if key != attrOffCPUReason || v.Str() == "" {
						t.Fatalf("pid %d %s sample %d: third attribute %s=%q", pid.Int(), typ, j, key, v.Str())
					}
					reason = v.Str()
				}
				if s.StackIndex() < 0 || int(s.StackIndex()) >= d.StackTable().Len() {
					t.Fatalf("stack index %d out of range", s.StackIndex())
				}
				if k := (sampleKey{tid: uint32(id.Int()), stack: fmt.Sprint(s.StackIndex()), reason: reason}); seen[k] {
					t.Errorf("pid %d %s thread %d: stack %d in two samples", pid.Int(), typ, id.Int(), s.StackIndex())
				} else {
					seen[k] = true
				}
				var stack strings.Builder
				for _, li := range d.StackTable().At(int(s.StackIndex())).LocationIndices().AsRaw() {
					stack.WriteString(frame(li))
				}
				got.add(typ, sampleKey{uint32(pid.Int()), uint32(id.Int()), name.Str(), stack.String(), reason}, s.Values().At(0))
			}
		}
	}
	return got
}

// checkDictionary checks the zero entry of every table, and that every
// index of every entry is in range.
func checkDictionary(t *testing.T, d pprofile.ProfilesDictionary) {
	t.Helper()
	nStr, nAttr := int32(d.StringTable().Len()), int32(d.AttributeTable().Len())
	inRange := func(what string, i, n int32) {
		if i < 0 || i >= n {
			t.Errorf("%s index %d out of range (%d)", what, i, n)
		}
	}
	if d.StringTable().Len() == 0 || d.StringTable().At(0) != "" {
		t.Error("string table without its zero entry")
	}
	if d.MappingTable().Len() == 0 || !d.MappingTable().At(0).Equal(pprofile.NewMapping()) ||
		d.LocationTable().Len() == 0 || !d.LocationTable().At(0).Equal(pprofile.NewLocation()) ||
		d.FunctionTable().Len() == 0 || !d.FunctionTable().At(0).Equal(pprofile.NewFunction()) ||
		d.StackTable().Len() == 0 || !d.StackTable().At(0).Equal(pprofile.NewStack()) ||
		d.LinkTable().Len() != 1 || !d.LinkTable().At(0).Equal(pprofile.NewLink()) ||
		nAttr == 0 || !d.AttributeTable().At(0).Equal(pprofile.NewKeyValueAndUnit()) {
		t.Error("a dictionary table without its zero entry (an empty message) first")
	}
	for i := 0; i < d.MappingTable().Len(); i++ {
		m := d.MappingTable().At(i)
		inRange("mapping filename", m.FilenameStrindex(), nStr)
		for _, a := range m.AttributeIndices().AsRaw() {
			inRange("mapping attribute", a, nAttr)
		}
	}
	for i := 0; i < d.LocationTable().Len(); i++ {
		l := d.LocationTable().At(i)
		inRange("location mapping", l.MappingIndex(), int32(d.MappingTable().Len()))
		for _, a := range l.AttributeIndices().AsRaw() {
			inRange("location attribute", a, nAttr)
		}
		for j := 0; j < l.Lines().Len(); j++ {
			inRange("line function", l.Lines().At(j).FunctionIndex(), int32(d.FunctionTable().Len()))
		}
	}
	for i := 0; i < d.FunctionTable().Len(); i++ {
		f := d.FunctionTable().At(i)
		inRange("function name", f.NameStrindex(), nStr)
		inRange("function system name", f.SystemNameStrindex(), nStr)
		inRange("function file", f.FilenameStrindex(), nStr)
	}
	for i := 0; i < d.StackTable().Len(); i++ {
		for _, l := range d.StackTable().At(i).LocationIndices().AsRaw() {
			inRange("stack location", l, int32(d.LocationTable().Len()))
		}
	}
	for i := 0; i < d.AttributeTable().Len(); i++ {
		inRange("attribute key", d.AttributeTable().At(i).KeyStrindex(), nStr)
	}
}

// randomWindows makes one to three windows of random shape: stacks that
// recur, threads in several windows, thread ids shared by processes,
// renamed threads, objects mapped by several Mapping values, with and
// without build IDs, kernel frames, frames without a function or a
// mapping, addresses beyond userAddrBits, stacks deeper than a length
// byte holds, and counts up to 2^40; and, in about two windows of three,
// off-CPU samples of the same stacks and threads, of processes without
// CPU samples too, in every reason and none.
func randomWindows(r *rand.Rand) []*pipeline.Window {
	var objects [][]*symbolizer.Mapping // each object's Mapping values
	for o := range 1 + r.IntN(6) {
		path, buildID := fmt.Sprintf("/usr/lib/lib%d.so", o), ""
		switch r.IntN(3) {
		case 1:
			buildID = fmt.Sprintf("%040x", r.Uint64())
		case 2:
			buildID = fmt.Sprintf("%x", fmt.Sprintf("go-action-%d/go-content-%d-with-a-long-id", o, r.Uint64()))
		}
		var ms []*symbolizer.Mapping
		for range 1 + r.IntN(3) {
			m := &symbolizer.Mapping{Path: path, BuildID: buildID}
			if r.IntN(4) == 0 {
				m.Path += " (deleted)"
			}
			ms = append(ms, m)
		}
		objects = append(objects, ms)
	}
	// A frame's name, file and line follow from where it is, as the
	// symbolizer's do; some names are in several files.
	named := func(f symbolizer.Frame, where string) symbolizer.Frame {
		h := fmt.Sprintf("%s%x", where, f.ObjAddress)
		switch {
		case f.ObjAddress%7 == 0:
			f.Function, f.File, f.Line = "init", fmt.Sprintf("/src/%d.go", f.ObjAddress%3), 1
		case len(h)%5 != 0:
			f.Function, f.File, f.Line = "fn"+h, fmt.Sprintf("/src/%d.go", len(h)%3), len(h)%4*100
		}
		if f.Function != "" && f.ObjAddress%11 == 0 { // calls inlined there, as many as the address says
			for k := range 1 + int(f.ObjAddress/16%3) {
				f.Inlined = append(f.Inlined, symbolizer.InlinedCall{Function: fmt.Sprintf("inl%d_%s", k, h), File: "/src/inl.go", Line: k})
			}
		}
		return f
	}
	frame := func() symbolizer.Frame {
		addr := uint64(0x1000 + 16*r.IntN(300))
		switch k := r.IntN(20); {
		case k < 2:
			f := symbolizer.Frame{Address: 0xffffffff81000000 + addr, ObjAddress: 0xffffffff81000000 + addr, Kernel: true}
			return named(f, "kernel")
		case k < 3:
			return named(symbolizer.Frame{Address: addr, ObjAddress: addr}, "")
		default:
			ms := objects[r.IntN(len(objects))]
			m := ms[r.IntN(len(ms))]
			if k == 3 {
				addr += 1 << 44
			}
			return named(symbolizer.Frame{Address: addr + 0x7f0000000000, ObjAddress: addr, Mapping: m}, m.FilePath()+m.BuildID)
		}
	}
	var stacks [][]symbolizer.Frame
	for range 1 + r.IntN(60) {
		st := make([]symbolizer.Frame, r.IntN(80))
		for i := range st {
			st[i] = frame()
		}
		stacks = append(stacks, st)
	}
	procs := 1 + r.IntN(15)
	var windows []*pipeline.Window
	start := time.Unix(1_700_000_000+r.Int64N(1000), 0)
	for range 1 + r.IntN(3) {
		w := &pipeline.Window{Start: start, End: start.Add(time.Second), Period: time.Second / 99}
		start = w.End
		for range r.IntN(200) {
			pid := uint32(100 + r.IntN(procs))
			s := pipeline.Sample{PID: pid, TID: pid + uint32(r.IntN(3)), Comm: fmt.Sprintf("t%d", r.IntN(4)),
				Frames: stacks[r.IntN(len(stacks))], Count: uint64(1 + r.IntN(1000))}
			if r.IntN(50) == 0 {
				s.Count = 1 << 40
			}
			if r.IntN(10) == 0 {
				s.Cgroup = "/system.slice/docker-" + strings.Repeat("ab", 32) + ".scope"
			}
			w.Samples = append(w.Samples, s)
		}
		reasons := []string{"runnable", "sleeping", "io_wait", "uninterruptible", "other", ""}
		for range r.IntN(3) * r.IntN(60) {
			pid := uint32(100 + r.IntN(procs+2))
			s := pipeline.Sample{PID: pid, TID: pid + uint32(r.IntN(3)), Comm: fmt.Sprintf("t%d", r.IntN(4)),
				Frames: stacks[r.IntN(len(stacks))], Count: uint64(1 + r.IntN(1000)),
				OffCPU: time.Duration(r.Int64N(1 << 40)), Reason: reasons[r.IntN(len(reasons))]}
			w.OffCPU = append(w.OffCPU, s)
		}
		windows = append(windows, w)
	}
	return windows
}

// Random windows through one converter, reused from request to request
// as the daemon does: pdata decodes every request, every index is in
// range, and the samples of each profile type, thread, stack and reason,
// and each process's totals, are the windows'.
func TestEncodeRandomWindows(t *testing.T) {
	c := NewConverter("test")
	for seed := range 100 {
		r := rand.New(rand.NewPCG(uint64(seed), 3))
		windows := randomWindows(r)
		body, err := c.Encode(windows)
		if err != nil {
			t.Fatal(err)
		}
		want := wantByType(windows)
		if len(want) == 0 {
			if body != nil {
				t.Errorf("seed %d: no samples, yet a request of %d bytes", seed, len(body))
			}
			continue
		}
		pd := decode(t, body)
		checkDictionary(t, pd.Dictionary())
		if got := gotByType(t, pd); !equalByType(got, want) {
			t.Fatalf("seed %d: samples differ from the windows':\n got %v\nwant %v", seed, got, want)
		}
		type typePID struct {
			typ string
			pid int64
		}
		wantByPID := map[typePID]int64{}
		for typ, samples := range want {
			for k, n := range samples {
				wantByPID[typePID{typ, int64(k.pid)}] += n
			}
		}
		gotByPID := map[typePID]int64{}
		strs := pd.Dictionary().StringTable()
		for i := 0; i < pd.ResourceProfiles().Len(); i++ {
			rp := pd.ResourceProfiles().At(i)
			pid, _ := rp.Resource().Attributes().Get(attrPID)
			for _, prof := range rp.ScopeProfiles().At(0).Profiles().All() {
				st := prof.SampleType()
				k := typePID{strs.At(int(st.TypeStrindex())) + "/" + strs.At(int(st.UnitStrindex())), pid.Int()}
				for _, s := range prof.Samples().All() {
					gotByPID[k] += s.Values().At(0)
				}
			}
		}
		if !maps.Equal(gotByPID, wantByPID) {
			t.Fatalf("seed %d: samples by process %v, want %v", seed, gotByPID, wantByPID)
		}
		c.Release(body)
	}
}

// A request the gRPC or gzip HTTP sender sent is given back for the next
// one, and the receiver decodes it all the same; one that failed, or was
// sent over HTTP without gzip (net/http may still read it), is not.
func TestSendersRelease(t *testing.T) {
	ctx := context.Background()
	w := []*pipeline.Window{synthWindow(3, 30, 5, 1)}
	grpcOK := startReceiver(t, nil)
	grpcRejecting := startReceiver(t, status.Error(codes.InvalidArgument, "no"))
	var httpBodies atomic.Int32
	httpOK := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body := io.Reader(r.Body)
		if r.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(r.Body)
			if err != nil {
				http.Error(rw, err.Error(), http.StatusBadRequest)
				return
			}
			body = zr
		}
		raw, err := io.ReadAll(body)
		if err == nil {
			_, err = (&pprofile.ProtoUnmarshaler{}).UnmarshalProfiles(raw)
		}
		if err != nil {
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		httpBodies.Add(1)
	}))
	defer httpOK.Close()
	dial := func(addr string) *grpc.ClientConn {
		conn, err := dialGRPC(&Transport{target: endpoint{hostport: addr}, Compression: CompressionGzip})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	httpSender := func(compression string, release func([]byte)) queue.SendFunc[[]byte] {
		return httpProfilesSender(newHTTPClient(&Transport{Compression: compression, Timeout: 5 * time.Second}), httpOK.URL, release)
	}
	for _, c := range []struct {
		name           string
		sender         func(release func([]byte)) queue.SendFunc[[]byte]
		sent, released bool
	}{
		{"gRPC", func(r func([]byte)) queue.SendFunc[[]byte] { return grpcProfilesSender(dial(grpcOK.addr), r) }, true, true},
		{"gRPC rejected", func(r func([]byte)) queue.SendFunc[[]byte] { return grpcProfilesSender(dial(grpcRejecting.addr), r) }, false, false},
		{"HTTP gzip", func(r func([]byte)) queue.SendFunc[[]byte] { return httpSender(CompressionGzip, r) }, true, true},
		{"HTTP plain", func(r func([]byte)) queue.SendFunc[[]byte] { return httpSender(CompressionNone, r) }, true, false},
	} {
		conv := NewConverter("test")
		send := c.sender(conv.Release)
		body := mustEncode(t, conv, w)
		if err := send(ctx, body); (err == nil) != c.sent {
			t.Errorf("%s: send: %v", c.name, err)
		}
		next := mustEncode(t, conv, w)
		if reused := &next[0] == &body[0]; reused != c.released {
			t.Errorf("%s: the next request written into the last one's memory: %v, want %v", c.name, reused, c.released)
		}
	}
	if grpcOK.calls.Load() != 1 || httpBodies.Load() != 2 {
		t.Errorf("received %d gRPC and %d HTTP requests, want 1 and 2", grpcOK.calls.Load(), httpBodies.Load())
	}
}
