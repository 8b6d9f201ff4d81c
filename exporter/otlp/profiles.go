package otlp

import (
	"cmp"
	"crypto/rand"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pprofile"

	"github.com/cgscope/cgscope/internal/attribution"
	"github.com/cgscope/cgscope/internal/pipeline"
)

// Attribute keys from the OpenTelemetry semantic conventions.
const (
	attrContainerID    = "container.id"
	attrPodUID         = "k8s.pod.uid"
	attrNamespace      = "k8s.namespace.name"
	attrPodName        = "k8s.pod.name"
	attrContainerName  = "k8s.container.name"
	attrPID            = "process.pid"
	attrExeName        = "process.executable.name"
	attrExePath        = "process.executable.path"
	attrHostName       = "host.name"
	attrThreadID       = "thread.id"
	attrThreadName     = "thread.name"
	attrBuildIDGNU     = "process.executable.build_id.gnu"
	attrBuildIDGo      = "process.executable.build_id.go"
	attrFrameType      = "profile.frame.type"
	kernelMappingName  = "[kernel.kallsyms]"
	scopeName          = "github.com/cgscope/cgscope"
	maxExeCacheEntries = 65536
)

// Converter turns pipeline windows into OTLP profiles requests. Between
// calls it keeps a cache of executable paths and its interning tables
// (emptied, their capacity kept within bounds: the next interval is about
// as large as the last); it is not safe for concurrent use.
type Converter struct {
	HostName string
	Version  string
	exes     map[uint32]string // pid → /proc/PID/exe target ("" when unreadable)
	procRoot string
	paths    *attribution.Resolver // ids from cgroup paths, for samples without a workload

	dict  dictBuilder
	agg   aggregator
	spare pprofile.Profiles // the last request Encode made, to be written over; zero when none
}

// NewConverter returns a converter that names this host.
func NewConverter(version string) *Converter {
	return &Converter{HostName: HostName(), Version: version, exes: map[uint32]string{}, procRoot: "/proc",
		paths: attribution.PathOnly()}
}

// HostName is the host.name cgscope reports: $NODE_NAME when set (the Helm
// chart sets it from the downward API, because in a pod the hostname is the
// pod's name), else the hostname.
func HostName() string {
	if n := os.Getenv("NODE_NAME"); n != "" {
		return n
	}
	h, _ := os.Hostname()
	return h
}

// Convert builds one request from windows: one shared dictionary, and one
// ResourceProfiles per process (in pid order) with a single CPU profile
// (sample type samples/count, period type cpu/nanoseconds). Identical
// (thread, stack) samples of several windows are merged. The request is
// the caller's; Encode is the cheaper way to get its protobuf.
func (c *Converter) Convert(windows []*pipeline.Window) pprofile.Profiles {
	pd := pprofile.NewProfiles()
	c.convert(pd, windows)
	return pd
}

// Encode is Convert's request in protobuf (an ExportProfilesServiceRequest,
// as pdata writes it), or nil when the windows hold no samples. The
// request's pdata objects are kept and written over by the next call
// (reuse.go): most of what a request allocates is not allocated again.
func (c *Converter) Encode(windows []*pipeline.Window) ([]byte, error) {
	pd := c.spare
	if pd == (pprofile.Profiles{}) {
		pd = pprofile.NewProfiles()
	}
	c.spare = pprofile.Profiles{} // not reused if encoding fails midway
	c.convert(pd, windows)
	if pd.ResourceProfiles().Len() == 0 {
		c.spare = pd
		return nil, nil
	}
	body, err := encodeProfiles(pd)
	if err == nil && reusable(pd) {
		c.spare = pd
	}
	return body, err
}

// convert writes the request over pd, which is new or an earlier request.
func (c *Converter) convert(pd pprofile.Profiles, windows []*pipeline.Window) {
	n := 0
	for _, w := range windows {
		n += len(w.Samples)
	}
	b := &c.dict
	b.reset(pd.Dictionary(), n)
	a := &c.agg
	a.reset(n)
	for _, w := range windows {
		for i := range w.Samples {
			s := &w.Samples[i]
			stack, seen := b.stack(s.Frames)
			a.add(s, stack, seen)
		}
	}
	span := spanOf(windows)
	profileType := profileType{b.str("samples"), b.str("count"), b.str("cpu"), b.str("nanoseconds")}
	ids := make([]byte, 16*len(a.procs))
	rand.Read(ids) // unique per profile; one read for the whole request
	type cgroupKey struct {
		path     string
		workload *attribution.Workload
	}
	cgroupAttrs := map[cgroupKey][]keyValue{}
	rps := overwriteOf(pd.ResourceProfiles())
	pd.ResourceProfiles().EnsureCapacity(len(a.procs))
	for i, p := range a.byPID() {
		rp := rps.next()
		key := cgroupKey{p.cgroup, p.workload}
		attrs, ok := cgroupAttrs[key]
		if !ok {
			w := p.workload
			if w == nil && p.cgroup != "" { // windows not from a pipeline with a resolver
				w = c.paths.Lookup(p.cgroup)
			}
			attrs = cgroupAttributes(w)
			cgroupAttrs[key] = attrs
		}
		c.resourceAttributes(rp.Resource().Attributes(), p, attrs)
		sps := overwriteOf(rp.ScopeProfiles())
		sp := sps.next()
		sps.trim()
		sp.Scope().SetName(scopeName)
		sp.Scope().SetVersion(c.Version)
		profs := overwriteOf(sp.Profiles())
		prof := profs.next()
		profs.trim()
		profileType.set(prof, span)
		prof.SetProfileID(pprofile.ProfileID(ids[16*i : 16*i+16]))
		a.addSamples(prof.Samples(), p, b)
	}
	rps.trim()
	b.finish()
	c.pruneExes(a)
}

