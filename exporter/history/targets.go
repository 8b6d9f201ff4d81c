package history

import (
	"context"
	"sort"
	"time"

	"github.com/cgscope/cgscope/internal/attribution"
)

// Targets is the answer of /api/v1/targets: who burnt CPU in a range.
type Targets struct {
	From         time.Time `json:"from"`
	To           time.Time `json:"to"`
	TotalSamples int64     `json:"total_samples"`
	TotalCPU     float64   `json:"total_cpu_seconds"`
	Cgroups      []Target  `json:"cgroups"`
	Processes    []Target  `json:"processes"`
}

// Target is one cgroup or process and its CPU in the range. Share is its
// fraction of all samples that passed the query's filters.
type Target struct {
	PID         uint32  `json:"pid,omitempty"`
	Comm        string  `json:"comm,omitempty"`
	Cgroup      string  `json:"cgroup"`
	ContainerID string  `json:"container_id,omitempty"`
	PodUID      string  `json:"pod_uid,omitempty"`
	Namespace   string  `json:"namespace,omitempty"`
	Pod         string  `json:"pod,omitempty"`
	Container   string  `json:"container,omitempty"`
	Samples     int64   `json:"samples"`
	CPU         float64 `json:"cpu_seconds"`
	Share       float64 `json:"share"`
}

type processKey struct {
	pid          uint32
	comm, cgroup string
	workload     attribution.Workload
}

type tally struct{ samples, cpuNanos int64 }

// MaxTargets bounds each list of the answer; the rest is summed in the
// totals only.
const MaxTargets = 500

// Targets sums the query's samples by process and by cgroup. It reads the
// same windows as Profile but sums by label set only, never touching a
// stack.
func (h *History) Targets(ctx context.Context, q Query) (*Targets, error) {
	if err := h.acquire(ctx); err != nil {
		return nil, err
	}
	defer h.release()
	f := newSampleFilter(&q)
	procs := map[processKey]*tally{}
	cgroups := map[processKey]*tally{}
	res := &Targets{From: q.From, To: q.To, Cgroups: []Target{}, Processes: []Target{}}
	var cpuNanos int64
	err := h.scan(ctx, q.From, q.To, f, false, func(gs *genSums) error {
		d := gs.dict
		for k, s := range gs.sums {
			lr := d.labels[k.label]
			pk := processKey{lr.pid, d.strs[lr.comm], d.strs[lr.cgroup], f.workload(d, lr)}
			add(procs, pk, s)
			add(cgroups, processKey{cgroup: pk.cgroup, workload: pk.workload}, s)
			res.TotalSamples += s.samples
			cpuNanos += s.nanos
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	res.TotalCPU = float64(cpuNanos) / 1e9
	for k, t := range procs {
		res.Processes = append(res.Processes, f.target(k, t, res.TotalSamples))
	}
	for k, t := range cgroups {
		res.Cgroups = append(res.Cgroups, f.target(k, t, res.TotalSamples))
	}
	res.Processes = topTargets(res.Processes)
	res.Cgroups = topTargets(res.Cgroups)
	return res, nil
}

func add[K comparable](m map[K]*tally, k K, s rowSum) {
	t := m[k]
	if t == nil {
		t = &tally{}
		m[k] = t
	}
	t.samples += s.samples
	t.cpuNanos += s.nanos
}

func (f *sampleFilter) target(k processKey, t *tally, total int64) Target {
	w := k.workload
	tg := Target{PID: k.pid, Comm: k.comm, Cgroup: k.cgroup,
		ContainerID: w.ContainerID, PodUID: w.PodUID, Namespace: w.Namespace, Pod: w.Pod, Container: w.Container,
		Samples: t.samples, CPU: float64(t.cpuNanos) / 1e9}
	if total > 0 {
		tg.Share = float64(t.samples) / float64(total)
	}
	return tg
}

func topTargets(ts []Target) []Target {
	sort.Slice(ts, func(i, j int) bool {
		if ts[i].Samples != ts[j].Samples {
			return ts[i].Samples > ts[j].Samples
		}
		return ts[i].Cgroup+ts[i].Comm < ts[j].Cgroup+ts[j].Comm
	})
	if len(ts) > MaxTargets {
		ts = ts[:MaxTargets]
	}
	return ts
}
