// Package pprof builds profiles in pprof's format (google/pprof's profile
// package), CPU or off-CPU (Kind), from symbolized pipeline windows or from
// the history's sums, and selects their samples: one Selector and one
// query-parameter parser serve the live capture, the history API, the web
// UI and `cgscope record`.
package pprof

import (
	"encoding/binary"
	"time"

	"github.com/google/pprof/profile"

	"github.com/cgscope/cgscope/internal/attribution"
	"github.com/cgscope/cgscope/internal/pipeline"
	"github.com/cgscope/cgscope/symbolizer"
)

// kernelMappingName is how perf and pprof name the kernel image.
const kernelMappingName = "[kernel.kallsyms]"

// Builder interns mappings, functions and locations while samples are
// added, so a frame shared by many samples is stored once.
type Builder struct {
	kind      Kind
	p         *profile.Profile
	mappings  map[mappingKey]*profile.Mapping
	functions map[functionKey]*profile.Function
	locations map[locationKey]*profile.Location
	samples   map[string]*profile.Sample
	key       []byte // scratch for sample keys
}

type mappingKey struct{ path, buildID string }
type functionKey struct{ name, file string }

// locationKey tells locations apart; an interpreted frame has no mapping
// nor address, only its function, file and line.
type locationKey struct {
	mapping  *profile.Mapping
	addr     uint64
	fn, file string
	line     int
}

// Build merges the samples of windows that sel selects into one profile of
// sel.Kind in pprof conventions: labels pid, tid, comm and cgroup on every
// sample, and container_id, pod_uid, namespace, pod and container where
// known. A CPU profile has sample types samples/count and cpu/nanoseconds,
// its period from the sampling frequency. An off-CPU profile has
// samples/count (times a thread left the CPU with the stack) and
// off_cpu/nanoseconds (time away), no period (each sample is weighted on
// its own), and the label off_cpu_reason.
func Build(windows []*pipeline.Window, sel Selector) *profile.Profile {
	b := NewBuilder(sel.Kind)
	for _, w := range windows {
		b.addWindow(w, &sel)
	}
	return b.finish()
}

// NewBuilder starts an empty profile of kind k, for samples summed
// elsewhere (the history's); Build is the way for windows.
func NewBuilder(k Kind) *Builder {
	vt := k.spec().valueType
	return &Builder{
		kind: k,
		p: &profile.Profile{
			SampleType:        []*profile.ValueType{{Type: "samples", Unit: "count"}, &vt},
			PeriodType:        &profile.ValueType{Type: vt.Type, Unit: vt.Unit},
			DefaultSampleType: vt.Type,
		},
		mappings:  map[mappingKey]*profile.Mapping{},
		functions: map[functionKey]*profile.Function{},
		locations: map[locationKey]*profile.Location{},
		samples:   map[string]*profile.Sample{},
	}
}

func (b *Builder) addWindow(w *pipeline.Window, sel *Selector) {
	b.extendTime(w)
	samples := b.kind.WindowSamples(w)
	for i := range samples {
		s := &samples[i]
		if !sel.Match(s) {
			continue
		}
		b.addSample(s, b.kind.nanos(s, w.Period))
	}
}

func (b *Builder) extendTime(w *pipeline.Window) {
	b.SetPeriod(w.Period)
	start := w.Start.UnixNano()
	if b.p.TimeNanos == 0 || start < b.p.TimeNanos {
		b.p.TimeNanos = start
	}
	if end := w.End.UnixNano(); end-b.p.TimeNanos > b.p.DurationNanos {
		b.p.DurationNanos = end - b.p.TimeNanos
	}
}

func (b *Builder) addSample(s *pipeline.Sample, nanos int64) {
	locs := make([]*profile.Location, len(s.Frames))
	for i := range s.Frames {
		locs[i] = b.Location(&s.Frames[i])
	}
	r := Row{PID: s.PID, TID: s.TID, Comm: s.Comm, Cgroup: s.Cgroup, Reason: s.Reason, Samples: int64(s.Count), Nanos: nanos}
	if s.Workload != nil {
		r.Workload = *s.Workload
	}
	b.AddRow(r, locs)
}

// Row is one sample's labels and values, however it was stored. Nanos is
// the time the sample stands for: on the CPU or off it, by the profile's
// kind.
type Row struct {
	PID, TID     uint32
	Comm, Cgroup string
	Workload     attribution.Workload
	// Reason is why an off-CPU sample's thread left the CPU ("" for CPU
	// samples): the label off_cpu_reason.
	Reason         string
	Samples, Nanos int64
}

