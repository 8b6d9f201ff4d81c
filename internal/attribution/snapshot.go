package attribution

import (
	"slices"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The labels the kubelet puts on every container it creates through CRI.
const (
	labelPodName       = "io.kubernetes.pod.name"
	labelPodNamespace  = "io.kubernetes.pod.namespace"
	labelPodUID        = "io.kubernetes.pod.uid"
	labelContainerName = "io.kubernetes.container.name"
)

// merge builds the next snapshot from a listing: everything listed, plus
// what the previous snapshot had that the runtime no longer lists but was
// seen within Retain (a deleted pod's last samples and its cgroup's grace
// period still get names). An unchanged workload keeps its pointer, so
// callers that intern by pointer see the same value across listings. Past
// MaxContainers, the longest unseen entries go first.
func (r *Resolver) merge(prev *snapshot, pods []*runtimeapi.PodSandbox, containers []*runtimeapi.Container, now time.Time) *snapshot {
	next := &snapshot{containers: map[string]*entry{}, pods: map[string]*entry{}, at: now}
	sandboxes := make(map[string]*runtimeapi.PodSandbox, len(pods))
	for _, p := range pods {
		sandboxes[p.GetId()] = p
		w := sandboxWorkload(p)
		next.containers[p.GetId()] = keep(prev.containers[p.GetId()], w, now)
		if w.PodUID != "" {
			next.pods[w.PodUID] = keep(prev.pods[w.PodUID], w, now)
		}
	}
	for _, c := range containers {
		w := containerWorkload(c, sandboxes[c.GetPodSandboxId()])
		next.containers[c.GetId()] = keep(prev.containers[c.GetId()], w, now)
	}
	retain := func(from, to map[string]*entry) {
		for id, e := range from {
			if _, listed := to[id]; !listed && now.Sub(e.lastSeen) < r.cfg.Retain {
				to[id] = e
			}
		}
	}
	retain(prev.containers, next.containers)
	retain(prev.pods, next.pods)
	r.stats.evicted.Add(uint64(bound(next.containers, r.cfg.MaxContainers) + bound(next.pods, r.cfg.MaxContainers)))
	return next
}

// keep returns prev's workload with a new lastSeen when it equals w, so
// pointers stay stable across listings, else a new entry for w.
func keep(prev *entry, w *Workload, now time.Time) *entry {
	if prev != nil && *prev.w == *w {
		return &entry{w: prev.w, lastSeen: now}
	}
	return &entry{w: w, lastSeen: now}
}

// bound deletes the least recently seen entries beyond max and returns how
// many it deleted.
func bound(m map[string]*entry, max int) int {
	over := len(m) - max
	if over <= 0 {
		return 0
	}
	type aged struct {
		id   string
		seen time.Time
	}
	all := make([]aged, 0, len(m))
	for id, e := range m {
		all = append(all, aged{id, e.lastSeen})
	}
	slices.SortFunc(all, func(a, b aged) int { return a.seen.Compare(b.seen) })
	for _, a := range all[:over] {
		delete(m, a.id)
	}
	return over
}

func sandboxWorkload(p *runtimeapi.PodSandbox) *Workload {
	md := p.GetMetadata()
	return &Workload{
		ContainerID: p.GetId(),
		PodUID:      firstNonEmpty(md.GetUid(), p.GetLabels()[labelPodUID]),
		Namespace:   firstNonEmpty(md.GetNamespace(), p.GetLabels()[labelPodNamespace]),
		Pod:         firstNonEmpty(md.GetName(), p.GetLabels()[labelPodName]),
	}
}

// containerWorkload names a container from the kubelet's labels, falling
// back to its sandbox's and its own metadata (runtimes and tools other than
// the kubelet may create containers without the labels).
func containerWorkload(c *runtimeapi.Container, sandbox *runtimeapi.PodSandbox) *Workload {
	l := c.GetLabels()
	md := sandbox.GetMetadata()
	return &Workload{
		ContainerID: c.GetId(),
		PodUID:      firstNonEmpty(l[labelPodUID], md.GetUid()),
		Namespace:   firstNonEmpty(l[labelPodNamespace], md.GetNamespace()),
		Pod:         firstNonEmpty(l[labelPodName], md.GetName()),
		Container:   firstNonEmpty(l[labelContainerName], c.GetMetadata().GetName()),
	}
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
