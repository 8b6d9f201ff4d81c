package profiler

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/cgscope/cgscope/bpf"
	"github.com/cgscope/cgscope/internal/bpfstats"
)

var nativeEndian = binary.NativeEndian

// RawSample is one unique sample key drained from the kernel with its count.
// Stacks are raw instruction addresses, leaf first.
type RawSample struct {
	PID, TID uint32
	CgroupID uint64
	Comm     string
	// UserStackID and KernelStackID identify the stacks within one batch
	// (0 = none), so consumers can work once per unique stack.
	UserStackID, KernelStackID uint64
	User                       []uint64
	Kernel                     []uint64
	// LeafCaller is the return address found at the user stack pointer, a
	// candidate for the caller that frame-pointer unwinding skips when the
	// leaf function has no frame; 0 if none.
	LeafCaller uint64
	// UserLost and KernelLost mark a stack that existed but could not be
	// stored in the kernel (map full or hash collision; counted in Stats).
	UserLost, KernelLost bool
	// UserEnd is how the walk of the user stack ended.
	UserEnd StackEnd
	// Interp are the words an interpreter walker recorded of the thread's
	// interpreted frames (InterpKind names the walker: interp.Kind), and
	// InterpStackID identifies them within the batch (0: none);
	// InterpEnd is how the walk ended, InterpLost marks words that could
	// not be stored.
	InterpStackID uint64
	Interp        []uint64
	InterpKind    uint8
	InterpEnd     InterpEnd
	InterpLost    bool
	// Count is the samples taken; for an off-CPU sample, the switch-outs it
	// stands for (weighted by the inverse of their sampling probability).
	Count uint64
	// OffCPUNanos is an off-CPU sample's time away from the CPU
	// (weighted as Count), and Reason why it left.
	OffCPUNanos uint64
	Reason      OffCPUReason
}

// StackEnd is how the walk of a user stack ended (enum stack_end of
// bpf/unwind.h).
type StackEnd uint8

// The ends of a user stack's walk.
const (
	EndComplete      StackEnd = StackEnd(bpf.ProfileStackEndEND_COMPLETE)
	EndDepth         StackEnd = StackEnd(bpf.ProfileStackEndEND_DEPTH)
	EndReadFailed    StackEnd = StackEnd(bpf.ProfileStackEndEND_READ_FAILED)
	EndUnsupported   StackEnd = StackEnd(bpf.ProfileStackEndEND_UNSUPPORTED)
	EndNoMapping     StackEnd = StackEnd(bpf.ProfileStackEndEND_NO_MAPPING)
	EndBadFrame      StackEnd = StackEnd(bpf.ProfileStackEndEND_BAD_FRAME)
	EndFramePointers StackEnd = StackEnd(bpf.ProfileStackEndEND_FRAME_POINTERS)
)

// StackEnds names the ends, in order, for metrics and the [truncated]
// frame.
var StackEnds = []string{"complete", "depth_limit", "read_failed", "unsupported_rule", "outside_mappings", "bad_frame", "frame_pointers"}

// Truncated reports whether the walk stopped before the outermost frame.
// A frame-pointer walk of the kernel cannot tell, and is not.
func (e StackEnd) Truncated() bool { return e != EndComplete && e != EndFramePointers }

// String names the end as StackEnds does.
func (e StackEnd) String() string {
	if int(e) < len(StackEnds) {
		return StackEnds[e]
	}
	return fmt.Sprintf("end%d", e)
}

// RawBatch is everything sampled between two drains.
type RawBatch struct {
	Start, End time.Time
	Samples    []RawSample
	// OffCPU are the off-CPU samples (when the off-CPU sampler is loaded)
	// whose time away ended in the interval.
	OffCPU []RawSample
}

// Entries one batch syscall moves: a batch of stacks takes 1 KiB per entry,
// so it is kept small (the buffers live as long as the Sampler).
const (
	drainCountsBatch = 512
	drainStacksBatch = 64
)

