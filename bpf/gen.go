// Package bpf holds cgscope's eBPF programs (the C sources beside this file)
// and the Go bindings bpf2go generates for them. The generated .o files and
// Go files are committed, so building cgscope needs no clang; `make generate`
// rebuilds them with the pinned clang and generated_test.go checks that what is
// committed matches the sources.
package bpf

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -D__TARGET_ARCH_x86" -target amd64 -type sample_key -type stack_trace -type new_process_event -type process_event_kind -type stat_index -type stack_end -type cfa_kind -type unwind_row -type unwind_leaf_key -type unwind_leaf -type unwind_table -type unwind_range -type unwind_proc -type unwind_proc_flags -type unwind_probe_args -type offcpu_value -type interp_proc -type interp_kind -type interp_end -type interp_proc_flags -type cpython_offset -type cpython_value -type ruby_offset Profile profile.bpf.c -- -I.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -D__TARGET_ARCH_x86" -target amd64 -type cgroup_counters -type cgroup_stat_index CgroupStats cgroups.bpf.c -- -I.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -D__TARGET_ARCH_x86" -target amd64 -type offcpu_task -type offcpu_value -type offcpu_reason -type offcpu_stat_index OffCPU offcpu.bpf.c -- -I.
