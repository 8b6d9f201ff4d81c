// Package profiler is cgscope's CPU sampler. It checks what the host grants
// (Preflight), loads the sampling programs with cilium/ebpf (Load) and
// attaches them to the software cpu-clock on every online CPU (Attach),
// drains the kernel maps into RawBatches without losing or double-counting
// a sample at the boundary, reports new processes the moment they are first
// sampled, names kernel addresses through the kernel itself, and exports
// its own counters (Stats, and a Prometheus collector). The per-cgroup
// counter programs are package collector's. It knows nothing of symbols,
// cgroup paths or export formats.
package profiler
