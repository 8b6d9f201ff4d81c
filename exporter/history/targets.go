package history

import (
	"context"
	"sort"
	"time"

	"github.com/cgscope/cgscope/exporter/pprof"
	"github.com/cgscope/cgscope/internal/attribution"
)

// Targets is the answer of /api/v1/targets: who burnt CPU in a range, or
// (type=off_cpu) who waited off the CPU.
type Targets struct {
	From time.Time `json:"from"`
	To   time.Time `json:"to"`
	// Type is the query's profile type: "cpu" or "off_cpu".
	Type string `json:"type"`
	// TotalSamples are CPU samples, or the times threads left the CPU.
	TotalSamples int64 `json:"total_samples"`
	// TotalCPU is 0 in an off_cpu answer, TotalOffCPU in a cpu answer.
	TotalCPU    float64  `json:"total_cpu_seconds"`
	TotalOffCPU float64  `json:"total_off_cpu_seconds,omitempty"`
	Cgroups     []Target `json:"cgroups"`
	Processes   []Target `json:"processes"`
}

// Target is one cgroup or process and its CPU (or off-CPU) time in the
// range. Share is its fraction of that time, of all that passed the query's
// filters; the lists are sorted by it.
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
	OffCPU      float64 `json:"off_cpu_seconds,omitempty"`
	Share       float64 `json:"share"`
}

type processKey struct {
	pid          uint32
	comm, cgroup string
	workload     attribution.Workload
}

type tally struct{ samples, nanos int64 }

// MaxTargets bounds each list of the answer; the rest is summed in the
// totals only.
const MaxTargets = 500

// Targets sums the query's samples (of its kind) by process and by
// cgroup. It reads the same windows as Profile but sums by label set only,
// never touching a stack.
func (h *History) Targets(ctx context.Context, q Query) (*Targets, error) {
	if err := h.acquire(ctx); err != nil {
		return nil, err
	}
	defer h.release()
	f := newSampleFilter(&q)
	procs := map[processKey]*tally{}
	cgroups := map[processKey]*tally{}
	res := &Targets{From: q.From, To: q.To, Type: q.Kind.String(), Cgroups: []Target{}, Processes: []Target{}}
	var nanos int64
	err := h.scan(ctx, f, false, func(gs *genSums) error {
		d := gs.dict
		for k, s := range gs.sums {
			lr := d.labels[k.label]
			pk := processKey{lr.pid, d.strs[lr.comm], d.strs[lr.cgroup], f.workload(d, lr)}
			add(procs, pk, s)
			add(cgroups, processKey{cgroup: pk.cgroup, workload: pk.workload}, s)
			res.TotalSamples += s.samples
			nanos += s.nanos
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	*seconds(q.Kind, &res.TotalCPU, &res.TotalOffCPU) = float64(nanos) / 1e9
	for k, t := range procs {
		res.Processes = append(res.Processes, target(q.Kind, k, t, nanos))
	}
	for k, t := range cgroups {
		res.Cgroups = append(res.Cgroups, target(q.Kind, k, t, nanos))
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
	t.nanos += s.nanos
}

// seconds returns the field of a kind's time: CPU or off-CPU seconds.
func seconds(k pprof.Kind, cpu, offCPU *float64) *float64 {
	if k == pprof.OffCPU {
		return offCPU
	}
	return cpu
}

// target is the answer's line of a process or cgroup whose time is t of
// totalNanos.
func target(kind pprof.Kind, k processKey, t *tally, totalNanos int64) Target {
	w := k.workload
	tg := Target{PID: k.pid, Comm: k.comm, Cgroup: k.cgroup,
		ContainerID: w.ContainerID, PodUID: w.PodUID, Namespace: w.Namespace, Pod: w.Pod, Container: w.Container,
		Samples: t.samples}
	*seconds(kind, &tg.CPU, &tg.OffCPU) = float64(t.nanos) / 1e9
	if totalNanos > 0 {
		tg.Share = float64(t.nanos) / float64(totalNanos)
	}
	return tg
}

// topTargets keeps the MaxTargets with the largest share.
func topTargets(ts []Target) []Target {
	sort.Slice(ts, func(i, j int) bool {
		if ts[i].Share != ts[j].Share {
			return ts[i].Share > ts[j].Share
		}
		return ts[i].Cgroup+ts[i].Comm < ts[j].Cgroup+ts[j].Comm
	})
	if len(ts) > MaxTargets {
		ts = ts[:MaxTargets]
	}
	return ts
}