// drainBuffers are the batch buffers Drain reuses, rather than allocating
// ~0.6 MiB for every drain.
type drainBuffers struct {
	stackKeys   []uint64
	stackValues []bpf.ProfileStackTrace
	countKeys   []bpf.ProfileSampleKey
	countValues []uint64
}

func newDrainBuffers() *drainBuffers {
	return &drainBuffers{
		stackKeys:   make([]uint64, drainStacksBatch),
		stackValues: make([]bpf.ProfileStackTrace, drainStacksBatch),
		countKeys:   make([]bpf.ProfileSampleKey, drainCountsBatch),
		countValues: make([]uint64, drainCountsBatch),
	}
}

// Drain returns every sample taken since the previous Drain.
//
// The program writes into one of two map generations. Drain points it at the
// other one, then re-installs the old generation's inner maps into their
// map-of-maps slots: the kernel answers every update of a map-of-maps with
// synchronize_rcu(), so when that returns, no program that could still write
// the old generation is running. The old generation is then read and emptied
// without racing a writer; samples taken meanwhile land in the new one.
func (s *Sampler) Drain() (*RawBatch, error) {
	s.drainMu.Lock()
	defer s.drainMu.Unlock()

	old := s.generation
	next := old ^ 1
	if err := s.objs.Control.Update(uint32(0), next, ebpf.UpdateAny); err != nil {
		return nil, fmt.Errorf("switching map generation: %w", err)
	}
	s.generation = next
	countsMap, stacksMap := s.generationMaps(old)
	if err := s.waitForWriters(old, countsMap, stacksMap); err != nil {
		return nil, err
	}
	// The notices of the drained samples' processes are in the ring now
	// (a sample announces its process before it is counted). Those that
	// wake nobody (exits, processes forked without an exec) are read
	// here, before the samples are symbolized.
	if err := s.readPendingEvents(); err != nil {
		slog.Debug("reading new-process events before a drain", "err", err)
	}

	batch := &RawBatch{Start: s.lastDrain, End: time.Now()}
	s.lastDrain = batch.End

	if s.bufs == nil {
		s.bufs = newDrainBuffers()
	}
	stacks, err := drainStacks(stacksMap, s.bufs)
	if err != nil {
		return nil, err
	}
	if err := drainCounts(countsMap, s.bufs, func(k *bpf.ProfileSampleKey, count uint64) {
		batch.Samples = append(batch.Samples, rawSample(k, count, stacks))
	}); err != nil {
		return nil, err
	}
	if s.offCPU.Load() != nil {
		if batch.OffCPU, err = s.drainOffCPU(old); err != nil {
			return nil, err
		}
	}
	s.forgetExited()
	return batch, nil
}