// timeSpan is what the windows of a request cover.
type timeSpan struct {
	start, end time.Time
	period     time.Duration
}

func spanOf(windows []*pipeline.Window) timeSpan {
	var s timeSpan
	for _, w := range windows {
		if s.start.IsZero() || w.Start.Before(s.start) {
			s.start = w.Start
		}
		if w.End.After(s.end) {
			s.end = w.End
		}
		if w.Period > 0 {
			s.period = w.Period
		}
	}
	return s
}

// profileType is the string indices every profile of a request shares.
type profileType struct{ samples, count, cpu, nanoseconds int32 }

func (t profileType) set(prof pprofile.Profile, s timeSpan) {
	prof.SampleType().SetTypeStrindex(t.samples)
	prof.SampleType().SetUnitStrindex(t.count)
	prof.PeriodType().SetTypeStrindex(t.cpu)
	prof.PeriodType().SetUnitStrindex(t.nanoseconds)
	prof.SetPeriod(int64(s.period))
	prof.SetTime(pcommon.NewTimestampFromTime(s.start))
	var d uint64
	if s.end.After(s.start) {
		d = uint64(s.end.Sub(s.start))
	}
	prof.SetDurationNano(d)
}

// aggregator merges a request's samples by (process, thread, stack) and
// groups them by process, keeping first-seen order within a process.
//
// Most stacks are sampled in one thread only, so a stack's first row is
// found by the stack's index (firstRow, a small array) and only the rows
// of further threads by hash (byThread): 5,000 stacks sampled once each
// fill no hash table at all.
type aggregator struct {
	procs     []procSamples
	procIndex indexTable // pid → procs
	rows      []threadStack
	firstRow  []int32          // stack index → its first row; -1 for none
	byThread  indexTable       // tid<<32 | stack → rows of a stack after its first
	reused    map[rowKey]int32 // rows whose (tid, stack) a row of another process holds: a tid reused within the request
	order     []int32          // rows grouped by process, in pid order (byPID)
}

// procSamples is one process of the request.
type procSamples struct {
	pid          uint32
	cgroup, comm string                // of the first sample seen
	workload     *attribution.Workload // of the first sample seen; nil outside containers
	rows         int                   // how many rows
	first        int                   // where its rows start in order
}

// threadStack is one sample of the request: a thread's stack and count.
type threadStack struct {
	pid, tid uint32
	proc     int32
	stack    int32
	comm     string
	count    int64
}

type rowKey struct {
	pid, tid uint32
	stack    int32
}

func (a *aggregator) reset(samples int) {
	a.procs = a.procs[:0]
	if cap(a.rows) > maxRetained {
		a.rows, a.order, a.firstRow = nil, nil, nil
	}
	a.rows = a.rows[:0]
	a.firstRow = a.firstRow[:0]
	a.procIndex.reset()
	a.byThread.reset()
	a.reused = reuseMap(a.reused, 0)
}

// add counts a sample of stack; seen is false when the stack is new to the
// request, so that no thread can have a row of it yet.
func (a *aggregator) add(s *pipeline.Sample, stack int32, seen bool) {
	for int(stack) >= len(a.firstRow) {
		a.firstRow = append(a.firstRow, -1)
	}
	first := &a.firstRow[stack]
	if !seen || *first < 0 {
		*first = a.newRow(s, stack)
		return
	}
	if r := &a.rows[*first]; r.tid == s.TID && r.pid == s.PID {
		r.count += int64(s.Count)
		return
	}
	k := uint64(s.TID)<<32 | uint64(uint32(stack))
	i, ok := a.byThread.get(k)
	switch {
	case ok && a.rows[i].pid == s.PID:
		a.rows[i].count += int64(s.Count)
	case ok:
		rk := rowKey{pid: s.PID, tid: s.TID, stack: stack}
		if i, ok := a.reused[rk]; ok {
			a.rows[i].count += int64(s.Count)
			return
		}
		a.reused[rk] = a.newRow(s, stack)
	default:
		a.byThread.put(k, a.newRow(s, stack))
	}
}

