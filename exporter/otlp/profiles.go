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
	types     profileType
	resAttrs  []resourceAttr // every process's, in pid order
	ids       []byte         // profile ids, 16 bytes per process
	lastSize  int            // of the last request, the likely size of the next
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
// dictionary, and one ResourceProfiles per process (in pid order) with a
// single CPU profile (sample type samples/count, period type
// cpu/nanoseconds). Identical (thread, stack) samples of several windows
// are merged. The protobuf is written directly (encode.go), as pdata's
// marshaler writes the same request: the receiver decodes it with pdata
// like any other.
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

// convert interns the windows' samples into the dictionary and merges
// them by process, thread and stack: everything the request says, ready
// to be written.
func (c *Converter) convert(windows []*pipeline.Window) {
	n := 0
	for _, w := range windows {
		n += len(w.Samples)
	}
	b := &c.dict
	b.reset(n)
	a := &c.agg
	a.reset(n)
	for _, w := range windows {
		for i := range w.Samples {
			s := &w.Samples[i]
			stack, seen := b.stack(s.Frames)
			a.add(s, stack, seen)
		}
	}
	a.byPID()
	c.span = spanOf(windows)
	c.types = profileType{b.str("samples"), b.str("count"), b.str("cpu"), b.str("nanoseconds")}
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

// profileType is the string indices every profile of a request shares:
// sample type samples/count, period type cpu/nanoseconds.
type profileType struct{ samples, count, cpu, nanoseconds int32 }

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
	attrs        span                  // its resource attributes in Converter.resAttrs
}

// threadStack is one sample of the request: a thread's stack and count,
// with the thread's name and attributes.
type threadStack struct {
	pid, tid uint32
	proc     int32
	stack    int32
	thread   threadAttrs
	comm     string
	count    int64
}

type rowKey struct {
	pid, tid uint32
	stack    int32
}

func (a *aggregator) reset(samples int) {
	a.procs = reuseSlice(a.procs)
	a.rows = reuseSlice(a.rows)
	a.order = reuseSlice(a.order)
	a.firstRow = reuseSlice(a.firstRow)
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

// hasPID reports whether the request has samples of process pid.
func (a *aggregator) hasPID(pid uint32) bool {
	_, ok := a.procIndex.get(uint64(pid))
	return ok
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

// threadAttributes interns the attributes of each row's thread, in the
// order the rows are sent (a process's rows one after another, often of
// one thread). With the strings interned in the same order too, the
// dictionary is the one the pdata-based converter made before: a request
// is the same bytes as then, but for its random profile ids.
func (a *aggregator) threadAttributes(b *dictBuilder) {
	for _, i := range a.order {
		r := &a.rows[i]
		r.thread = b.thread(r.pid, r.tid, r.comm)
	}
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
