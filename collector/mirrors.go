package collector

import (
	"sync/atomic"

	"github.com/cgscope/cgscope/cgroup"
)

// v1Mirrors tells the file reader, on hybrid hosts, which cgroup2 paths the
// v1 memory and cpu hierarchies mirror (cgroup.Unmirrored), from where
// each collection found the host's threads. Until the first collection,
// and for cgroups made since the last, every path is taken as mirrored.
type v1Mirrors struct {
	v2, memory, cpu *cgroup.Resolver // memory, cpu: nil when not on a v1 hierarchy

	unmirrored atomic.Pointer[unmirrored]
}

type unmirrored struct{ memory, cpu map[string]bool }

// newV1Mirrors indexes the cgroup2 hierarchy and the v1 memory and cpu
// ones.
func newV1Mirrors(m cgroup.Mounts) *v1Mirrors {
	const maxCgroups = 1 << 16
	v := &v1Mirrors{v2: cgroup.NewResolverAt(m.V2, maxCgroups)}
	if mnt, ok := m.V1["memory"]; ok {
		v.memory = cgroup.NewResolverAt(mnt, maxCgroups)
	}
	if mnt, ok := m.V1["cpu"]; ok {
		v.cpu = cgroup.NewResolverAt(mnt, maxCgroups)
	}
	return v
}

// observe takes a collection's thread placements (Counters' OnCollect).
func (v *v1Mirrors) observe(threads []TaskCgroups) {
	var memory, cpu []cgroup.Placement
	for _, t := range threads {
		p := v.v2.Path(t.Cgroup)
		if p == "" {
			continue // gone since
		}
		if v.memory != nil {
			if m := v.memory.Path(t.Memory); m != "" {
				memory = append(memory, cgroup.Placement{V2: p, V1: m})
			}
		}
		if v.cpu != nil {
			if m := v.cpu.Path(t.CPU); m != "" {
				cpu = append(cpu, cgroup.Placement{V2: p, V1: m})
			}
		}
	}
	v.unmirrored.Store(&unmirrored{memory: cgroup.Unmirrored(memory), cpu: cgroup.Unmirrored(cpu)})
}

// checks are the reader's cgroup.MirrorChecks.
func (v *v1Mirrors) checks() cgroup.MirrorChecks {
	return cgroup.MirrorChecks{
		Memory: func(path string) bool { u := v.unmirrored.Load(); return u == nil || !u.memory[path] },
		CPU:    func(path string) bool { u := v.unmirrored.Load(); return u == nil || !u.cpu[path] },
	}
}
