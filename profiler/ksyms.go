package profiler

import (
	"bytes"
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

// Sizes shared with bpf/profile.h.
const (
	ksymBatch     = 12   // KSYM_BATCH: addresses per run of kernel_symbols
	ksymNamesSize = 8192 // KSYM_NAMES_SIZE: bytes of its output
)

// kernelNamer names kernel addresses by running the kernel_symbols program,
// which asks the kernel's own symbol index. It spares cgscope reading and
// indexing /proc/kallsyms: about 75 ms of CPU and several MiB of heap at
// start-up, for the few hundred kernel addresses a profile usually holds.
type kernelNamer struct {
	mu    sync.Mutex // one run at a time: runs share the output buffer
	prog  *ebpf.Program
	out   *ebpf.Variable
	req   [ksymBatch * 8]byte
	names [ksymNamesSize]byte
}

// kernelNamerObjects is the part of the Profile object kernelNamer needs.
type kernelNamerObjects struct {
	Prog  *ebpf.Program  `ebpf:"kernel_symbols"`
	Names *ebpf.Variable `ebpf:"ksym_names"`
}

// loadKernelNamer loads kernel_symbols on its own, so that a kernel refusing
// it costs only this (the symbolizer then reads /proc/kallsyms) and not the
// sampler.
func loadKernelNamer(spec *ebpf.CollectionSpec, cache *btf.Cache) (*kernelNamer, error) {
	var objs kernelNamerObjects
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{Cache: cache}); err != nil {
		return nil, fmt.Errorf("loading the kernel symbol program: %w", err)
	}
	if objs.Names.Size() != ksymNamesSize {
		objs.Prog.Close()
		return nil, fmt.Errorf("kernel symbol program: output of %d bytes, want %d", objs.Names.Size(), ksymNamesSize)
	}
	return &kernelNamer{prog: objs.Prog, out: objs.Names}, nil
}

// Names returns the kernel's name of the function containing each address;
// "" where no symbol covers it. Module functions are named without their
// module.
func (k *kernelNamer) Names(addrs []uint64) ([]string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	names := make([]string, 0, len(addrs))
	for len(addrs) > 0 {
		n := min(len(addrs), ksymBatch)
		batch, err := k.run(addrs[:n])
		if err != nil {
			return nil, err
		}
		names = append(names, batch...)
		addrs = addrs[n:]
	}
	return names, nil
}

// run names up to ksymBatch addresses with one run of the program.
func (k *kernelNamer) run(addrs []uint64) ([]string, error) {
	clear(k.req[:])
	for i, a := range addrs {
		nativeEndian.PutUint64(k.req[i*8:], a)
	}
	ret, err := k.prog.Run(&ebpf.RunOptions{Context: k.req[:]})
	if err != nil {
		return nil, fmt.Errorf("running the kernel symbol program: %w", err)
	}
	if n := int32(ret); n <= 0 || n > ksymNamesSize {
		return nil, fmt.Errorf("kernel symbol program: bpf_snprintf returned %d", n)
	}
	if err := k.out.Get(&k.names); err != nil {
		return nil, fmt.Errorf("reading kernel symbol names: %w", err)
	}
	return parseKernelNames(k.names[:ret-1], len(addrs))
}

var errShortNames = errors.New("kernel symbol program: fewer lines than addresses")

// parseKernelNames reads n lines of "%ps" output: "name", "name [module]", or
// "0x..." where no symbol covers the address.
func parseKernelNames(out []byte, n int) ([]string, error) {
	names := make([]string, n)
	for i := range names {
		line, rest, ok := bytes.Cut(out, []byte{'\n'})
		if !ok {
			return nil, errShortNames
		}
		out = rest
		if bytes.HasPrefix(line, []byte("0x")) {
			continue
		}
		if name, _, _ := bytes.Cut(line, []byte{' '}); len(name) > 0 {
			names[i] = string(name)
		}
	}
	return names, nil
}

func (k *kernelNamer) close() error {
	if k == nil {
		return nil
	}
	return k.prog.Close()
}
