package exporter

import (
	"context"
	"sort"
	"time"

	"github.com/google/pprof/profile"

	"github.com/cgscope/cgscope/profiler"
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
	Samples     int64   `json:"samples"`
	CPU         float64 `json:"cpu_seconds"`
	Share       float64 `json:"share"`
}

type processKey struct {
	pid          uint32
	comm, cgroup string
}

type tally struct{ samples, cpuNanos int64 }

// MaxTargets bounds each list of the answer; the rest is summed in the
// totals only.
const MaxTargets = 500

// Targets sums the query's samples by process and by cgroup. It reads the
// same records as Profile but keeps only the sums, never the stacks.
func (h *History) Targets(ctx context.Context, q HistoryQuery) (*Targets, error) {
	if err := h.acquire(ctx); err != nil {
		return nil, err
	}
	defer h.release()
	f := &sampleFilter{q: &q, containers: map[string]profiler.ContainerIdentity{}}
	procs := map[processKey]*tally{}
	cgroups := map[string]*tally{}
	res := &Targets{From: q.From, To: q.To, Cgroups: []Target{}, Processes: []Target{}}
	var cpuNanos int64
	err := h.scan(ctx, h.plan(q.From, q.To, uint8(len(h.levels)), false), func(p *profile.Profile) error {
		f.apply(p)
		for _, s := range p.Sample {
			k := processKey{uint32(numLabel(s, "pid")), label(s, "comm"), label(s, "cgroup")}
			add(procs, k, s)
			add(cgroups, k.cgroup, s)
			res.TotalSamples += s.Value[0]
			cpuNanos += s.Value[1]
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
	for cg, t := range cgroups {
		res.Cgroups = append(res.Cgroups, f.target(processKey{cgroup: cg}, t, res.TotalSamples))
	}
	res.Processes = topTargets(res.Processes)
	res.Cgroups = topTargets(res.Cgroups)
	return res, nil
}

func add[K comparable](m map[K]*tally, k K, s *profile.Sample) {
	t := m[k]
	if t == nil {
		t = &tally{}
		m[k] = t
	}
	t.samples += s.Value[0]
	t.cpuNanos += s.Value[1]
}

func (f *sampleFilter) target(k processKey, t *tally, total int64) Target {
	id := f.container(k.cgroup)
	tg := Target{PID: k.pid, Comm: k.comm, Cgroup: k.cgroup, ContainerID: id.ContainerID, PodUID: id.PodUID,
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
