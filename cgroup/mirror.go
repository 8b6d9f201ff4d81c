package cgroup

import (
	"path"
	"strings"
)

// On hybrid hosts the memory and cpu controllers sit on v1 hierarchies,
// and the file reader reads a cgroup2 cgroup's memory and CPU bandwidth
// from the v1 cgroup of the same path. That is right where the v1 cgroup
// holds the same threads, as systemd arranges for the units it gives
// memory or CPU accounting, and wrong where it does not: a container
// engine that makes its cgroups in the v1 hierarchies only leaves its
// containers' threads in its own service's cgroup2 cgroup, whose v1
// namesake holds the engine alone. Unmirrored tells them apart.

// Placement is where one or more threads are: their cgroup2 path and
// their path in one v1 hierarchy.
type Placement struct {
	V2, V1 string
}

// Unmirrored returns the paths whose v1 cgroup does not hold the same
// threads as the cgroup2 cgroup of that path, the files of both covering
// descendants too, given where every thread is. A thread in cgroup2 path q
// and v1 path m belongs to the subtree of every ancestor of q (q included)
// in cgroup2 and of every ancestor of m in v1: the paths that are
// ancestors of one but not of the other see it on one side only. A path
// no thread is placed under is mirrored (both are empty).
func Unmirrored(placements []Placement) map[string]bool {
	out := map[string]bool{}
	seen := map[Placement]bool{}
	for _, p := range placements {
		if p.V2 == p.V1 || seen[p] {
			continue
		}
		seen[p] = true
		q, m := path.Clean("/"+p.V2), path.Clean("/"+p.V1)
		common := commonAncestor(q, m)
		for _, side := range []string{q, m} {
			for a := side; a != common; a = path.Dir(a) {
				out[a] = true
			}
		}
	}
	return out
}

// commonAncestor returns the deepest path that is an ancestor of both (or
// one of them): "/a/b/c" and "/a/d" have "/a".
func commonAncestor(a, b string) string {
	for {
		if a == b || strings.HasPrefix(b, a+"/") || a == "/" {
			return a
		}
		a = path.Dir(a)
	}
}
