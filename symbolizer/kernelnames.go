package symbolizer

import "sync"

// KernelNamer names kernel text addresses by asking the running kernel: one name per
// address, "" where no symbol covers it. The profiler provides one (through BPF), which
// spares the Symbolizer reading and indexing /proc/kallsyms: that costs about 75 ms of CPU
// and several MiB of heap, for the few hundred kernel addresses a profile usually holds.
type KernelNamer func(addrs []uint64) ([]string, error)

// maxKernelNames bounds the kernel names remembered by address: far more than the kernel
// functions a host runs in practice, so steady state asks the kernel for nothing.
const maxKernelNames = 16384

// kernelNames remembers the names a KernelNamer gave.
type kernelNames struct {
	mu    sync.Mutex
	namer KernelNamer
	names *lru[uint64, string]
}

// SetKernelNamer makes Kernel name addresses with namer rather than from /proc/kallsyms,
// which is then read only if namer fails. Call it before the first Kernel call.
func (s *Symbolizer) SetKernelNamer(namer KernelNamer) {
	s.knames.mu.Lock()
	defer s.knames.mu.Unlock()
	s.knames.namer = namer
	s.knames.names = newLRU[uint64, string](maxKernelNames)
}

// hasKernelNamer reports whether a KernelNamer is set.
func (s *Symbolizer) hasKernelNamer() bool {
	s.knames.mu.Lock()
	defer s.knames.mu.Unlock()
	return s.knames.namer != nil
}

// nameKernelFrames names frames (whose Address is set) with the KernelNamer, asking it
// once for all the addresses not named before. It reports false, naming nothing, when
// there is no namer or it failed.
func (s *Symbolizer) nameKernelFrames(frames []Frame) bool {
	k := &s.knames
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.namer == nil {
		return false
	}
	var ask []uint64
	for i := range frames {
		look := lookupAddress(frames[i].Address, i == 0)
		if name, ok := k.names.get(look); ok {
			frames[i].Function = name
		} else {
			ask = append(ask, look)
		}
	}
	if len(ask) == 0 {
		return true
	}
	names, err := k.namer(ask)
	if err != nil || len(names) != len(ask) {
		s.errors.Add(1)
		for i := range frames {
			frames[i].Function = ""
		}
		return false
	}
	for i, look := range ask {
		k.names.put(look, names[i])
	}
	for i := range frames {
		if frames[i].Function == "" {
			frames[i].Function, _ = k.names.peek(lookupAddress(frames[i].Address, i == 0))
		}
	}
	return true
}
