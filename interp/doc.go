// Package interp puts the frames of interpreted code (Python functions, and
// later Ruby and PHP ones) into profiles, in place of the interpreter loop's
// native frames that ran them.
//
// The work is split three ways:
//
//   - In BPF (bpf/interp.bpf.h), at each sample, a walker reads the sampled
//     thread's interpreter stack from the interpreter's own thread and frame
//     structures and records one word per frame (for CPython: the code
//     object's address and the instruction's index). It is given, per
//     process, a State: how to reach the thread's interpreter state from the
//     thread pointer, and the structure offsets of that interpreter's
//     version.
//   - Here, when a process is first sampled (Registry, told by the pipeline
//     like the unwind tables are), each Runtime looks at the objects the
//     process maps; the one whose interpreter it is reads the running
//     process to find its version, checks the structure layout it would
//     walk against the process itself, and hands the State to the Sink (the
//     sampler's interp_procs map). A version without a layout is counted,
//     logged once, and left to native profiling.
//   - When the pipeline names a sample (Registry.Merge), the runtime decodes
//     the words, reads what the objects they name are called (names, files,
//     line tables) from the process's memory on first use, caches it by
//     address in a byte-bounded cache, and the frames replace the native
//     interpreter-loop frames that ran them, innermost first.
//
// A runtime is a package of its own (interp/python) implementing Runtime
// and Process; nothing here knows a runtime's structures. The package knows
// nothing of BPF maps (the Sink does) nor of HTTP.
package interp
