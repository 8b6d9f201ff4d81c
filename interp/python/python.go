// Package python is CPython's runtime for package interp: it finds the
// interpreter in a process (the python3.X executable or libpython3.X),
// reads its version from the running process, checks the structure layout
// of that version (layout.go, taken from CPython's headers) against the
// process before any of it is used, tells the BPF walker where each
// thread's PyThreadState is and how its frames are laid out, and names the
// frames it records: module-qualified co_qualname, file and line.
//
// Supported: CPython 3.11, 3.12 and 3.13 (default builds: the GIL, no
// Py_DEBUG) on x86-64 with glibc. Anything else is counted and profiled
// natively.
package python

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/cgscope/cgscope/interp"
)

// Runtime is CPython's interp.Runtime.
type Runtime struct {
	objects interp.Objects[*objectFacts]
}

// New returns CPython's runtime.
func New() *Runtime { return &Runtime{} }

// Name is CPython's profile.frame.type.
func (*Runtime) Name() string { return "cpython" }

// Candidate reports whether the file may hold CPython: its name is
// python3.X or libpython3.X (a venv's python links to the real one, which
// is what is mapped).
func (*Runtime) Candidate(path string) bool { return nameMinor(path) > 0 }

// glibc's struct pthread (nptl/descr.h) keeps the first 32 keys' values in
// specific_1stblock, 16-byte {seq, data} pairs from byte 0x310 on x86-64
// (glibc 2.36: gdb's offsetof with libc6-dbg, and pthread_getspecific's
// code: self + (key + 0x31) * 16 + 8), then pointers to second-level
// blocks of 32 pairs (specific[]). The walker reads a thread's
// PyThreadState there, as pthread_getspecific(autoTSSkey) would.
const (
	pthreadSpecific   = 0x310
	pthreadKeySize    = 16
	pthreadKeyData    = 8
	pthreadFirstBlock = 32
)

// maxCheckedThreads bounds the threads whose slot is checked.
const maxCheckedThreads = 16

// Attach finds the interpreter in the candidate, checks it against the
// running process and returns it.
func (rt *Runtime) Attach(t *interp.Target) (interp.Process, error) {
	bin, err := rt.objects.Get(t, func(r io.ReaderAt) (*objectFacts, error) { return readObjectFacts(r, t.Candidate.Path) })
	if err != nil {
		return nil, err
	}
	bias, err := bin.bias(&t.Candidate)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", interp.ErrNotInterpreter, err)
	}
	hex, version, err := readVersion(t, bin, bias)
	if err != nil {
		return nil, err
	}
	lay := layouts[int(hex>>16&0xff)]
	if hex>>24 != 3 || lay == nil {
		return nil, &interp.UnsupportedError{Version: version, Reason: "no structure layout for this version"}
	}
	if err := checkCodeType(t, lay, bin.codeType+bias); err != nil {
		return nil, &interp.UnsupportedError{Version: version, Reason: err.Error(), Build: true, Retry: errors.Is(err, errNotRelocated)}
	}
	rtAddr := bin.runtime + bias
	if lay.debugOffsets {
		if err := checkDebugOffsets(t, lay, rtAddr, hex); err != nil {
			return nil, &interp.UnsupportedError{Version: version, Reason: err.Error(), Build: true}
		}
	}
	st, err := threadStates(t, lay, rtAddr)
	if err != nil {
		var unsupported *interp.UnsupportedError
		if errors.As(err, &unsupported) {
			unsupported.Version = version
		}
		return nil, err
	}
	return newProcess(t, lay, bin, bias, st, version), nil
}

// readVersion reads Py_Version (PY_VERSION_HEX, Include/pylifecycle.h,
// 3.11 on) from the process. Older versions have none: they are named by
// their file.
func readVersion(t *interp.Target, bin *objectFacts, bias uint64) (uint64, string, error) {
	if bin.version == 0 {
		v := "3.?"
		if bin.nameVersion > 0 {
			v = fmt.Sprintf("3.%d", bin.nameVersion)
		}
		return 0, v, &interp.UnsupportedError{Version: v, Reason: "no Py_Version (CPython before 3.11)"}
	}
	hex, err := t.Mem.U64(bin.version + bias)
	if err != nil {
		return 0, "", err
	}
	return hex, fmt.Sprintf("%d.%d.%d", hex>>24&0xff, hex>>16&0xff, hex>>8&0xff), nil
}

