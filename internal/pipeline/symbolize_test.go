package pipeline

import (
	"slices"
	"testing"
	"time"

	"github.com/cgscope/cgscope/profiler"
	"github.com/cgscope/cgscope/symbolizer"
)

// batchSampler drains one fixed batch.
type batchSampler struct{ batch profiler.RawBatch }

func (s *batchSampler) Drain() (*profiler.RawBatch, error) { b := s.batch; return &b, nil }
func (s *batchSampler) Frequency() int                     { return 100 }
func (s *batchSampler) Stop() error                        { return nil }

// addrSymbolizer names nothing: each frame keeps its address, so a test
// sees the stack the pipeline asked for. Addresses from execLo up are
// executable code.
type addrSymbolizer struct {
	execLo    uint64
	userCalls int
}

func (s *addrSymbolizer) Kernel(addrs []uint64) []symbolizer.Frame { return frames(addrs, true) }
func (s *addrSymbolizer) User(_ uint32, addrs []uint64) []symbolizer.Frame {
	s.userCalls++
	return frames(addrs, false)
}
func (s *addrSymbolizer) ExecutableAddress(_ uint32, addr uint64) bool { return addr >= s.execLo }
func (s *addrSymbolizer) ProcessStarted(uint32) error                  { return nil }
func (s *addrSymbolizer) ProcessForked(uint32, uint32) error           { return nil }
func (s *addrSymbolizer) ProcessVanished(uint32)                       {}

func frames(addrs []uint64, kernel bool) []symbolizer.Frame {
	out := make([]symbolizer.Frame, len(addrs))
	for i, a := range addrs {
		out[i] = symbolizer.Frame{Address: a, Kernel: kernel}
	}
	return out
}

type fixedPaths map[uint64]string

func (p fixedPaths) Path(id uint64) string { return p[id] }

func addresses(fs []symbolizer.Frame) []uint64 {
	var out []uint64
	for _, f := range fs {
		out = append(out, f.Address)
	}
	return out
}

func flushOne(t *testing.T, samples ...profiler.RawSample) (*Window, *addrSymbolizer) {
	t.Helper()
	sym := &addrSymbolizer{execLo: 0x1000}
	s := &batchSampler{batch: profiler.RawBatch{Start: time.Unix(0, 0), End: time.Unix(10, 0), Samples: samples}}
	w, err := New(s, sym, fixedPaths{7: "/a"}, time.Hour).Flush()
	if err != nil {
		t.Fatal(err)
	}
	return w, sym
}

// The caller that frame-pointer unwinding skips (the word at the user stack
// pointer) is inserted after the leaf only when it lies in executable code
// and is not already the next frame.
func TestLeafCallerInsertion(t *testing.T) {
	for _, c := range []struct {
		name       string
		stack      []uint64
		leafCaller uint64
		want       []uint64
	}{
		{"frameless leaf", []uint64{0x1100, 0x1300}, 0x1200, []uint64{0x1100, 0x1200, 0x1300}},
		{"leaf with a frame: caller already next", []uint64{0x1100, 0x1200, 0x1300}, 0x1200, []uint64{0x1100, 0x1200, 0x1300}},
		{"not executable", []uint64{0x1100, 0x1300}, 0x10, []uint64{0x1100, 0x1300}},
		{"none read", []uint64{0x1100, 0x1300}, 0, []uint64{0x1100, 0x1300}},
		{"leaf alone", []uint64{0x1100}, 0x1200, []uint64{0x1100, 0x1200}},
	} {
		t.Run(c.name, func(t *testing.T) {
			w, _ := flushOne(t, profiler.RawSample{PID: 1, CgroupID: 7, UserStackID: 9, User: c.stack, LeafCaller: c.leafCaller, Count: 1})
			if got := addresses(w.Samples[0].Frames); !slices.Equal(got, c.want) {
				t.Errorf("frames %#x, want %#x", got, c.want)
			}
		})
	}
}

// A stack the kernel could not store keeps the sample's CPU time under a
// frame that says so, kernel and user alike; the stack that was stored is
// still symbolized.
func TestLostStackFrames(t *testing.T) {
	w, _ := flushOne(t,
		profiler.RawSample{PID: 1, CgroupID: 7, UserLost: true, KernelStackID: 3, Kernel: []uint64{0xffff1}, Count: 4},
		profiler.RawSample{PID: 2, CgroupID: 8, KernelLost: true, UserStackID: 5, User: []uint64{0x1100}, Count: 2})
	a, b := w.Samples[0], w.Samples[1]
	if len(a.Frames) != 2 || a.Frames[0].Address != 0xffff1 || a.Frames[1].Function != lostUserFrame.Function || a.Count != 4 {
		t.Errorf("user stack lost: frames %+v, count %d", a.Frames, a.Count)
	}
	if len(b.Frames) != 2 || b.Frames[0].Function != lostKernelFrame.Function || !b.Frames[0].Kernel || b.Frames[1].Address != 0x1100 {
		t.Errorf("kernel stack lost: frames %+v", b.Frames)
	}
	if a.Cgroup != "/a" || b.Cgroup != "" {
		t.Errorf("cgroups %q and %q, want /a and none", a.Cgroup, b.Cgroup)
	}
	if w.Period != 10*time.Millisecond {
		t.Errorf("period %v at 100 Hz", w.Period)
	}
}

// Threads sharing a stack have it symbolized once per batch.
func TestStackSymbolizedOncePerBatch(t *testing.T) {
	stack := []uint64{0x1100, 0x1300}
	_, sym := flushOne(t,
		profiler.RawSample{PID: 1, TID: 1, UserStackID: 9, User: stack, Count: 1},
		profiler.RawSample{PID: 1, TID: 2, UserStackID: 9, User: stack, Count: 1})
	if sym.userCalls != 1 {
		t.Errorf("symbolized %d times, want once", sym.userCalls)
	}
}

// An off-CPU kernel stack, taken in a program at a tracepoint, starts
// where the scheduler was, as a CPU sample's stack starts where the code
// was: the program and the tracing machinery that ran it are left out.
func TestWithoutTracing(t *testing.T) {
	names := func(fs []symbolizer.Frame) []string {
		var out []string
		for _, f := range fs {
			out = append(out, f.Function)
		}
		return out
	}
	stack := []symbolizer.Frame{{Function: "bpf_prog_9fc8ed37175a73cf_offcpu_switch"}, {Function: "bpf_trace_run4"},
		{Function: "__traceiter_sched_switch"}, {Function: "__schedule"}, {Function: "schedule"}, {Function: "do_nanosleep"}}
	if got, want := names(withoutTracing(stack)), []string{"__schedule", "schedule", "do_nanosleep"}; !slices.Equal(got, want) {
		t.Errorf("withoutTracing = %v, want %v", got, want)
	}
	cpu := []symbolizer.Frame{{Function: "copy_page"}, {Function: "do_fault"}}
	if got := names(withoutTracing(cpu)); !slices.Equal(got, []string{"copy_page", "do_fault"}) {
		t.Errorf("a stack without tracing frames changed: %v", got)
	}
	only := []symbolizer.Frame{{Function: "bpf_prog_x"}}
	if got := withoutTracing(only); len(got) != 1 {
		t.Errorf("a stack of tracing frames only must keep its last frame, got %v", names(got))
	}
}
