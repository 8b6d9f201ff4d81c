// Package profiler produces raw profiling data from the kernel: it loads
// cgscope's eBPF programs with cilium/ebpf, attaches the CPU sampler to the
// software cpu-clock on every online CPU, drains the kernel maps into
// RawBatches without losing or double-counting a sample at the boundary,
// and reports new processes the moment they are first sampled. It knows
// nothing of symbols, cgroup paths or export formats.
package profiler
