package pipeline

import (
	"strings"
	"time"

	"github.com/cgscope/cgscope/internal/attribution"
	"github.com/cgscope/cgscope/interp"
	"github.com/cgscope/cgscope/profiler"
	"github.com/cgscope/cgscope/symbolizer"
)

// Frames standing in for stacks the kernel could not store; they keep the
// sample's CPU time visible and say why its stack is missing.
var (
	lostUserFrame   = symbolizer.Frame{Function: "[user stack lost: see cgscope_samples_dropped_total]"}
	lostKernelFrame = symbolizer.Frame{Function: "[kernel stack lost: see cgscope_samples_dropped_total]", Kernel: true}
)

type userStackKey struct {
	pid        uint32
	stack      uint64
	leafCaller uint64
	end        profiler.StackEnd
	interp     uint64 // the interpreter's stack id
}

// batchSymbolizer symbolizes each unique stack of a batch once: many sample
// keys (one per thread) share a stack.
type batchSymbolizer struct {
	sym    Symbolizer
	interp Interpreters // nil: native frames only
	user   map[userStackKey][]symbolizer.Frame
	kernel map[uint64][]symbolizer.Frame
}

func (p *Pipeline) symbolize(b *profiler.RawBatch) *Window {
	bs := batchSymbolizer{
		sym:    p.sym,
		interp: p.interp,
		user:   map[userStackKey][]symbolizer.Frame{},
		kernel: map[uint64][]symbolizer.Frame{},
	}
	w := &Window{
		Start:   b.Start,
		End:     b.End,
		Period:  time.Second / time.Duration(p.sampler.Frequency()),
		Samples: make([]Sample, 0, len(b.Samples)),
	}
	for i := range b.Samples {
		w.Samples = append(w.Samples, p.sample(&bs, &b.Samples[i]))
	}
	if len(b.OffCPU) > 0 {
		w.OffCPU = make([]Sample, 0, len(b.OffCPU))
	}
	for i := range b.OffCPU {
		rs := &b.OffCPU[i]
		s := p.sample(&bs, rs)
		s.Frames = withoutTracing(s.Frames)
		s.OffCPU = time.Duration(rs.OffCPUNanos)
		s.Reason = rs.Reason.String()
		w.OffCPU = append(w.OffCPU, s)
	}
	return w
}

// sample symbolizes one raw sample and labels it with its cgroup.
func (p *Pipeline) sample(bs *batchSymbolizer, rs *profiler.RawSample) Sample {
	kernel := bs.kernelFrames(rs)
	user := bs.userFrames(rs)
	// One sample's frames; a stack of one kind only is used as it is (capped,
	// so an append by a consumer copies), not copied.
	var frames []symbolizer.Frame
	switch {
	case len(kernel) == 0:
		frames = user[:len(user):len(user)]
	case len(user) == 0:
		frames = kernel[:len(kernel):len(kernel)]
	default:
		frames = make([]symbolizer.Frame, 0, len(kernel)+len(user))
		frames = append(append(frames, kernel...), user...)
	}
	cgroup := p.cgroupPath(rs.CgroupID)
	return Sample{
		PID:      rs.PID,
		TID:      rs.TID,
		Comm:     rs.Comm,
		CgroupID: rs.CgroupID,
		Cgroup:   cgroup,
		Workload: p.workloadOf(cgroup),
		Frames:   frames,
		Count:    rs.Count,
	}
}

func (p *Pipeline) workloadOf(cgroup string) *attribution.Workload {
	if p.workloads == nil || cgroup == "" {
		return nil
	}
	return p.workloads.Lookup(cgroup)
}

func (p *Pipeline) cgroupPath(id uint64) string {
	if p.cgroups == nil {
		return ""
	}
	return p.cgroups.Path(id)
}

func (bs *batchSymbolizer) kernelFrames(rs *profiler.RawSample) []symbolizer.Frame {
	if rs.KernelLost {
		return []symbolizer.Frame{lostKernelFrame}
	}
	if rs.KernelStackID == 0 {
		return nil
	}
	if f, ok := bs.kernel[rs.KernelStackID]; ok {
		return f
	}
	f := bs.sym.Kernel(rs.Kernel)
	bs.kernel[rs.KernelStackID] = f
	return f
}

// withoutTracing drops the leading frames of the machinery that ran the
// off-CPU program (the program itself, bpf_trace_run4,
// __traceiter_sched_switch): the stack starts where the scheduler was, as
// a CPU sample's starts where the code was. Only off-CPU stacks: a CPU
// sample that lands in a BPF program shows that program's cost.
func withoutTracing(frames []symbolizer.Frame) []symbolizer.Frame {
	for len(frames) > 1 && isTracingFrame(frames[0].Function) {
		frames = frames[1:]
	}
	return frames
}

func isTracingFrame(fn string) bool {
	for _, prefix := range []string{"bpf_prog_", "bpf_trace_run", "__bpf_trace_", "__traceiter_", "bpf_trampoline_"} {
		if strings.HasPrefix(fn, prefix) {
			return true
		}
	}
	return false
}

func (bs *batchSymbolizer) userFrames(rs *profiler.RawSample) []symbolizer.Frame {
	if rs.UserLost {
		return []symbolizer.Frame{lostUserFrame}
	}
	if rs.UserStackID == 0 {
		return nil
	}
	key := userStackKey{pid: rs.PID, stack: rs.UserStackID, leafCaller: rs.LeafCaller, end: rs.UserEnd, interp: rs.InterpStackID}
	if f, ok := bs.user[key]; ok {
		return f
	}
	f := bs.sym.User(rs.PID, bs.withLeafCaller(rs))
	if bs.interp != nil && len(rs.Interp) > 0 {
		end := ""
		if rs.InterpEnd.Truncated() {
			end = rs.InterpEnd.String()
		}
		f = bs.interp.Merge(rs.PID, interp.Kind(rs.InterpKind), f, rs.Interp, end)
	}
	if rs.UserEnd.Truncated() {
		f = append(f, truncatedFrame(rs.UserEnd))
	}
	bs.user[key] = f
	return f
}

// truncatedFrame ends a user stack whose walk stopped before the outermost
// frame, saying why (see cgscope_user_stacks_total): such a stack never
// passes for whole.
func truncatedFrame(end profiler.StackEnd) symbolizer.Frame {
	return symbolizer.Frame{Function: "[truncated: " + end.String() + "]"}
}

// withLeafCaller inserts the caller that frame-pointer unwinding skipped.
// When the leaf function has no frame of its own (or the PC is in a prologue
// or epilogue), the frame-pointer chain starts at the caller's caller, and the
// caller's return address sits at the user stack pointer, where BPF read it
// (rs.LeafCaller, already checked to follow a call instruction). It is
// inserted only if it lies in executable code of the process and is not
// already the next frame, which is the case when the leaf has a frame.
func (bs *batchSymbolizer) withLeafCaller(rs *profiler.RawSample) []uint64 {
	stack := rs.User
	lc := rs.LeafCaller
	if lc == 0 || len(stack) == 0 || (len(stack) > 1 && stack[1] == lc) {
		return stack
	}
	if !bs.sym.ExecutableAddress(rs.PID, lc) {
		return stack
	}
	out := make([]uint64, 0, len(stack)+1)
	out = append(out, stack[0], lc)
	return append(out, stack[1:]...)
}
