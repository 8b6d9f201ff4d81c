package interp

import (
	"errors"
	"fmt"
	"io"

	"github.com/cgscope/cgscope/symbolizer"
)

// Kind is which BPF walker reads a process's interpreter stack (enum
// interp_kind of bpf/interp.h).
type Kind uint32

// The walkers. Ruby and PHP are reserved for the runtimes to come.
const (
	KindNone    Kind = 0
	KindCPython Kind = 1
	KindRuby    Kind = 2
	KindPHP     Kind = 3
	// Kinds is how many kinds the BPF side counts walks of.
	Kinds = 4
)

// MaxOffsets and MaxValues are the sizes of State's arrays (struct
// interp_proc's off[] and val[]).
const (
	MaxOffsets = 16
	MaxValues  = 4
)

// NoOffset marks a structure field the interpreter's version does not have
// (INTERP_NO_OFFSET).
const NoOffset = 0xffff

// State is what the BPF walker of a process is given (struct interp_proc,
// less what the Sink adds: the image cookie and the host's thread-pointer
// offset in the kernel's task_struct).
//
// Every runtime reaches the sampled thread's interpreter state the same
// way: the word at the thread pointer (the x86-64 fs base) + TLS is the
// state, or with TwoLevel the block holding it, at TLS2 in that block.
// That covers a thread-local variable (Ruby's ruby_current_ec: a negative
// TLS in glibc's static TLS block) and glibc's thread-specific data (CPython's
// autoTSSkey slot). Addr is a per-process address a runtime may need
// instead (PHP's executor_globals). Offsets and Values are the runtime's
// own, named by its enum in bpf/interp.h.
type State struct {
	Kind     Kind
	TLS      int64
	TLS2     uint64
	TwoLevel bool
	Addr     uint64
	Values   [MaxValues]uint64
	Offsets  [MaxOffsets]uint16
}

// Sink is where States go: in cgscope, the sampler's BPF map
// (profiler.InterpreterProcs).
type Sink interface {
	// LoadProcess gives the walkers pid's interpreter for its image (the
	// cookie the sampler gave the image: it is used for no other image).
	LoadProcess(pid uint32, image uint64, st *State) error
	UnloadProcess(pid uint32) error
}

// Mapping is an executable mapping of a process, as a Source reports it.
type Mapping struct {
	Start, Limit, Offset uint64
	// Path is the mapped file's path as the process sees it ("" for
	// anonymous code).
	Path string
	// BuildID is the object's GNU build ID in hex, "" if it has none.
	BuildID string
	// Object identifies the mapped object (comparable); nil for
	// anonymous code and files that cannot be read.
	Object any
}

// Source reports processes' executable mappings and reads their objects:
// in cgscope, the symbolizer, which opened them already (containers' files
// included, through /proc/PID/root).
type Source interface {
	Mappings(pid uint32) ([]Mapping, error)
	ReadObject(pid uint32, object any, read func(io.ReaderAt) error) error
}

// Frame is an interpreted frame, named.
type Frame struct {
	symbolizer.Frame
	// Entry marks the first (innermost) frame an activation of the
	// interpreter loop runs: the frames up to and including it replace one
	// native frame of the loop. The last frame ends the last activation
	// whether marked or not.
	Entry bool
}

// Target is a process a Runtime inspects.
type Target struct {
	PID uint32
	// Mem reads the process's memory.
	Mem *Memory
	// Mappings are its executable mappings.
	Mappings []Mapping
	// Candidate is the mapping the Runtime named a candidate.
	Candidate Mapping
	// Read reads the candidate's object.
	Read func(read func(io.ReaderAt) error) error
	// Cache holds what Process.Frames reads of the process, bounded for
	// all processes together; Owner is this process's key in it.
	Cache *Cache
	Owner uint64
}

// Runtime finds one interpreter in processes.
type Runtime interface {
	// Name is the runtime as OpenTelemetry's profile.frame.type names it
	// ("cpython", "ruby", "php"): the Interpreter of its frames.
	Name() string
	// Candidate reports, from its path alone, whether a mapped object
	// may hold this runtime's interpreter: only candidates are read.
	Candidate(path string) bool
	// Attach reads the candidate and the running process and returns the
	// process's interpreter: an error wrapping ErrNotInterpreter when the
	// candidate is none, ErrNotReady when the interpreter has not started
	// yet (Attach is tried again), an *UnsupportedError for a version or
	// build it cannot walk.
	Attach(t *Target) (Process, error)
}

// Process is the interpreter of one process image.
type Process interface {
	// State is what its BPF walker is given.
	State() *State
	// Version names the interpreter's version ("3.11.2").
	Version() string
	// Frames decodes the words its walker recorded (innermost first) and
	// names their frames: a frame the words name that cannot be read keeps
	// an empty Function. It is called from one goroutine at a time.
	Frames(words []uint64) []Frame
	// IsLoop reports whether a native frame is the interpreter loop's:
	// the frames of an activation replace it. leaf is set for the
	// innermost native frame (an exact address, not a return address).
	IsLoop(f *symbolizer.Frame, leaf bool) bool
}

// Errors a Runtime's Attach returns.
var (
	// ErrNotInterpreter: the candidate holds no interpreter of the
	// runtime (a library with a like name).
	ErrNotInterpreter = errors.New("not this runtime's interpreter")
	// ErrNotReady: the interpreter has not initialized yet.
	ErrNotReady = errors.New("interpreter not initialized yet")
)

// UnsupportedError reports an interpreter the runtime cannot walk: a version
// its layout table does not hold, or a build whose structures do not match
// the table (then Reason says which check failed).
type UnsupportedError struct {
	Version string // as the process reports it; "" if unknown
	Reason  string
	// Build is set when the version is supported but the process's
	// structures failed a check.
	Build bool
	// Retry is set when the check may pass once the interpreter has
	// finished starting: Attach is tried again, as for ErrNotReady.
	Retry bool
}

func (e *UnsupportedError) Error() string {
	if e.Version == "" {
		return "unsupported interpreter: " + e.Reason
	}
	return fmt.Sprintf("unsupported interpreter %s: %s", e.Version, e.Reason)
}
