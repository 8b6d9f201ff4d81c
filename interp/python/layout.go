package python

import "github.com/cgscope/cgscope/interp"

// layout is where one CPython minor version keeps what the walker and the
// namer read, in bytes, for the default (GIL, non-debug) build on x86-64.
// CPython keeps these layouts fixed within a minor version.
//
// Every number comes from CPython's own headers, compiled with offsetof()
// against the version's Include/ tree (Py_BUILD_CORE) and checked against
// the DWARF of a build of that version (gdb's &((T*)0)->field): 3.11 from
// Debian 12's python3.11-dev 3.11.2 headers (identical to upstream 3.11.2
// Include/) and pyenv's 3.11.7 libpython; 3.12 from CPython 3.12.5 Include/
// and pyenv's 3.12.1 libpython; 3.13 from Debian 13's libpython3.13-dev
// 3.13.5 headers and pyenv's 3.13.0 libpython, whose _Py_DebugOffsets
// (the table CPython 3.13 publishes at the start of _PyRuntime for
// debuggers) agree. The file of each field is cited below; the line
// numbers are 3.11.2's / 3.12.1's / 3.13.0's.
type layout struct {
	minor int // 3.minor

	// _PyRuntimeState (Include/internal/pycore_runtime.h):
	// interpreters.head (88 / 90 / 253) and autoTSSkey._key, the
	// thread-specific-data key of each thread's PyThreadState
	// (gilstate.autoTSSkey in 3.11: 43 / 124 / 289); Py_tss_t
	// (Include/cpython/pythread.h) is {int _is_initialized; pthread_key_t
	// _key;}, so _is_initialized is 4 bytes before _key.
	runtimeInterpreters uint64
	runtimeTSSKey       uint64

	// PyInterpreterState.threads.head (Include/internal/pycore_interp.h:
	// 85 / 96 / 131).
	interpThreads uint64

	// PyThreadState (Include/cpython/pystate.h): next; thread_id (132 /
	// 181 / 145), the creating thread's pthread_self(); and the current
	// frame: through cframe (110 / 161) and _PyCFrame.current_frame (51 /
	// 79) in 3.11 and 3.12, current_frame itself (125) in 3.13.
	tstateNext     uint16
	tstateThreadID uint16
	tstateFrame    uint16
	cframeFrame    uint16 // interp.NoOffset: no _PyCFrame (3.13)

	// _PyInterpreterFrame (Include/internal/pycore_frame.h): f_code (53 /
	// 52; f_executable in 3.13: 62), previous (56 / 53 / 63), prev_instr
	// (61 / 63; instr_ptr in 3.13: 69) and what marks an activation of the
	// interpreter loop: is_entry (63) in 3.11; from 3.12 on, owner (72 /
	// 72) of the frame each activation pushes on the C stack,
	// FRAME_OWNED_BY_CSTACK (48 / 58) = 3.
	frameCode, framePrevious, frameInstr, frameEntry uint16
	frameSize                                        uint16 // bytes read per frame: through the last field above
	entryOwner                                       uint64 // 0: frameEntry is is_entry; else the owner of C-stack frames

	// PyCodeObject (Include/cpython/code.h, _PyCode_DEF): co_firstlineno
	// (73 / 144 / 108), co_filename (87 / 158 / 122), co_qualname (89 /
	// 160 / 124), co_linetable (90 / 161 / 125), _co_firsttraceable (94 /
	// 166 / 131) and co_code_adaptive (99 / 171 / 136), the first
	// instruction; also PyCode_Type's tp_basicsize
	// (Objects/codeobject.c).
	codeFirstLine, codeFilename, codeQualname, codeLinetable uint16
	codeFirstTraceable, codeAdaptive                         uint16

	// sizeof(PyASCIIObject) and sizeof(PyCompactUnicodeObject)
	// (Include/cpython/unicodeobject.h: 206, 218 / 149, 159 / 151, 161):
	// where an ASCII and another compact string's characters start (3.12
	// dropped wstr).
	asciiSize, compactSize uint16

	// debugOffsets: the process publishes _Py_DebugOffsets at the start
	// of _PyRuntime (3.13, Include/internal/pycore_runtime.h:47-195),
	// which is checked against this layout.
	debugOffsets bool
}

