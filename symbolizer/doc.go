// Package symbolizer turns sampled instruction addresses into function names: kernel frames
// from /proc/kallsyms, user frames from /proc/PID/maps plus the mapped ELF objects (.symtab,
// .dynsym, Go .gopclntab), and JIT frames from /tmp/perf-PID.map. It knows nothing of BPF or HTTP.
// A Symbolizer snapshots a process's executable mappings as soon as the profiler first sees
// it (ProcessStarted) and opens each mapped file through /proc/PID/root or
// /proc/PID/map_files (the vDSO is read from memory), so samples of short-lived or
// containerised processes can be named after the process is gone. Objects are keyed by GNU
// (or Go) build ID, falling back to device and inode, so a libc mapped by hundreds of
// processes is opened once; objects (with their open files) and per-process snapshots live
// in bounded LRU caches. An object is parsed on its first lookup, and its tables are not
// loaded but read from the file as lookups need them, through a bounded cache of blocks:
// for Go binaries the .gopclntab (which also yields file and line), searched in place the
// way the runtime does, and which for Go 1.20+ also yields the calls the compiler inlined at
// an address (Frame.Inlined, expanded as runtime.CallersFrames does); otherwise function symbols in a compact sorted table of addresses
// whose names stay in the file. Names are demangled lazily in the pprof style, without
// parameter lists.
// Addresses that cannot be named keep their mapping and object-relative address, so they
// can be symbolized later from the build ID; a name is never guessed. All methods are safe
// for concurrent use. A Symbolizer's Stats are also a Prometheus collector (metrics.go).
package symbolizer