// errNotRelocated: a pointer of the interpreter's static data is not
// relocated yet (the process is still being loaded).
var errNotRelocated = errors.New("not relocated yet")

// checkCodeType checks PyCode_Type as the process has it: named "code",
// its fixed part ending where the layout's first instruction is, and
// 2-byte code units (Objects/codeobject.c sets tp_basicsize to
// offsetof(PyCodeObject, co_code_adaptive), tp_itemsize to
// sizeof(_Py_CODEUNIT)). A build with other object headers (Py_DEBUG's,
// Py_TRACE_REFS', free-threaded) fails it.
func checkCodeType(t *interp.Target, lay *layout, addr uint64) error {
	var b [typeItemSize + 8]byte
	if err := t.Mem.Read(addr, b[:]); err != nil {
		return fmt.Errorf("reading PyCode_Type: %w", err)
	}
	name, err := t.Mem.CString(interp.Word(b[:], typeName), 16)
	if err != nil || name == "" {
		// tp_name is a pointer the dynamic loader relocates in a shared
		// libpython: a process sampled while it is still loading has
		// it unrelocated. Tried again, as for an interpreter not
		// initialized yet.
		return fmt.Errorf("%w: PyCode_Type's name unreadable (%v)", errNotRelocated, err)
	}
	if name != "code" {
		return fmt.Errorf("PyCode_Type's name is %q, not \"code\"", name)
	}
	if basic, item := interp.Word(b[:], typeBasicSize), interp.Word(b[:], typeItemSize); basic != uint64(lay.codeAdaptive) || item != codeUnitBytes {
		return fmt.Errorf("code objects have %d bytes and %d-byte units, the layout says %d and %d", basic, item, lay.codeAdaptive, codeUnitBytes)
	}
	return nil
}

// checkDebugOffsets compares what the process publishes of its layout
// (_Py_DebugOffsets, first in _PyRuntime) with the table's.
func checkDebugOffsets(t *interp.Target, lay *layout, rt uint64, hex uint64) error {
	var b [584]byte // sizeof(_Py_DebugOffsets) in 3.13
	if err := t.Mem.Read(rt, b[:]); err != nil {
		return fmt.Errorf("reading _Py_DebugOffsets: %w", err)
	}
	if !bytes.Equal(b[:8], []byte("xdebugpy")) {
		return errors.New("no _Py_DebugOffsets cookie at _PyRuntime")
	}
	if v := interp.Word(b[:], 8); v != hex {
		return fmt.Errorf("_Py_DebugOffsets says version %#x, Py_Version %#x", v, hex)
	}
	if interp.Word(b[:], 16) != 0 {
		return errors.New("a free-threaded build")
	}
	for _, c := range []struct {
		at   int
		want uint64
		name string
	}{
		{40, lay.runtimeInterpreters, "runtime_state.interpreters_head"},
		{72, lay.interpThreads, "interpreter_state.threads_head"},
		{168, uint64(lay.tstateNext), "thread_state.next"},
		{184, uint64(lay.tstateFrame), "thread_state.current_frame"},
		{192, uint64(lay.tstateThreadID), "thread_state.thread_id"},
		{232, uint64(lay.framePrevious), "interpreter_frame.previous"},
		{240, uint64(lay.frameCode), "interpreter_frame.executable"},
		{248, uint64(lay.frameInstr), "interpreter_frame.instr_ptr"},
		{264, uint64(lay.frameEntry), "interpreter_frame.owner"},
		{280, uint64(lay.codeFilename), "code_object.filename"},
		{296, uint64(lay.codeQualname), "code_object.qualname"},
		{304, uint64(lay.codeLinetable), "code_object.linetable"},
		{312, uint64(lay.codeFirstLine), "code_object.firstlineno"},
		{344, uint64(lay.codeAdaptive), "code_object.co_code_adaptive"},
		{528, bytesData, "bytes_object.ob_sval"},
		{560, uint64(lay.asciiSize), "unicode_object.asciiobject_size"},
	} {
		if got := interp.Word(b[:], c.at); got != c.want {
			return fmt.Errorf("_Py_DebugOffsets %s is %d, the layout says %d", c.name, got, c.want)
		}
	}
	return nil
}

