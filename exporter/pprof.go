package exporter

import (
	"encoding/binary"
	"strings"
	"time"

	"github.com/google/pprof/profile"

	"github.com/cgscope/cgscope/internal/pipeline"
	"github.com/cgscope/cgscope/symbolizer"
)

// Filter selects the samples that go into a profile. Zero values match all.
type Filter struct {
	PID          uint32 // 0 = any process
	CgroupPrefix string // cgroup2 path prefix, "" = any cgroup
	Workload     WorkloadFilter
}

// Match reports whether a sample passes the filter. A cgroup prefix matches
// whole path components: "/a" matches "/a" and "/a/b", not "/ab".
func (f Filter) Match(s *pipeline.Sample) bool {
	if f.PID != 0 && s.PID != f.PID {
		return false
	}
	return f.matchCgroup(s.Cgroup) && (f.Workload.IsZero() || f.Workload.match(labelsOfWorkload(s.Workload)))
}

// matchCgroup reports whether cg is the prefix's cgroup or below it.
func (f Filter) matchCgroup(cg string) bool {
	p := strings.TrimSuffix(f.CgroupPrefix, "/")
	return p == "" || cg == p || strings.HasPrefix(cg, p+"/")
}

// kernelMappingName is how perf and pprof name the kernel image.
const kernelMappingName = "[kernel.kallsyms]"

// profileBuilder interns mappings, functions and locations while samples are
// added, so a frame shared by many samples is stored once.
type profileBuilder struct {
	p         *profile.Profile
	mappings  map[mappingKey]*profile.Mapping
	functions map[functionKey]*profile.Function
	locations map[locationKey]*profile.Location
	samples   map[string]*profile.Sample
	key       []byte // scratch for sample keys
}

type mappingKey struct{ path, buildID string }
type functionKey struct{ name, file string }
type locationKey struct {
	mapping *profile.Mapping
	addr    uint64
	fn      string
}

// BuildProfile merges windows into one CPU profile in pprof conventions:
// sample types samples/count and cpu/nanoseconds, period from the sampling
// frequency, labels pid, tid, comm and cgroup on every sample, and
// container_id, pod_uid, namespace, pod and container where known.
func BuildProfile(windows []*pipeline.Window, f Filter) *profile.Profile {
	b := newProfileBuilder()
	for _, w := range windows {
		b.addWindow(w, f)
	}
	return b.finish()
}

func newProfileBuilder() *profileBuilder {
	return &profileBuilder{
		p: &profile.Profile{
			SampleType: []*profile.ValueType{
				{Type: "samples", Unit: "count"},
				{Type: "cpu", Unit: "nanoseconds"},
			},
			PeriodType:        &profile.ValueType{Type: "cpu", Unit: "nanoseconds"},
			DefaultSampleType: "cpu",
		},
		mappings:  map[mappingKey]*profile.Mapping{},
		functions: map[functionKey]*profile.Function{},
		locations: map[locationKey]*profile.Location{},
		samples:   map[string]*profile.Sample{},
	}
}

func (b *profileBuilder) addWindow(w *pipeline.Window, f Filter) {
	b.extendTime(w)
	period := int64(w.Period)
	for i := range w.Samples {
		s := &w.Samples[i]
		if !f.Match(s) {
			continue
		}
		b.addSample(s, period)
	}
}

func (b *profileBuilder) extendTime(w *pipeline.Window) {
	if w.Period > 0 {
		b.p.Period = int64(w.Period)
	}
	start := w.Start.UnixNano()
	if b.p.TimeNanos == 0 || start < b.p.TimeNanos {
		b.p.TimeNanos = start
	}
	if end := w.End.UnixNano(); end-b.p.TimeNanos > b.p.DurationNanos {
		b.p.DurationNanos = end - b.p.TimeNanos
	}
}

func (b *profileBuilder) addSample(s *pipeline.Sample, period int64) {
	locs := make([]*profile.Location, len(s.Frames))
	for i := range s.Frames {
		locs[i] = b.location(&s.Frames[i])
	}
	b.addRow(sampleRow{pid: s.PID, tid: s.TID, comm: s.Comm, cgroup: s.Cgroup, workload: labelsOfWorkload(s.Workload),
		samples: int64(s.Count), nanos: int64(s.Count) * period}, locs)
}

// sampleRow is one sample's labels and values, however it was stored.
type sampleRow struct {
	pid, tid       uint32
	comm, cgroup   string
	workload       workloadLabels
	samples, nanos int64
}

// addRow adds a row's values to the sample with the same labels and
// locations, so the same stack from several windows becomes one sample. It
// returns the sample when the row created it, nil when it merged.
func (b *profileBuilder) addRow(r sampleRow, locs []*profile.Location) *profile.Sample {
	b.key = appendSampleKey(b.key[:0], &r, locs)
	if existing, ok := b.samples[string(b.key)]; ok {
		existing.Value[0] += r.samples
		existing.Value[1] += r.nanos
		return nil
	}
	ps := &profile.Sample{
		Location: locs,
		Value:    []int64{r.samples, r.nanos},
		Label:    map[string][]string{"comm": {r.comm}, "cgroup": {r.cgroup}},
		NumLabel: map[string][]int64{"pid": {int64(r.pid)}, "tid": {int64(r.tid)}},
	}
	r.workload.addTo(ps.Label)
	b.samples[string(b.key)] = ps
	b.p.Sample = append(b.p.Sample, ps)
	return ps
}

// appendSampleKey identifies a sample by its labels and location ids.
func appendSampleKey(key []byte, r *sampleRow, locs []*profile.Location) []byte {
	key = binary.AppendUvarint(key, uint64(r.pid))
	key = binary.AppendUvarint(key, uint64(r.tid))
	key = binary.AppendUvarint(key, uint64(len(r.comm)))
	key = append(key, r.comm...)
	key = binary.AppendUvarint(key, uint64(len(r.cgroup)))
	key = append(key, r.cgroup...)
	for _, v := range r.workload.values() {
		key = binary.AppendUvarint(key, uint64(len(v)))
		key = append(key, v...)
	}
	for _, l := range locs {
		key = binary.AppendUvarint(key, l.ID)
	}
	return key
}

func (b *profileBuilder) location(fr *symbolizer.Frame) *profile.Location {
	m := b.mapping(fr)
	key := locationKey{mapping: m, addr: fr.ObjAddress, fn: fr.Function}
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
func (b *profileBuilder) mapping(fr *symbolizer.Frame) *profile.Mapping {
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

func (b *profileBuilder) function(name, file string) *profile.Function {
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

func (b *profileBuilder) finish() *profile.Profile {
	if b.p.TimeNanos == 0 {
		b.p.TimeNanos = time.Now().UnixNano()
	}
	return b.p
}
