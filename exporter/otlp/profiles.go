package otlp

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"
	"unsafe"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pprofile"

	"github.com/cgscope/cgscope/internal/pipeline"
	"github.com/cgscope/cgscope/profiler"
	"github.com/cgscope/cgscope/symbolizer"
)

// Attribute keys from the OpenTelemetry semantic conventions.
const (
	attrContainerID    = "container.id"
	attrPodUID         = "k8s.pod.uid"
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

// Converter turns pipeline windows into OTLP profiles requests. It keeps a
// small cache of executable paths across calls; it is not safe for
// concurrent use.
type Converter struct {
	HostName string
	Version  string
	exes     map[uint32]string // pid → /proc/PID/exe target ("" when unreadable)
	procRoot string
}

// NewConverter returns a converter that names this host.
func NewConverter(version string) *Converter {
	host, _ := os.Hostname()
	return &Converter{HostName: host, Version: version, exes: map[uint32]string{}, procRoot: "/proc"}
}

// Convert builds one request from windows: one shared dictionary, and one
// ResourceProfiles per process with a single CPU profile (sample type
// samples/count, period type cpu/nanoseconds). Identical (thread, stack)
// samples of several windows are merged.
func (c *Converter) Convert(windows []*pipeline.Window) pprofile.Profiles {
	pd := pprofile.NewProfiles()
	n := 0
	for _, w := range windows {
		n += len(w.Samples)
	}
	b := newDictBuilder(pd.Dictionary(), n)
	procs := map[uint32]*procSamples{}
	var order []uint32
	var start, end time.Time
	var period time.Duration
	for _, w := range windows {
		if start.IsZero() || w.Start.Before(start) {
			start = w.Start
		}
		if w.End.After(end) {
			end = w.End
		}
		if w.Period > 0 {
			period = w.Period
		}
		for i := range w.Samples {
			s := &w.Samples[i]
			p := procs[s.PID]
			if p == nil {
				p = &procSamples{cgroup: s.Cgroup, comm: s.Comm, index: map[uint64]int{}}
				procs[s.PID] = p
				order = append(order, s.PID)
			}
			p.add(s.TID, b.stack(s.Frames), s.Comm, int64(s.Count))
		}
	}
	slices.Sort(order)
	for _, pid := range order {
		c.addProcess(pd, b, pid, procs[pid], start, end, period)
	}
	c.pruneExes(procs)
	return pd
}

// procSamples are one process's aggregated samples, in first-seen order.
type procSamples struct {
	cgroup, comm string
	samples      []threadStack
	index        map[uint64]int // tid<<32 | stack → position in samples
}

// threadStack is one sample of the request: a thread's stack and count.
// A thread renamed within the interval keeps its first name.
type threadStack struct {
	tid   uint32
	stack int32
	comm  string
	count int64
}

func (p *procSamples) add(tid uint32, stack int32, comm string, n int64) {
	k := uint64(tid)<<32 | uint64(uint32(stack))
	if i, ok := p.index[k]; ok {
		p.samples[i].count += n
		return
	}
	p.index[k] = len(p.samples)
	p.samples = append(p.samples, threadStack{tid: tid, stack: stack, comm: comm, count: n})
}

func (c *Converter) addProcess(pd pprofile.Profiles, b *dictBuilder, pid uint32, p *procSamples, start, end time.Time, period time.Duration) {
	rp := pd.ResourceProfiles().AppendEmpty()
	c.resourceAttributes(rp.Resource().Attributes(), pid, p)
	sp := rp.ScopeProfiles().AppendEmpty()
	sp.Scope().SetName(scopeName)
	sp.Scope().SetVersion(c.Version)
	prof := sp.Profiles().AppendEmpty()
	prof.SampleType().SetTypeStrindex(b.str("samples"))
	prof.SampleType().SetUnitStrindex(b.str("count"))
	prof.PeriodType().SetTypeStrindex(b.str("cpu"))
	prof.PeriodType().SetUnitStrindex(b.str("nanoseconds"))
	prof.SetPeriod(int64(period))
	prof.SetTime(pcommon.NewTimestampFromTime(start))
	if end.After(start) {
		prof.SetDurationNano(uint64(end.Sub(start)))
	}
	var id pprofile.ProfileID
	rand.Read(id[:])
	prof.SetProfileID(id)
	samples := prof.Samples()
	samples.EnsureCapacity(len(p.samples))
	for _, k := range p.samples {
		s := samples.AppendEmpty()
		s.SetStackIndex(k.stack)
		s.Values().Append(k.count)
		s.AttributeIndices().Append(b.intAttr(attrThreadID, int64(k.tid)), b.strAttr(attrThreadName, k.comm))
	}
}

// resourceAttributes describe the process: who it is, where it runs.
func (c *Converter) resourceAttributes(m pcommon.Map, pid uint32, p *procSamples) {
	m.EnsureCapacity(6)
	m.PutInt(attrPID, int64(pid))
	if c.HostName != "" {
		m.PutStr(attrHostName, c.HostName)
	}
	exe := c.exe(pid)
	name := p.comm // the kernel's name of the thread first seen, when the executable is unknown
	if exe != "" {
		m.PutStr(attrExePath, exe)
		name = filepath.Base(exe)
	}
	if name != "" {
		m.PutStr(attrExeName, name)
	}
	if p.cgroup != "" {
		id := profiler.ParseContainerPath(p.cgroup)
		if id.ContainerID != "" {
			m.PutStr(attrContainerID, id.ContainerID)
		}
		if id.PodUID != "" {
			m.PutStr(attrPodUID, id.PodUID)
		}
	}
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
func (c *Converter) pruneExes(seen map[uint32]*procSamples) {
	for pid := range c.exes {
		if seen[pid] == nil {
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

// dictBuilder interns strings, mappings, functions, locations, stacks and
// attributes into the request's one dictionary. Every table starts with
// its zero entry at index 0, as the OTLP profiles format requires.
type dictBuilder struct {
	d         pprofile.ProfilesDictionary
	strs      map[string]int32
	mapByPtr  map[*symbolizer.Mapping]int32
	mappings  map[mappingKey]int32
	functions map[functionKey]int32
	locations map[locationKey]int32
	locByPtr  map[frameKey]int32
	stacks    map[string]int32
	attrs     map[attrKey]int32
	kernelMap int32
	locBuf    []int32
}

type mappingKey struct{ path, buildID string }
type functionKey struct{ name, file string }

// locationKey identifies a frame by its object and address in it; frames
// outside any mapping are told apart by name.
type locationKey struct {
	mapping int32
	addr    uint64
	fn      string // only when mapping == 0
	line    int
}

// frameKey is the fast path of location: a frame of a mapping already seen
// is found by the mapping's pointer, without hashing strings.
type frameKey struct {
	m    *symbolizer.Mapping // nil for kernel frames
	addr uint64
}

type attrKey struct {
	key  string
	str  string
	num  int64
	isIn bool
}

// newDictBuilder sizes its maps for samples samples: growing them while
// interning was the largest cost of a conversion.
func newDictBuilder(d pprofile.ProfilesDictionary, samples int) *dictBuilder {
	b := &dictBuilder{
		d: d, strs: make(map[string]int32, samples), mapByPtr: map[*symbolizer.Mapping]int32{},
		mappings: map[mappingKey]int32{}, functions: make(map[functionKey]int32, samples),
		locations: make(map[locationKey]int32, samples), locByPtr: make(map[frameKey]int32, 2*samples),
		stacks: make(map[string]int32, samples), attrs: make(map[attrKey]int32, samples/4),
		kernelMap: -1,
	}
	b.str("")
	d.MappingTable().AppendEmpty()
	d.FunctionTable().AppendEmpty()
	d.LocationTable().AppendEmpty()
	d.StackTable().AppendEmpty()
	d.AttributeTable().AppendEmpty()
	d.LinkTable().AppendEmpty()
	b.stacks[""] = 0
	return b
}

func (b *dictBuilder) str(s string) int32 {
	if i, ok := b.strs[s]; ok {
		return i
	}
	i := int32(b.d.StringTable().Len())
	b.d.StringTable().Append(s)
	b.strs[s] = i
	return i
}

func (b *dictBuilder) strAttr(key, val string) int32 {
	k := attrKey{key: key, str: val}
	if i, ok := b.attrs[k]; ok {
		return i
	}
	return b.newAttr(k, func(v pcommon.Value) { v.SetStr(val) })
}

func (b *dictBuilder) intAttr(key string, val int64) int32 {
	k := attrKey{key: key, num: val, isIn: true}
	if i, ok := b.attrs[k]; ok {
		return i
	}
	return b.newAttr(k, func(v pcommon.Value) { v.SetInt(val) })
}

func (b *dictBuilder) newAttr(k attrKey, set func(pcommon.Value)) int32 {
	t := b.d.AttributeTable()
	i := int32(t.Len())
	a := t.AppendEmpty()
	a.SetKeyStrindex(b.str(k.key))
	set(a.Value())
	b.attrs[k] = i
	return i
}

// stack interns a leaf-first frame list. The key is the location indices'
// bytes, so a stack seen again costs one map lookup without allocating.
func (b *dictBuilder) stack(frames []symbolizer.Frame) int32 {
	b.locBuf = b.locBuf[:0]
	for i := range frames {
		b.locBuf = append(b.locBuf, b.location(&frames[i]))
	}
	var key string
	if len(b.locBuf) > 0 {
		key = unsafe.String((*byte)(unsafe.Pointer(&b.locBuf[0])), 4*len(b.locBuf))
	}
	if i, ok := b.stacks[key]; ok {
		return i
	}
	t := b.d.StackTable()
	i := int32(t.Len())
	t.AppendEmpty().LocationIndices().FromRaw(b.locBuf)
	b.stacks[string([]byte(key))] = i // copy: locBuf is reused
	return i
}

func (b *dictBuilder) location(fr *symbolizer.Frame) int32 {
	if fr.Mapping == nil && !fr.Kernel {
		return b.newLocation(fr)
	}
	fk := frameKey{m: fr.Mapping, addr: fr.ObjAddress}
	if i, ok := b.locByPtr[fk]; ok {
		return i
	}
	i := b.newLocation(fr)
	b.locByPtr[fk] = i
	return i
}

// newLocation interns a frame by object and address, so the same code in
// two processes (two Mapping values) is one location.
func (b *dictBuilder) newLocation(fr *symbolizer.Frame) int32 {
	k := locationKey{mapping: b.mapping(fr), addr: fr.ObjAddress, line: fr.Line}
	if k.mapping == 0 {
		k.fn = fr.Function
	}
	if i, ok := b.locations[k]; ok {
		return i
	}
	t := b.d.LocationTable()
	i := int32(t.Len())
	l := t.AppendEmpty()
	l.SetMappingIndex(k.mapping)
	l.SetAddress(fr.ObjAddress)
	if fr.Function != "" {
		ln := l.Lines().AppendEmpty()
		ln.SetFunctionIndex(b.function(fr))
		ln.SetLine(int64(fr.Line))
	}
	if fr.Kernel {
		l.AttributeIndices().Append(b.strAttr(attrFrameType, "kernel"))
	}
	b.locations[k] = i
	return i
}

// mapping returns the index of the object a frame belongs to, 0 for none.
// Addresses are object-relative (Frame.ObjAddress), so one mapping per
// object serves every process; MemoryStart/Limit stay 0.
func (b *dictBuilder) mapping(fr *symbolizer.Frame) int32 {
	switch {
	case fr.Kernel:
		if b.kernelMap < 0 {
			b.kernelMap = b.newMapping(mappingKey{path: kernelMappingName})
		}
		return b.kernelMap
	case fr.Mapping == nil:
		return 0
	}
	if i, ok := b.mapByPtr[fr.Mapping]; ok {
		return i
	}
	k := mappingKey{path: fr.Mapping.FilePath(), buildID: fr.Mapping.BuildID}
	i, ok := b.mappings[k]
	if !ok {
		i = b.newMapping(k)
	}
	b.mapByPtr[fr.Mapping] = i
	return i
}

func (b *dictBuilder) newMapping(k mappingKey) int32 {
	t := b.d.MappingTable()
	i := int32(t.Len())
	m := t.AppendEmpty()
	m.SetFilenameStrindex(b.str(k.path))
	if key, val := buildIDAttr(k.buildID); key != "" {
		m.AttributeIndices().Append(b.strAttr(key, val))
	}
	b.mappings[k] = i
	return i
}

// buildIDAttr names a symbolizer build ID by its kind: a GNU build ID is
// short hex (8..32 bytes); anything longer is the hex of a Go build ID,
// which is given in its own text form ("actionID/.../contentID").
func buildIDAttr(id string) (key, val string) {
	switch {
	case id == "":
		return "", ""
	case len(id) <= 64:
		return attrBuildIDGNU, id
	}
	if raw, err := hex.DecodeString(id); err == nil {
		return attrBuildIDGo, string(raw)
	}
	return attrBuildIDGNU, id
}

func (b *dictBuilder) function(fr *symbolizer.Frame) int32 {
	k := functionKey{name: fr.Function, file: fr.File}
	if i, ok := b.functions[k]; ok {
		return i
	}
	t := b.d.FunctionTable()
	i := int32(t.Len())
	f := t.AppendEmpty()
	name := b.str(fr.Function)
	f.SetNameStrindex(name)
	f.SetSystemNameStrindex(name)
	f.SetFilenameStrindex(b.str(fr.File))
	b.functions[k] = i
	return i
}