// drainOffCPU empties generation gen of the off-CPU counts. Their stacks
// stay in offcpu_stacks (a sample's stacks are stored when its thread
// leaves the CPU, maybe in an interval drained before): a stack evicted
// meanwhile is lost, and counted.
func (s *Sampler) drainOffCPU(gen uint32) ([]RawSample, error) {
	m := s.objs.OffcpuCounts0
	if gen == 1 {
		m = s.objs.OffcpuCounts1
	}
	keys := make([]bpf.ProfileSampleKey, drainCountsBatch)
	values := make([]bpf.ProfileOffcpuValue, drainCountsBatch)
	stacks := map[uint64][]uint64{}
	var out []RawSample
	err := lookupAndDeleteAll(m, keys, values, func(n int) {
		for i := range n {
			k, v := &keys[i], &values[i]
			for _, id := range []uint64{k.UserStack, k.KernelStack, k.InterpStack} {
				if _, ok := stacks[id]; !ok && id != 0 {
					stacks[id] = s.offCPUStack(id)
				}
			}
			rs := rawSample(k, 0, stacks)
			rs.UserLost = rs.UserLost || (k.UserStack != 0 && stacks[k.UserStack] == nil)
			rs.KernelLost = rs.KernelLost || (k.KernelStack != 0 && stacks[k.KernelStack] == nil)
			rs.InterpLost = rs.InterpLost || (k.InterpStack != 0 && stacks[k.InterpStack] == nil)
			rs.Count = (v.Weight + 1<<(offCPUWeightShift-1)) >> offCPUWeightShift
			rs.OffCPUNanos = v.Ns
			rs.Reason = OffCPUReason(k.Flags >> 16)
			out = append(out, rs)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("draining off-CPU counts: %w", err)
	}
	return out, nil
}

// offCPUWeightShift is OFFCPU_WEIGHT_SHIFT: weights count 1/1024 switch-outs.
const offCPUWeightShift = 10

// offCPUStack returns the frames of an off-CPU stack, nil when it was
// evicted.
func (s *Sampler) offCPUStack(id uint64) []uint64 {
	var st bpf.ProfileStackTrace
	if err := s.objs.OffcpuStacks.Lookup(id, &st); err != nil {
		s.offCPUStacksLost.Add(1)
		return nil
	}
	return append([]uint64(nil), st.Ips[:min(int(st.Len), len(st.Ips))]...)
}

func (s *Sampler) generationMaps(gen uint32) (counts, stacks *ebpf.Map) {
	if gen == 0 {
		return s.objs.Counts0, s.objs.Stacks0
	}
	return s.objs.Counts1, s.objs.Stacks1
}

// waitForWriters re-installs the generation's inner maps in their slots; each
// map-of-maps update returns only after an RCU grace period.
func (s *Sampler) waitForWriters(gen uint32, counts, stacks *ebpf.Map) error {
	if err := s.objs.Counts.Update(gen, counts, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("waiting for BPF writers (counts): %w", err)
	}
	if s.offCPU.Load() != nil {
		inner := s.objs.OffcpuCounts0
		if gen == 1 {
			inner = s.objs.OffcpuCounts1
		}
		if err := s.objs.OffcpuCounts.Update(gen, inner, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("waiting for BPF writers (off-CPU counts): %w", err)
		}
	}
	if err := s.objs.Stacks.Update(gen, stacks, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("waiting for BPF writers (stacks): %w", err)
	}
	return nil
}

func drainStacks(m *ebpf.Map, bufs *drainBuffers) (map[uint64][]uint64, error) {
	stacks := make(map[uint64][]uint64)
	keys, values := bufs.stackKeys, bufs.stackValues
	err := lookupAndDeleteAll(m, keys, values, func(n int) {
		for i := range n {
			v := &values[i]
			depth := min(int(v.Len), len(v.Ips))
			stacks[keys[i]] = append([]uint64(nil), v.Ips[:depth]...)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("draining stacks: %w", err)
	}
	return stacks, nil
}

func drainCounts(m *ebpf.Map, bufs *drainBuffers, each func(*bpf.ProfileSampleKey, uint64)) error {
	keys, values := bufs.countKeys, bufs.countValues
	err := lookupAndDeleteAll(m, keys, values, func(n int) {
		for i := range n {
			each(&keys[i], values[i])
		}
	})
	if err != nil {
		return fmt.Errorf("draining sample counts: %w", err)
	}
	return nil
}

// lookupAndDeleteAll empties m in batches, handing each batch to consume.
func lookupAndDeleteAll(m *ebpf.Map, keys, values any, consume func(n int)) error {
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookupAndDelete(&cursor, keys, values, nil)
		if n > 0 {
			consume(n)
		}
		// ErrKeyNotExist marks the last batch (possibly a full one).
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// walkedInterpKinds are the interpreters the BPF side has walkers of
// (enum interp_kind).
var walkedInterpKinds = []int{int(bpf.ProfileInterpKindINTERP_CPYTHON), int(bpf.ProfileInterpKindINTERP_RUBY), int(bpf.ProfileInterpKindINTERP_PHP)}

// Where a sample key's flags keep the interpreter walk's end and runtime
// (FLAG_INTERP_*_SHIFT of bpf/profile.h).
const (
	flagInterpEndShift  = 24
	flagInterpKindShift = 28
)

func rawSample(k *bpf.ProfileSampleKey, count uint64, stacks map[uint64][]uint64) RawSample {
	return RawSample{
		PID:           k.Pid,
		TID:           k.Tid,
		CgroupID:      k.CgroupId,
		Comm:          commString(k.Comm),
		UserStackID:   k.UserStack,
		KernelStackID: k.KernelStack,
		User:          stacks[k.UserStack],
		Kernel:        stacks[k.KernelStack],
		LeafCaller:    k.LeafCaller,
		UserLost:      k.Flags&1 != 0,
		KernelLost:    k.Flags&2 != 0,
		UserEnd:       StackEnd(k.Flags >> 8),
		InterpStackID: k.InterpStack,
		Interp:        stacks[k.InterpStack],
		InterpKind:    uint8(k.Flags >> flagInterpKindShift),
		InterpEnd:     InterpEnd(k.Flags >> flagInterpEndShift & 0xf),
		InterpLost:    k.Flags&4 != 0,
		Count:         count,
	}
}

func commString(c [16]int8) string {
	b := make([]byte, 0, len(c))
	for _, ch := range c {
		if ch == 0 {
			break
		}
		b = append(b, byte(ch))
	}
	return string(b)
}

// Stats are the sampler's counters since load, summed over CPUs.
type Stats struct {
	Samples uint64
	// Dropped counts losses by reason: "counts_map_full" (sample lost),
	// "stacks_map_full" and "stack_hash_collision" (stack lost, sample kept),
	// "process_events_full" (new-process notice lost).
	Dropped map[string]uint64
	// UserFrames counts user frames by how their caller was found: "table"
	// or "frame_pointer" (by cgscope's walker; the kernel's frame-pointer
	// walk of processes without tables is not counted).
	UserFrames map[string]uint64
	// UserStacks counts user stacks by how their walk ended (StackEnds).
	UserStacks map[string]uint64
	// ParentTableStacks counts the CPU samples' user stacks walked by the
	// tables of the process's parent: forked without an exec, its own not
	// loaded yet.
	ParentTableStacks uint64
	// ImagesGoneUnread counts the process images that exec'd or exited
	// before their notice was read: their mappings were not read, so the
	// user frames of their samples stay unnamed.
	ImagesGoneUnread uint64
	// InterpStacks counts interpreter walks by runtime (InterpKinds)
	// and how they ended (InterpEnds).
	InterpStacks map[string]map[string]uint64
	// InterpWalkTime is the time the walks took, by runtime: the BPF cost
	// of interpreter stacks.
	InterpWalkTime map[string]time.Duration
}

// DropReasons lists the reasons Stats.Dropped may hold, in stat-index order.
var DropReasons = []string{"counts_map_full", "stacks_map_full", "stack_hash_collision", "process_events_full"}

// Stats reads the per-CPU counters kept by the BPF program.
func (s *Sampler) Stats() (Stats, error) {
	sum := func(idx bpf.ProfileStatIndex) (uint64, error) {
		var perCPU []uint64
		if err := s.objs.Stats.Lookup(uint32(idx), &perCPU); err != nil {
			return 0, err
		}
		var total uint64
		for _, v := range perCPU {
			total += v
		}
		return total, nil
	}
	st := Stats{Dropped: make(map[string]uint64, len(DropReasons)), ImagesGoneUnread: s.imagesGoneUnread.Load()}
	var err error
	if st.Samples, err = sum(bpf.ProfileStatIndexSTAT_SAMPLES); err != nil {
		return st, fmt.Errorf("reading sampler stats: %w", err)
	}
	for i, reason := range DropReasons {
		v, err := sum(bpf.ProfileStatIndexSTAT_DROP_COUNTS_FULL + bpf.ProfileStatIndex(i))
		if err != nil {
			return st, fmt.Errorf("reading sampler stats: %w", err)
		}
		st.Dropped[reason] = v
	}
	st.UserFrames = map[string]uint64{}
	for name, idx := range map[string]bpf.ProfileStatIndex{"table": bpf.ProfileStatIndexSTAT_FRAMES_TABLE, "frame_pointer": bpf.ProfileStatIndexSTAT_FRAMES_FP} {
		if st.UserFrames[name], err = sum(idx); err != nil {
			return st, fmt.Errorf("reading sampler stats: %w", err)
		}
	}
	st.UserStacks = make(map[string]uint64, len(StackEnds))
	for i, name := range StackEnds {
		if st.UserStacks[name], err = sum(bpf.ProfileStatIndexSTAT_STACK_END + bpf.ProfileStatIndex(i)); err != nil {
			return st, fmt.Errorf("reading sampler stats: %w", err)
		}
	}
	if st.ParentTableStacks, err = sum(bpf.ProfileStatIndexSTAT_STACKS_PARENT_TABLES); err != nil {
		return st, fmt.Errorf("reading sampler stats: %w", err)
	}
	st.InterpStacks = map[string]map[string]uint64{}
	st.InterpWalkTime = map[string]time.Duration{}
	for _, kind := range walkedInterpKinds {
		ends := make(map[string]uint64, len(InterpEnds))
		for i, end := range InterpEnds {
			idx := bpf.ProfileStatIndexSTAT_INTERP_STACK + bpf.ProfileStatIndex(kind*int(bpf.ProfileInterpEndIEND_MAX)+i)
			if ends[end], err = sum(idx); err != nil {
				return st, fmt.Errorf("reading sampler stats: %w", err)
			}
		}
		st.InterpStacks[InterpKinds[kind]] = ends
		ns, err := sum(bpf.ProfileStatIndexSTAT_INTERP_NS + bpf.ProfileStatIndex(kind))
		if err != nil {
			return st, fmt.Errorf("reading sampler stats: %w", err)
		}
		st.InterpWalkTime[InterpKinds[kind]] = time.Duration(ns)
	}
	return st, nil
}

// ProgramStats returns run count and run time of the sampler's program. The
// kernel counts them only while BPF statistics are enabled (bpfstats.Enable).
func (s *Sampler) ProgramStats() ([]bpfstats.Program, error) {
	progs := map[string]*ebpf.Program{bpf.ProfileProgSampleCpu: s.objs.SampleCpu}
	if o := s.offCPU.Load(); o != nil {
		progs[bpf.OffCPUProgOffcpuSwitch] = o.objs.Switch
	}
	return bpfstats.Of(progs)
}

// forgetExited removes the processes that no longer exist from the kernel
// side's known_procs. Its exit hook forgets a process when its thread group
// leader exits, but a later sample can put it back: one of a thread that
// outlives its leader, or one taken between the hook and the end of the
// exit. A new process given that pid would then never be announced, and
// would be symbolized with the old one's mappings.
func (s *Sampler) forgetExited() {
	var (
		pid    uint32
		cookie uint64
		gone   []uint32
	)
	it := s.objs.KnownProcs.Iterate()
	for it.Next(&pid, &cookie) {
		// Signal 0 only checks that the pid names a process; EPERM says it
		// does.
		if unix.Kill(int(pid), 0) == unix.ESRCH {
			gone = append(gone, pid)
		}
	}
	if err := it.Err(); err != nil {
		slog.Debug("listing known processes", "err", err) // the next drain tries again
	}
	s.eventsMu.Lock()
	h := s.handler
	s.eventsMu.Unlock()
	for _, pid := range gone {
		s.objs.KnownProcs.Delete(pid)
		s.objs.UnwindProcs.Delete(pid)
		if h != nil {
			h.ProcessGone(pid, 0)
		}
	}
	if len(gone) == 0 {
		return
	}
	// A CPU's last_proc may still name one of them: moving the epoch makes
	// every CPU look the pid up again. (Not atomic with the BPF side's
	// increments, but any change of the value is enough.)
	var epoch uint64
	if err := s.objs.ProcEpoch.Get(&epoch); err == nil {
		s.objs.ProcEpoch.Set(epoch + 1)
	}
}
