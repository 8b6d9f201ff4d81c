package profiler

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/cgscope/cgscope/bpf"
	"github.com/cgscope/cgscope/interp"
)

// The kernel side of interpreter stacks (bpf/interp.bpf.h): InterpreterProcs
// writes what package interp found of each process's interpreter into the
// samplers' interp_procs map. It is the interp.Sink of cgscope.

// InterpEnd is how an interpreter walk ended (enum interp_end of
// bpf/interp.h).
type InterpEnd uint8

// The ends of an interpreter walk.
const (
	InterpComplete   InterpEnd = InterpEnd(bpf.ProfileInterpEndIEND_COMPLETE)
	InterpDepth      InterpEnd = InterpEnd(bpf.ProfileInterpEndIEND_DEPTH)
	InterpReadFailed InterpEnd = InterpEnd(bpf.ProfileInterpEndIEND_READ_FAILED)
	InterpNoThread   InterpEnd = InterpEnd(bpf.ProfileInterpEndIEND_NO_THREAD)
	InterpBadThread  InterpEnd = InterpEnd(bpf.ProfileInterpEndIEND_BAD_THREAD)
	InterpNoFrames   InterpEnd = InterpEnd(bpf.ProfileInterpEndIEND_NO_FRAMES)
)

// InterpEnds names the ends, in order, for metrics and the [truncated]
// frame.
var InterpEnds = []string{"complete", "depth_limit", "read_failed", "no_thread_state", "bad_thread_state", "no_frames"}

// String names the end as InterpEnds does.
func (e InterpEnd) String() string {
	if int(e) < len(InterpEnds) {
		return InterpEnds[e]
	}
	return fmt.Sprintf("end%d", e)
}

// Truncated reports whether the walk recorded frames but stopped before
// the outermost.
func (e InterpEnd) Truncated() bool { return e == InterpDepth || e == InterpReadFailed }

// InterpKinds names the walkers (enum interp_kind) as OpenTelemetry's
// profile.frame.type names their runtimes; "" for none.
var InterpKinds = []string{"", "cpython", "ruby", "php"}

// InterpreterProcs writes processes' interpreters into the samplers' map.
// Safe for concurrent use.
type InterpreterProcs struct {
	procs *ebpf.Map

	tpOnce sync.Once
	tp     uint64 // offset of thread.fsbase in struct task_struct
	tpErr  error
}

// Interpreters returns the writer of the samplers' interpreter map.
func (s *Sampler) Interpreters() *InterpreterProcs { return s.interp }

// LoadProcess gives the walkers pid's interpreter for its image.
func (ip *InterpreterProcs) LoadProcess(pid uint32, image uint64, st *interp.State) error {
	ip.tpOnce.Do(func() { ip.tp, ip.tpErr = threadPointerOffset() })
	if ip.tpErr != nil {
		return ip.tpErr
	}
	p := bpf.ProfileInterpProc{
		Cookie: image, Kind: uint32(st.Kind), TaskTp: ip.tp,
		Tls: st.TLS, Tls2: st.TLS2, Addr: st.Addr, Val: st.Values, Off: st.Offsets,
	}
	if st.TwoLevel {
		p.Flags |= uint32(bpf.ProfileInterpProcFlagsINTERP_TLS_TWO_LEVEL)
	}
	if err := ip.procs.Update(pid, &p, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("interpreter of pid %d: %w", pid, err)
	}
	return nil
}

// UnloadProcess forgets pid's interpreter.
func (ip *InterpreterProcs) UnloadProcess(pid uint32) error {
	if err := ip.procs.Delete(pid); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("interpreter of pid %d: %w", pid, err)
	}
	return nil
}

// threadPointerOffset finds where the kernel keeps a task's user thread
// pointer (the fs base on x86-64: task_struct.thread.fsbase), in its BTF.
// The samplers carry no CO-RE relocation, so that profiling starts without
// parsing the kernel's BTF; this parses it once, when the first
// interpreter is found.
func threadPointerOffset() (uint64, error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return 0, fmt.Errorf("reading the kernel's BTF for the thread pointer: %w", err)
	}
	var task *btf.Struct
	if err := spec.TypeByName("task_struct", &task); err != nil {
		return 0, fmt.Errorf("kernel BTF: %w", err)
	}
	thread, ok := member(task, "thread")
	if !ok {
		return 0, errors.New("kernel BTF: task_struct has no thread")
	}
	ts, ok := btf.UnderlyingType(thread.Type).(*btf.Struct)
	if !ok {
		return 0, errors.New("kernel BTF: task_struct.thread is not a struct")
	}
	fs, ok := member(ts, "fsbase")
	if !ok {
		return 0, errors.New("kernel BTF: thread_struct has no fsbase (not x86-64?)")
	}
	return uint64(thread.Offset.Bytes() + fs.Offset.Bytes()), nil
}

func member(s *btf.Struct, name string) (btf.Member, bool) {
	for _, m := range s.Members {
		if m.Name == name {
			return m, true
		}
	}
	return btf.Member{}, false
}