// newRow adds a row for the sample's process, thread and stack.
func (a *aggregator) newRow(s *pipeline.Sample, stack int32) int32 {
	p, ok := a.procIndex.get(uint64(s.PID))
	if !ok {
		p = int32(len(a.procs))
		a.procIndex.put(uint64(s.PID), p)
		a.procs = append(a.procs, procSamples{pid: s.PID, cgroup: s.Cgroup, comm: s.Comm, workload: s.Workload})
	}
	a.procs[p].rows++
	a.rows = append(a.rows, threadStack{pid: s.PID, tid: s.TID, proc: p, stack: stack, comm: s.Comm, count: int64(s.Count)})
	return int32(len(a.rows) - 1)
}

// byPID sorts the processes by pid and lays out order so that each
// process's rows are contiguous (a counting sort: rows stay in first-seen
// order within their process).
func (a *aggregator) byPID() []procSamples {
	rank := make([]int32, len(a.procs)) // original index → position by pid
	slices.SortFunc(a.procs, func(x, y procSamples) int { return cmp.Compare(x.pid, y.pid) })
	next := 0
	for i := range a.procs {
		p := &a.procs[i]
		p.first = next
		next += p.rows
		orig, _ := a.procIndex.get(uint64(p.pid))
		rank[orig] = int32(i)
	}
	a.order = slices.Grow(a.order[:0], len(a.rows))[:len(a.rows)]
	fill := make([]int, len(a.procs))
	for i := range a.rows {
		r := &a.rows[i]
		r.proc = rank[r.proc]
		p := &a.procs[r.proc]
		a.order[p.first+fill[r.proc]] = int32(i)
		fill[r.proc]++
	}
	return a.procs
}

// addSamples writes one process's rows over samples, each with its
// thread's id and name.
func (a *aggregator) addSamples(samples pprofile.SampleSlice, p procSamples, b *dictBuilder) {
	samples.EnsureCapacity(p.rows)
	w := overwriteOf(samples)
	var value [1]int64
	var attrs [2]int32
	for _, i := range a.order[p.first : p.first+p.rows] {
		r := &a.rows[i]
		s := w.next()
		s.SetStackIndex(r.stack)
		value[0] = r.count
		s.Values().FromRaw(value[:]) // copied into the sample's own slice, reused if it has one
		t := b.thread(r.pid, r.tid, r.comm)
		attrs[0], attrs[1] = t.id, t.name
		s.AttributeIndices().FromRaw(attrs[:])
	}
	w.trim()
}

// resourceAttributes describe the process: who it is, where it runs. They
// replace whatever m held (an earlier request's attributes).
func (c *Converter) resourceAttributes(m pcommon.Map, p procSamples, cgroupAttrs []keyValue) {
	m.RemoveIf(func(string, pcommon.Value) bool { return true }) // keeps its capacity
	m.EnsureCapacity(4 + len(cgroupAttrs))
	m.PutInt(attrPID, int64(p.pid))
	if c.HostName != "" {
		m.PutStr(attrHostName, c.HostName)
	}
	exe := c.exe(p.pid)
	name := p.comm // the kernel's name of the thread first seen, when the executable is unknown
	if exe != "" {
		m.PutStr(attrExePath, exe)
		name = filepath.Base(exe)
	}
	if name != "" {
		m.PutStr(attrExeName, name)
	}
	for _, kv := range cgroupAttrs {
		m.PutStr(kv.key, kv.value)
	}
}

// keyValue is one string resource attribute.
type keyValue struct{ key, value string }

// cgroupAttributes are the resource attributes of the container and pod a
// process runs in, where known: the same names /metrics and pprof labels
// carry. Convert asks once per cgroup and request.
func cgroupAttributes(w *attribution.Workload) []keyValue {
	if w == nil {
		return nil
	}
	var attrs []keyValue
	for _, kv := range []keyValue{
		{attrContainerID, w.ContainerID}, {attrPodUID, w.PodUID},
		{attrNamespace, w.Namespace}, {attrPodName, w.Pod}, {attrContainerName, w.Container},
	} {
		if kv.value != "" {
			attrs = append(attrs, kv)
		}
	}
	return attrs
}

// exe returns the process's executable path, cached: a process that has
// exited by the time its window is sent keeps the path read earlier.
func (c *Converter) exe(pid uint32) string {
	if p, ok := c.exes[pid]; ok {
		return p
	}
	p, err := os.Readlink(filepath.Join(c.procRoot, strconv.FormatUint(uint64(pid), 10), "exe"))
	if err != nil {
		p = ""
	}
	p = trimDeleted(p)
	if len(c.exes) >= maxExeCacheEntries {
		clear(c.exes)
	}
	c.exes[pid] = p
	return p
}

// pruneExes forgets processes absent from this request, so a reused pid
// is looked up afresh.
func (c *Converter) pruneExes(a *aggregator) {
	for pid := range c.exes {
		if _, ok := a.procIndex.get(uint64(pid)); !ok {
			delete(c.exes, pid)
		}
	}
}

func trimDeleted(p string) string {
	const suffix = " (deleted)"
	if len(p) > len(suffix) && p[len(p)-len(suffix):] == suffix {
		return p[:len(p)-len(suffix)]
	}
	return p
}