// Structure offsets that do not change across the versions supported.
const (
	objectType    = 8  // PyObject.ob_type (Include/object.h)
	varObjectSize = 16 // PyVarObject.ob_size
	typeName      = 24 // PyTypeObject.tp_name (Include/cpython/object.h)
	typeBasicSize = 32 // PyTypeObject.tp_basicsize
	typeItemSize  = 40 // PyTypeObject.tp_itemsize
	bytesData     = 32 // PyBytesObject.ob_sval (Include/cpython/bytesobject.h)
	unicodeLength = 16 // PyASCIIObject.length (Include/cpython/unicodeobject.h)
	unicodeState  = 32 // PyASCIIObject.state: interned:2, kind:3, compact:1, ascii:1
	codeUnitBytes = 2  // sizeof(_Py_CODEUNIT): PyCode_Type's tp_itemsize
)

// layouts are the supported versions, by minor.
var layouts = map[int]*layout{
	11: {
		minor:               11,
		runtimeInterpreters: 40, runtimeTSSKey: 596,
		interpThreads: 16,
		tstateNext:    8, tstateThreadID: 152, tstateFrame: 56, cframeFrame: 8,
		frameCode: 32, framePrevious: 48, frameInstr: 56, frameEntry: 68, frameSize: 72, entryOwner: 0,
		codeFirstLine: 72, codeFilename: 112, codeQualname: 128, codeLinetable: 136, codeFirstTraceable: 168, codeAdaptive: 184,
		asciiSize: 48, compactSize: 72,
	},
	12: {
		minor:               12,
		runtimeInterpreters: 40, runtimeTSSKey: 1548,
		interpThreads: 72,
		tstateNext:    8, tstateThreadID: 136, tstateFrame: 56, cframeFrame: 0,
		frameCode: 0, framePrevious: 8, frameInstr: 56, frameEntry: 70, frameSize: 72, entryOwner: 3,
		codeFirstLine: 68, codeFilename: 112, codeQualname: 128, codeLinetable: 136, codeFirstTraceable: 176, codeAdaptive: 192,
		asciiSize: 40, compactSize: 56,
	},
	13: {
		minor:               13,
		runtimeInterpreters: 632, runtimeTSSKey: 2164,
		interpThreads: 7344,
		tstateNext:    8, tstateThreadID: 152, tstateFrame: 72, cframeFrame: interp.NoOffset,
		frameCode: 0, framePrevious: 8, frameInstr: 56, frameEntry: 70, frameSize: 72, entryOwner: 3,
		codeFirstLine: 68, codeFilename: 112, codeQualname: 128, codeLinetable: 136, codeFirstTraceable: 184, codeAdaptive: 200,
		asciiSize: 40, compactSize: 56,
		debugOffsets: true,
	},
}

// state is the BPF walker's State for a process of this layout whose
// thread states are at the thread pointer + tls (or, with twoLevel, at
// tls2 in the block there).
func (l *layout) state(tls int64, tls2 uint64, twoLevel bool) *interp.State {
	st := &interp.State{Kind: interp.KindCPython, TLS: tls, TLS2: tls2, TwoLevel: twoLevel}
	// The order of enum cpython_offset and enum cpython_value (bpf/interp.h).
	st.Offsets = [interp.MaxOffsets]uint16{
		l.tstateThreadID, l.tstateFrame, l.cframeFrame,
		l.frameCode, l.framePrevious, l.frameInstr, l.frameEntry, l.frameSize,
		l.codeAdaptive,
	}
	st.Values[0] = l.entryOwner
	return st
}
