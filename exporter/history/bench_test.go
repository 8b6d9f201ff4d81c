package history

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cgscope/cgscope/internal/attribution"
	"github.com/cgscope/cgscope/internal/pipeline"
	"github.com/cgscope/cgscope/internal/store"
	"github.com/cgscope/cgscope/symbolizer"
)

// benchHost models the host: 200 busy processes (20 programs, 10
// replicas each, 4 threads each) sampled at 19 Hz on each of benchCPUs busy
// CPUs. Each program has 40 hot stacks, 12 to 30 frames deep, over its own
// 400 functions plus shared libc and kernel frames, hit with a Zipf skew.
const (
	benchProcs    = 200
	benchPrograms = 20
	benchThreads  = 4
	benchStacks   = 40
	benchHz       = 19
	benchCPUs     = 8
	benchInterval = 10 * time.Second
)

type benchProgram struct {
	stacks [][]symbolizer.Frame
}

func newBenchPrograms(r *rand.Rand) []benchProgram {
	libc := &symbolizer.Mapping{Path: "/usr/lib/x86_64-linux-gnu/libc.so.6", BuildID: "c0ffee"}
	progs := make([]benchProgram, benchPrograms)
	for p := range progs {
		m := &symbolizer.Mapping{Path: fmt.Sprintf("/usr/bin/service-%d", p), BuildID: fmt.Sprintf("%040x", p)}
		for range benchStacks {
			depth := 12 + r.IntN(19)
			st := make([]symbolizer.Frame, depth)
			for i := range st {
				switch {
				case i < 2 && r.IntN(3) == 0:
					a := uint64(0xffffffff81000000) + uint64(r.IntN(2000)*64)
					st[i] = symbolizer.Frame{Address: a, ObjAddress: a, Function: fmt.Sprintf("kernel_fn_%d", a%2000), Kernel: true}
				case i < 4 && r.IntN(4) == 0:
					a := uint64(0x20000 + r.IntN(200)*32)
					st[i] = symbolizer.Frame{ObjAddress: a, Function: fmt.Sprintf("libc_fn_%d", a%200), Mapping: libc}
				default:
					fn := r.IntN(400)
					st[i] = symbolizer.Frame{ObjAddress: uint64(0x400000 + fn*256 + r.IntN(8)*4),
						Function: fmt.Sprintf("github.com/acme/service%d/pkg%d.(*Handler).Method%d", p, fn/20, fn),
						File:     fmt.Sprintf("/src/service%d/pkg%d/file%d.go", p, fn/20, fn%7), Line: 10 + fn, Mapping: m,
						Inlined: benchInlined(p, fn)}
				}
			}
			progs[p].stacks = append(progs[p].stacks, st)
		}
	}
	return progs
}

// benchInlined is what a Go compiler inlines into function fn of program p:
// nothing in most functions, one call in every fifth, two in every tenth.
func benchInlined(p, fn int) []symbolizer.InlinedCall {
	if fn%5 != 0 {
		return nil
	}
	calls := []symbolizer.InlinedCall{{Function: fmt.Sprintf("github.com/acme/service%d/util.small%d", p, fn),
		File: fmt.Sprintf("/src/service%d/util/small.go", p), Line: 3 + fn%11}}
	if fn%10 == 0 {
		calls = append(calls, symbolizer.InlinedCall{Function: fmt.Sprintf("github.com/acme/service%d/util.wrapper%d", p, fn),
			File: fmt.Sprintf("/src/service%d/util/wrap.go", p), Line: 20 + fn%13})
	}
	return calls
}