// threadStates finds where the walker reads each thread's PyThreadState:
// the slot of the autoTSSkey in the thread's glibc thread-specific data,
// checked on the threads the interpreter lists (each names its thread by
// pthread_self(), which on x86-64 is the thread pointer the walker starts
// from). It returns ErrNotReady until the interpreter has a thread.
func threadStates(t *interp.Target, lay *layout, rt uint64) (*interp.State, error) {
	var key [8]byte // Py_tss_t
	if err := t.Mem.Read(rt+lay.runtimeTSSKey-4, key[:]); err != nil {
		return nil, err
	}
	if binary.NativeEndian.Uint32(key[:4]) != 1 {
		return nil, interp.ErrNotReady
	}
	k := uint64(binary.NativeEndian.Uint32(key[4:]))
	if k >= 1024 { // PTHREAD_KEYS_MAX
		return nil, &interp.UnsupportedError{Reason: fmt.Sprintf("thread-specific data key %d out of range", k), Build: true}
	}
	is, err := t.Mem.U64(rt + lay.runtimeInterpreters)
	if err != nil {
		return nil, err
	}
	if is == 0 {
		return nil, interp.ErrNotReady
	}
	ts, err := t.Mem.U64(is + lay.interpThreads)
	if err != nil {
		return nil, err
	}
	if ts == 0 {
		return nil, interp.ErrNotReady
	}
	// The listed threads' slots must hold their states. A state can
	// name another thread for a while (one created but not started yet
	// names its creator; one whose thread ended names a thread pointer
	// glibc may have reused), so one that does is enough; with a C
	// library other than glibc (musl keeps its data elsewhere) none does.
	// Nor does any while the interpreter starts, before it stores the
	// main thread's: that is tried again.
	verified := false
	for checked := 0; ts != 0 && checked < maxCheckedThreads && !verified; checked++ {
		tp, err := t.Mem.U64(ts + uint64(lay.tstateThreadID))
		if err != nil {
			return nil, err
		}
		if tp != 0 {
			got, err := specific(t.Mem, tp, k)
			verified = err == nil && got == ts
		}
		if ts, err = t.Mem.U64(ts + uint64(lay.tstateNext)); err != nil {
			return nil, err
		}
	}
	if !verified {
		return nil, &interp.UnsupportedError{Reason: "no thread's state is where glibc keeps thread-specific data (another C library?)", Build: true, Retry: true}
	}
	if k < pthreadFirstBlock {
		return lay.state(pthreadSpecific+int64(k)*pthreadKeySize+pthreadKeyData, 0, false), nil
	}
	second := pthreadSpecific + pthreadFirstBlock*pthreadKeySize + 8*int64(k/pthreadFirstBlock)
	return lay.state(second, k%pthreadFirstBlock*pthreadKeySize+pthreadKeyData, true), nil
}

// specific reads key's value in the glibc thread-specific data of the
// thread whose thread pointer is tp, as pthread_getspecific does
// (nptl/pthread_getspecific.c).
func specific(mem *interp.Memory, tp, key uint64) (uint64, error) {
	if key < pthreadFirstBlock {
		return mem.U64(tp + pthreadSpecific + key*pthreadKeySize + pthreadKeyData)
	}
	block, err := mem.U64(tp + pthreadSpecific + pthreadFirstBlock*pthreadKeySize + 8*(key/pthreadFirstBlock))
	if err != nil || block == 0 {
		return 0, err
	}
	return mem.U64(block + key%pthreadFirstBlock*pthreadKeySize + pthreadKeyData)
}