// AddRow adds a row's values to the sample with the same labels and
// locations, so the same stack from several windows becomes one sample.
func (b *Builder) AddRow(r Row, locs []*profile.Location) {
	b.key = appendSampleKey(b.key[:0], &r, locs)
	if existing, ok := b.samples[string(b.key)]; ok {
		existing.Value[0] += r.Samples
		existing.Value[1] += r.Nanos
		return
	}
	ps := &profile.Sample{
		Location: locs,
		Value:    []int64{r.Samples, r.Nanos},
		Label:    map[string][]string{"comm": {r.Comm}, "cgroup": {r.Cgroup}},
		NumLabel: map[string][]int64{"pid": {int64(r.PID)}, "tid": {int64(r.TID)}},
	}
	for i, v := range r.Workload.LabelValues() {
		if v != "" {
			ps.Label[attribution.LabelNames[i]] = []string{v}
		}
	}
	if r.Reason != "" {
		ps.Label[ReasonLabel] = []string{r.Reason}
	}
	b.samples[string(b.key)] = ps
	b.p.Sample = append(b.p.Sample, ps)
}

// appendSampleKey identifies a sample by its labels and location ids.
func appendSampleKey(key []byte, r *Row, locs []*profile.Location) []byte {
	key = binary.AppendUvarint(key, uint64(r.PID))
	key = binary.AppendUvarint(key, uint64(r.TID))
	key = appendKeyString(key, r.Comm)
	key = appendKeyString(key, r.Cgroup)
	key = appendKeyString(key, r.Reason)
	for _, v := range r.Workload.LabelValues() {
		key = appendKeyString(key, v)
	}
	for _, l := range locs {
		key = binary.AppendUvarint(key, l.ID)
	}
	return key
}

// appendKeyString appends s length-prefixed, so that no two label
// values run into each other.
func appendKeyString(key []byte, s string) []byte {
	return append(binary.AppendUvarint(key, uint64(len(s))), s...)
}

// Location returns the profile's location of a frame, made on first use.
func (b *Builder) Location(fr *symbolizer.Frame) *profile.Location {
	m := b.mapping(fr)
	key := locationKey{mapping: m, addr: fr.ObjAddress, fn: fr.Function, file: fr.File, line: fr.Line}
	if l, ok := b.locations[key]; ok {
		return l
	}
	l := &profile.Location{
		ID:      uint64(len(b.p.Location) + 1),
		Mapping: m,
		Address: fr.ObjAddress,
	}
	if fr.Function != "" {
		// pprof's order: the calls inlined at the address first, innermost
		// first, and last the function they were inlined into.
		l.Line = make([]profile.Line, 0, len(fr.Inlined)+1)
		for _, c := range fr.Inlined {
			l.Line = append(l.Line, profile.Line{Function: b.function(c.Function, c.File), Line: int64(c.Line)})
		}
		l.Line = append(l.Line, profile.Line{Function: b.function(fr.Function, fr.File), Line: int64(fr.Line)})
		if m != nil {
			m.HasFunctions = true
			m.HasInlineFrames = m.HasInlineFrames || len(fr.Inlined) > 0
			m.HasFilenames = m.HasFilenames || fr.File != ""
			m.HasLineNumbers = m.HasLineNumbers || fr.Line != 0
		}
	}
	b.locations[key] = l
	b.p.Location = append(b.p.Location, l)
	return l
}

// mapping returns the pprof mapping of the object a frame belongs to. Frames
// carry addresses normalized to the object's own address space (ObjAddress),
// so one mapping per object serves every process that maps it.
func (b *Builder) mapping(fr *symbolizer.Frame) *profile.Mapping {
	var key mappingKey
	switch {
	case fr.Kernel:
		key = mappingKey{path: kernelMappingName}
	case fr.Mapping != nil:
		key = mappingKey{path: fr.Mapping.Path, buildID: fr.Mapping.BuildID}
	default:
		return nil // a synthetic frame, or an address in no mapping
	}
	if m, ok := b.mappings[key]; ok {
		return m
	}
	m := &profile.Mapping{
		ID:      uint64(len(b.p.Mapping) + 1),
		Start:   0,
		Limit:   ^uint64(0),
		File:    key.path,
		BuildID: key.buildID,
	}
	b.mappings[key] = m
	b.p.Mapping = append(b.p.Mapping, m)
	return m
}

func (b *Builder) function(name, file string) *profile.Function {
	key := functionKey{name: name, file: file}
	if f, ok := b.functions[key]; ok {
		return f
	}
	f := &profile.Function{
		ID:         uint64(len(b.p.Function) + 1),
		Name:       name,
		SystemName: name,
		Filename:   file,
	}
	b.functions[key] = f
	b.p.Function = append(b.p.Function, f)
	return f
}

func (b *Builder) finish() *profile.Profile {
	if b.p.TimeNanos == 0 {
		b.p.TimeNanos = time.Now().UnixNano()
	}
	return b.p
}

// SetPeriod sets the sampling period, what one sample stands for, in a
// kind that has one (CPU); zero, or an off-CPU profile, leaves it be.
func (b *Builder) SetPeriod(d time.Duration) {
	if d > 0 && b.kind.hasPeriod() {
		b.p.Period = int64(d)
	}
}

// Profile returns the profile built so far, covering [from, to).
func (b *Builder) Profile(from, to time.Time) *profile.Profile {
	b.p.TimeNanos = from.UnixNano()
	b.p.DurationNanos = to.Sub(from).Nanoseconds()
	return b.p
}