// benchWindow draws one interval of samples.
func benchWindow(r *rand.Rand, progs []benchProgram, zipf *rand.Zipf, start time.Time) *pipeline.Window {
	type key struct{ proc, tid, stack int }
	counts := map[key]uint64{}
	n := int(benchHz * benchCPUs * benchInterval / time.Second)
	for range n {
		counts[key{r.IntN(benchProcs), r.IntN(benchThreads), int(zipf.Uint64())}]++
	}
	w := &pipeline.Window{Start: start, End: start.Add(benchInterval), Period: time.Second / benchHz}
	for k, c := range counts {
		prog := k.proc % benchPrograms
		pid := uint32(10000 + k.proc)
		w.Samples = append(w.Samples, pipeline.Sample{
			PID: pid, TID: pid + uint32(k.tid), Comm: fmt.Sprintf("service-%d", prog), CgroupID: uint64(k.proc),
			Cgroup:   fmt.Sprintf("/kubepods.slice/kubepods-pod%08d.slice/cri-containerd-%064x.scope", k.proc, k.proc),
			Workload: benchWorkload(k.proc, prog),
			Frames:   progs[prog].stacks[k.stack], Count: c,
		})
	}
	return w
}

// benchWorkload names process proc's container as the CRI runtime would:
// a few namespaces, one pod per process. Each call returns a new value, as
// a resolver's listings do.
func benchWorkload(proc, prog int) *attribution.Workload {
	return &attribution.Workload{
		ContainerID: fmt.Sprintf("%064x", proc),
		Namespace:   fmt.Sprintf("team-%d", prog%3),
		Pod:         fmt.Sprintf("service-%d-%d", prog, proc),
		Container:   "app",
	}
}

// fillHistory stores d of benchmark windows ending at end.
func fillHistory(b *testing.B, st store.Store, end time.Time, d time.Duration) *History {
	r := rand.New(rand.NewPCG(1, 2))
	progs := newBenchPrograms(r)
	zipf := rand.NewZipf(r, 1.3, 1, benchStacks-1)
	h := New(Options{Store: st, QueueSize: 4})
	h.Start()
	for t := end.Add(-d); t.Before(end); t = t.Add(benchInterval) {
		w := benchWindow(r, progs, zipf, t)
		h.queue <- w // blocking: the benchmark must not drop
	}
	h.Stop()
	return h
}

var benchDay = flag.Bool("day", false, "BenchmarkHistoryQuery: fill and query a whole day")

// benchQueryFill is how much history BenchmarkHistoryQuery writes first:
// a full day takes minutes to generate, so it is opt-in with -args -day.
func benchQueryFill() time.Duration {
	if *benchDay {
		return 24*time.Hour + 10*time.Minute
	}
	return time.Hour + 10*time.Minute
}

var benchEnd = time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC).Add(7*time.Minute + 3*time.Second)

// BenchmarkHistoryStorage reports stored bytes per hour (windows plus the
// dictionary records of their segments) on disk for the model host. The
// store's defaults without a retention give 1 h segments, as the daemon's
// default 24 h retention does, so the dictionary is repeated once an hour.
func BenchmarkHistoryStorage(b *testing.B) {
	for range b.N {
		st, err := store.OpenDisk(store.DiskOptions{Dir: b.TempDir(), MaxBytes: 1 << 40, NoSync: true})
		if err != nil {
			b.Fatal(err)
		}
		fillHistory(b, st, benchEnd, time.Hour)
		s := st.Stats()
		b.ReportMetric(float64(s.Bytes), "bytes/hour")
		b.ReportMetric(float64(s.Bytes)*24/(1<<20), "MiB/day")
		st.Close()
	}
}

// BenchmarkHistoryQuery reports the latency of a whole-host profile over
// the last 1 h and 24 h of a day of history, unaligned to segments.
func BenchmarkHistoryQuery(b *testing.B) {
	st, err := store.OpenDisk(store.DiskOptions{Dir: b.TempDir(), MaxBytes: 1 << 40, NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	fill := benchQueryFill()
	h := fillHistory(b, st, benchEnd, fill)
	for _, d := range []time.Duration{time.Hour, 24 * time.Hour} {
		if d > fill {
			continue
		}
		b.Run(d.String(), func(b *testing.B) {
			q := Query{From: benchEnd.Add(-d), To: benchEnd}
			for range b.N {
				p, err := h.Profile(context.Background(), q)
				if err != nil || len(p.Sample) == 0 {
					b.Fatal(err)
				}
			}
		})
	}
}
