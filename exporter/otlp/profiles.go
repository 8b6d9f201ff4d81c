package otlp

import (
	"cmp"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

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

// attrOffCPUReason is why a thread left the CPU, on each off-CPU sample.
// No semantic convention names it (process.state describes a process, not
// why a thread was switched out, and process.context_switch.type only
// tells voluntary from involuntary), so it is in cgscope's namespace, as
// the conventions ask of an application's own names (cgscope.cgroup.path
// and cgscope.context_switch.kind are too) rather than a bare off_cpu.*
// that a future convention could take. Its values are the pipeline's:
// runnable (preempted), sleeping, io_wait, uninterruptible, other.
const attrOffCPUReason = "cgscope.off_cpu.reason"

// Converter turns pipeline windows into OTLP profiles requests in
// protobuf. Between calls it keeps a cache of executable paths, its
// interning tables (emptied, their capacity kept within bounds: the next
// interval is about as large as the last) and the memory of the last
// request once it is released; it is not safe for concurrent use, except
// for Release.
type Converter struct {
	HostName string
	Version  string
	exes     map[uint32]string // pid → /proc/PID/exe target ("" when unreadable)
	procRoot string
	paths    *attribution.Resolver // ids from cgroup paths, for samples without a workload

	dict      dictBuilder
	agg       aggregator
	span      timeSpan
	types     [numProfileKinds]profileType // by profileKind
	nextID    int                          // the next profile's id in ids
	resAttrs  []resourceAttr               // every process's, in pid order
	ids       []byte                       // profile ids, 16 bytes per profile
	lastSize  int                          // of the last request, the likely size of the next
	spareMu   sync.Mutex
	spareBody []byte // a released request's memory, for the next; nil when none
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

// maxRequestBytes is the largest request Encode makes: protobuf messages
// are limited to 2 GiB.
const maxRequestBytes = math.MaxInt32

// maxReusedRequest bounds the memory of a released request kept for the
// next one: an unusually large interval's is left to the garbage
// collector, not held for good. 4 MiB is also the largest message a gRPC
// server accepts by default.
const maxReusedRequest = 4 << 20

// Encode builds one ExportProfilesServiceRequest from windows, in
// protobuf, or nil when the windows hold no samples: one shared
// dictionary, and one ResourceProfiles per process (in pid order) with one
// scope and its profiles (see profileKind): the CPU profile (sample type
// samples/count, period type cpu/nanoseconds) when the process has CPU
// samples, and when it has off-CPU samples the off-CPU profiles
// (off_cpu/nanoseconds and context_switch/count). Identical (thread,
// stack) samples of several windows are merged, off-CPU ones when their
// reason is the same too. The protobuf is written directly (encode.go), as
// pdata's marshaler writes the same request: the receiver decodes it with
// pdata like any other.
//
// The request is written into the memory of the last one when that was
// released (Release).
func (c *Converter) Encode(windows []*pipeline.Window) ([]byte, error) {
	body := c.encode(windows)
	c.pruneExes(c.agg.hasPID)
	if len(body) > maxRequestBytes {
		return nil, fmt.Errorf("request of %d bytes: protobuf messages are limited to %d", len(body), maxRequestBytes)
	}
	c.lastSize = len(body)
	return body, nil
}

// encode is Encode without its checks: the request of windows, nil when
// they hold no samples.
func (c *Converter) encode(windows []*pipeline.Window) []byte {
	c.convert(windows)
	if len(c.agg.procs) == 0 {
		return nil
	}
	w := protoWriter{buf: c.takeSpare()}
	c.encodeRequest(&w)
	return w.buf
}

// Release gives back a request Encode returned once it is sent and
// nothing uses it any more, so that the next Encode writes over it rather
// than allocating. Each request is released at most once; one never
// released is left to the garbage collector. Release may run concurrently
// with Encode.
func (c *Converter) Release(body []byte) {
	if cap(body) > maxReusedRequest {
		return
	}
	c.spareMu.Lock()
	c.spareBody = body[:0]
	c.spareMu.Unlock()
}

// takeSpare returns the released request's memory, or new memory for a
// request about as large as the last.
func (c *Converter) takeSpare() []byte {
	c.spareMu.Lock()
	b := c.spareBody
	c.spareBody = nil
	c.spareMu.Unlock()
	if b == nil {
		// An unusually large last request does not size this one beyond
		// what is kept anyway; append grows it if it needs more.
		b = make([]byte, 0, min(c.lastSize+c.lastSize/8, maxReusedRequest))
	}
	return b
}

// convert interns the windows' samples, on-CPU and off-CPU, into the one
// dictionary and merges them by process, thread, stack and kind:
// everything the request says, ready to be written.
func (c *Converter) convert(windows []*pipeline.Window) {
	n := 0
	for _, w := range windows {
		n += len(w.Samples) + len(w.OffCPU)
	}
	b := &c.dict
	b.reset(n)
	a := &c.agg
	a.reset(n)
	for _, w := range windows {
		for i := range w.Samples {
			s := &w.Samples[i]
			stack, seen := b.stack(s.Frames)
			a.add(s, stack, seen, onCPU)
		}
		for i := range w.OffCPU {
			s := &w.OffCPU[i]
			stack, seen := b.stack(s.Frames)
			a.add(s, stack, seen, a.offCPUKind(s.Reason))
		}
	}
	a.byPID()
	c.span = spanOf(windows)
	c.types = c.profileTypes(a.offRows > 0)
	a.threadAttributes(b)
	c.resourceAttributes()
}

// resourceAttributes describe each process: who it is, where it runs.
// Their strings go into the dictionary, as pdata's marshaler puts them.
func (c *Converter) resourceAttributes() {
	type cgroupKey struct {
		path     string
		workload *attribution.Workload
	}
	cgroupAttrs := map[cgroupKey][]keyValue{}
	c.resAttrs = reuseSlice(c.resAttrs)
	b := &c.dict
	for i := range c.agg.procs {
		p := &c.agg.procs[i]
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
		p.attrs.off = int32(len(c.resAttrs))
		c.resAttrs = append(c.resAttrs, resourceAttr{key: b.str(attrPID), isInt: true, num: int64(p.pid)})
		str := func(k, v string) {
			c.resAttrs = append(c.resAttrs, resourceAttr{key: b.str(k), value: b.str(v)})
		}
		if c.HostName != "" {
			str(attrHostName, c.HostName)
		}
		exe := c.exe(p.pid)
		name := p.comm // the kernel's name of the thread first seen, when the executable is unknown
		if exe != "" {
			str(attrExePath, exe)
			name = filepath.Base(exe)
		}
		if name != "" {
			str(attrExeName, name)
		}
		for _, kv := range attrs {
			str(kv.key, kv.value)
		}
		p.attrs.n = int32(len(c.resAttrs)) - p.attrs.off
	}
}

// resourceAttr is a resource attribute with its strings in the dictionary:
// a string (value) or an int (num).
type resourceAttr struct {
	key, value int32
	isInt      bool
	num        int64
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

// profileKind is one of the profiles of a process.
//
// The OTLP profiles data model this package writes (v1development, as
// pdata v1.71.0 implements it; wire.go) gives a Profile a single
// sample_type, and a Sample's values are all of that type (several values
// are several events of it, with their timestamps), so a second kind of
// value is a second Profile: the off-CPU samples are two more profiles in
// the process's ScopeProfiles, next to the CPU profile, sharing the
// request's one dictionary (stacks, locations, functions, strings,
// attributes). Each sample has one value, an estimated total, and no
// timestamps: the off-CPU sampler weights its samples in the kernel and
// keeps no single events.
//
//   - off_cpu/nanoseconds, without a period type or period: the estimated
//     time threads spent off the CPU. This is the profile the
//     OpenTelemetry eBPF profiler sends for off-CPU samples, and the one
//     backends recognize as off-CPU time (Grafana Pyroscope, for one, takes
//     exactly "off_cpu:nanoseconds" without a period as its off_cpu
//     profile type; with a period it would see an unknown type). The
//     sampling is adaptive, not periodic, so there is no period to give.
//   - context_switch/count: the estimated times threads left the CPU. The
//     model has no second value for the same samples, and leaving the
//     counts out would lose how often a stack waits, against how long
//     (pprof's block profile has both: contentions/count and
//     delay/nanoseconds). The type is not off_cpu/count: a consumer that
//     tells profiles apart by type alone (pprof's -sample_index by name,
//     for one) would mistake one for the other. context_switch/count is
//     the name opentelemetry-proto gives these events (its off-CPU example
//     of period_type). Its period type is the same, with period 1: the
//     values are already estimates of every switch-out (each sampled one
//     weighted by the inverse of its sampling probability), the unsampled
//     form the data model asks for, so one unit is one switch-out. A
//     profile of a type a backend does not know needs a period type there:
//     Pyroscope names such a profile by it, and refuses one without a name.
//
// Both off-CPU profiles carry the same samples (thread.id, thread.name and
// cgscope.off_cpu.reason), in the same order, so sample i of one and of
// the other are the same threads and stack.
type profileKind uint8

const (
	cpuProfile        profileKind = iota // samples/count, period cpu/nanoseconds
	offCPUTimeProfile                    // off_cpu/nanoseconds
	switchesProfile                      // context_switch/count, period context_switch/count 1
	numProfileKinds
)

// profileType is a profile kind's value and period types (string
// indices; 0 for none) and period.
type profileType struct {
	sampleType, sampleUnit int32
	periodType, periodUnit int32
	period                 int64
}

// profileTypes interns the types of the request's profiles; those of the
// off-CPU profiles only when it has off-CPU samples, so that a request
// without is the one it was before there were any.
func (c *Converter) profileTypes(offCPU bool) [numProfileKinds]profileType {
	b := &c.dict
	var t [numProfileKinds]profileType
	samples, count, cpu, nanoseconds := b.str("samples"), b.str("count"), b.str("cpu"), b.str("nanoseconds")
	t[cpuProfile] = profileType{samples, count, cpu, nanoseconds, int64(c.span.period)}
	if offCPU {
		switches := b.str("context_switch")
		t[offCPUTimeProfile] = profileType{sampleType: b.str("off_cpu"), sampleUnit: nanoseconds}
		t[switchesProfile] = profileType{switches, count, switches, count, 1}
	}
	return t
}

// aggregator merges a request's samples by (process, thread, stack, kind)
// and groups them by process, keeping first-seen order within a process
// and each process's CPU rows before its off-CPU rows.
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
	reused    map[rowKey]int32 // rows whose (tid, stack) another row holds: of a tid reused within the request, or of another kind
	order     []int32          // rows grouped by process, in pid order (byPID)

	reasons     []string // off-CPU reasons: rowKind k > onCPU is reasons[k-1]
	reasonAttrs []int32  // their attributes (threadAttributes); 0 for none
	offRows     int      // off-CPU rows in all
}

// rowKind tells CPU rows (onCPU) from off-CPU rows, which are of one
// reason each.
type rowKind int32

const onCPU rowKind = 0

// procSamples is one process of the request.
type procSamples struct {
	pid          uint32
	cgroup, comm string                // of the first sample seen
	workload     *attribution.Workload // of the first sample seen; nil outside containers
	rows         int                   // how many rows
	offRows      int                   // how many of them are off-CPU rows (after the CPU rows in order)
	first        int                   // where its rows start in order
	attrs        span                  // its resource attributes in Converter.resAttrs
}

// threadStack is one sample of the request: a thread's stack and count,
// with the thread's name and attributes; for an off-CPU row, its reason
// (kind), switch-outs (count) and time off the CPU (nanos).
type threadStack struct {
	pid, tid uint32
	proc     int32
	stack    int32
	thread   threadAttrs
	comm     string
	count    int64
	nanos    int64
	kind     rowKind
}

// merge adds a sample of the row's thread, stack and kind.
func (r *threadStack) merge(s *pipeline.Sample) {
	r.count += int64(s.Count)
	r.nanos += int64(s.OffCPU)
}

type rowKey struct {
	pid, tid uint32
	stack    int32
	kind     rowKind
}

func (a *aggregator) reset(samples int) {
	a.procs = reuseSlice(a.procs)
	a.rows = reuseSlice(a.rows)
	a.order = reuseSlice(a.order)
	a.firstRow = reuseSlice(a.firstRow)
	a.procIndex.reset()
	a.byThread.reset()
	a.reused = reuseMap(a.reused, 0)
	a.reasons = a.reasons[:0]
	a.reasonAttrs = a.reasonAttrs[:0]
	a.offRows = 0
}

// offCPUKind is the kind of the off-CPU rows of a reason.
func (a *aggregator) offCPUKind(reason string) rowKind {
	for i, r := range a.reasons { // a handful
		if r == reason {
			return rowKind(i + 1)
		}
	}
	a.reasons = append(a.reasons, reason)
	return rowKind(len(a.reasons))
}

// add counts a sample of stack, of kind; seen is false when the stack is
// new to the request, so that no thread can have a row of it yet.
func (a *aggregator) add(s *pipeline.Sample, stack int32, seen bool, kind rowKind) {
	for int(stack) >= len(a.firstRow) {
		a.firstRow = append(a.firstRow, -1)
	}
	first := &a.firstRow[stack]
	if !seen || *first < 0 {
		*first = a.newRow(s, stack, kind)
		return
	}
	if r := &a.rows[*first]; r.tid == s.TID && r.pid == s.PID && r.kind == kind {
		r.merge(s)
		return
	}
	k := uint64(s.TID)<<32 | uint64(uint32(stack))
	i, ok := a.byThread.get(k)
	switch {
	case ok && a.rows[i].pid == s.PID && a.rows[i].kind == kind:
		a.rows[i].merge(s)
	case ok:
		rk := rowKey{pid: s.PID, tid: s.TID, stack: stack, kind: kind}
		if i, ok := a.reused[rk]; ok {
			a.rows[i].merge(s)
			return
		}
		a.reused[rk] = a.newRow(s, stack, kind)
	default:
		a.byThread.put(k, a.newRow(s, stack, kind))
	}
}

// hasPID reports whether the request has samples of process pid.
func (a *aggregator) hasPID(pid uint32) bool {
	_, ok := a.procIndex.get(uint64(pid))
	return ok
}

// newRow adds a row of kind for the sample's process, thread and stack.
func (a *aggregator) newRow(s *pipeline.Sample, stack int32, kind rowKind) int32 {
	p, ok := a.procIndex.get(uint64(s.PID))
	if !ok {
		p = int32(len(a.procs))
		a.procIndex.put(uint64(s.PID), p)
		a.procs = append(a.procs, procSamples{pid: s.PID, cgroup: s.Cgroup, comm: s.Comm, workload: s.Workload})
	}
	a.procs[p].rows++
	if kind != onCPU {
		a.procs[p].offRows++
		a.offRows++
	}
	a.rows = append(a.rows, threadStack{pid: s.PID, tid: s.TID, proc: p, stack: stack, comm: s.Comm, kind: kind})
	a.rows[len(a.rows)-1].merge(s)
	return int32(len(a.rows) - 1)
}

// byPID sorts the processes by pid and lays out order so that each
// process's rows are contiguous, its CPU rows first (a counting sort: rows
// stay in first-seen order within their process and kind).
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
	fill := make([]int, len(a.procs))    // CPU rows placed
	offFill := make([]int, len(a.procs)) // off-CPU rows placed
	for i := range a.rows {
		r := &a.rows[i]
		r.proc = rank[r.proc]
		p := &a.procs[r.proc]
		if r.kind == onCPU {
			a.order[p.first+fill[r.proc]] = int32(i)
			fill[r.proc]++
		} else {
			a.order[p.first+p.rows-p.offRows+offFill[r.proc]] = int32(i)
			offFill[r.proc]++
		}
	}
	return a.procs
}

// cpuAndOffCPU are a process's CPU rows and its off-CPU rows, in order.
func (a *aggregator) cpuAndOffCPU(p *procSamples) (cpu, off []int32) {
	rows := a.order[p.first : p.first+p.rows]
	return rows[:p.rows-p.offRows], rows[p.rows-p.offRows:]
}

// threadAttributes interns the attributes of each row's thread, in the
// order the rows are sent (a process's rows one after another, often of
// one thread), and the reason attribute of each off-CPU kind. With the
// strings interned in the same order too, the dictionary is the one the
// pdata-based converter made before: a request without off-CPU samples is
// the same bytes as then, but for its random profile ids.
func (a *aggregator) threadAttributes(b *dictBuilder) {
	for _, i := range a.order {
		r := &a.rows[i]
		r.thread = b.thread(r.pid, r.tid, r.comm)
	}
	for _, reason := range a.reasons {
		attr := int32(0) // an unknown reason: no attribute
		if reason != "" {
			attr = b.strAttr(attrOffCPUReason, reason)
		}
		a.reasonAttrs = append(a.reasonAttrs, attr)
	}
}

// reasonAttr is the reason attribute of an off-CPU row; 0 for none.
func (a *aggregator) reasonAttr(r *threadStack) int32 {
	if r.kind == onCPU {
		return 0
	}
	return a.reasonAttrs[r.kind-1]
}

// keyValue is one string resource attribute.
type keyValue struct{ key, value string }

// cgroupAttributes are the resource attributes of the container and pod a
// process runs in, where known: the same names /metrics and pprof labels
// carry. The converter asks once per cgroup and request.
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

// pruneExes forgets the processes absent from this interval (sent says
// which are present), so that a reused pid is looked up afresh.
func (c *Converter) pruneExes(sent func(pid uint32) bool) {
	for pid := range c.exes {
		if !sent(pid) {
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
