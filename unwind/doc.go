// Package unwind compiles the call-frame information of ELF objects into
// compact unwind tables that cgscope's BPF sampler walks to unwind user
// stacks of code built without frame pointers, and keeps those tables per
// object, shared by every process that maps it.
//
// A table is a sorted list of rows, one per address range of an object's
// code, each telling how to find the caller's frame from a PC in that
// range: where the canonical frame address (CFA) is (the stack pointer or
// the frame pointer plus an offset, and the few expression forms compilers
// emit for PLT stubs and realigned stacks), that the return address is just
// below it, and where the caller's frame pointer was saved. Rows come from
// .eh_frame, and from .debug_frame where .eh_frame does not cover code;
// identical neighbouring rows are merged, and code no rule covers is marked
// so the sampler walks frame pointers there. Go objects keep frame pointers
// and their .debug_frame does not describe the stack switches of the
// runtime's assembly, so only their .eh_frame (cgo's C code) is used.
//
// Malformed call-frame information is an error for that object (the
// sampler then walks frame pointers through it), never a panic: the parser
// bounds every read and loop, and is fuzzed.
//
// A Registry compiles an object's table once, keyed by its identity (build
// ID, or file identity), hands it to a Sink (the BPF maps, in cgscope) while
// any process maps it, bounded in bytes, and releases it once no process
// does. An object with large call-frame information (Config.OnDemandBytes)
// is compiled only once the walker meets its code and asks for it
// (Sink.WantedTable): a process maps many large libraries it rarely runs.
// It knows nothing of BPF or HTTP.
package unwind
