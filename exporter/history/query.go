package history

import (
	"context"
	"fmt"
	"math"
	"net/url"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/google/pprof/profile"

	"github.com/cgscope/cgscope/exporter/pprof"
	"github.com/cgscope/cgscope/internal/attribution"
	"github.com/cgscope/cgscope/internal/containerid"
	"github.com/cgscope/cgscope/internal/store"
)

// Query selects a time range of the history and the samples in it,
// CPU or off-CPU (Selector.Kind).
type Query struct {
	From, To time.Time
	pprof.Selector
}

// DefaultRange is the range of a query without from=.
const DefaultRange = 5 * time.Minute

// ParseQuery reads a query from URL parameters (from, to and the
// selector's, type= among them) strictly: unknown, repeated or malformed
// parameters are errors (*pprof.ParamError), never ignored.
func ParseQuery(q url.Values, now time.Time) (Query, error) {
	hq := Query{To: now}
	var haveFrom bool
	var err error
	hq.Selector, err = pprof.ParseParams(q,
		pprof.Param{Name: "from", Set: func(v string) (err error) { hq.From, err = parseTime("from", v); haveFrom = true; return err }},
		pprof.Param{Name: "to", Set: func(v string) (err error) { hq.To, err = parseTime("to", v); return err }})
	if err != nil {
		return hq, err
	}
	if !haveFrom {
		hq.From = hq.To.Add(-DefaultRange)
	}
	if !hq.From.Before(hq.To) {
		return hq, pprof.ParamErrorf("from=%s is not before to=%s", hq.From.Format(time.RFC3339), hq.To.Format(time.RFC3339))
	}
	return hq, nil
}

// parseTime accepts RFC 3339 or Unix seconds (fractions allowed).
func parseTime(name, v string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 || f > 1e11 || math.IsNaN(f) {
		return time.Time{}, fmt.Errorf("%s=%q: want RFC 3339 (2006-01-02T15:04:05Z) or Unix seconds", name, v)
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), nil
}

// sampleFilter keeps the label sets a query selects. It caches the
// container identity of each cgroup path (stored label sets have the
// Kubernetes names but not the ids, which the path gives): a query sees few
// distinct cgroups.
type sampleFilter struct {
	q          *Query
	mu         sync.Mutex
	containers map[string]containerid.Identity
}

func newSampleFilter(q *Query) *sampleFilter {
	return &sampleFilter{q: q, containers: map[string]containerid.Identity{}}
}

func (f *sampleFilter) container(cgroup string) containerid.Identity {
	f.mu.Lock()
	defer f.mu.Unlock()
	id, ok := f.containers[cgroup]
	if !ok {
		id = containerid.Parse(cgroup)
		f.containers[cgroup] = id
	}
	return id
}

// workload returns the Kubernetes identity of a stored label set.
func (f *sampleFilter) workload(d *genDict, lr labelRec) attribution.Workload {
	id := f.container(d.strs[lr.cgroup])
	return attribution.Workload{ContainerID: id.ContainerID, PodUID: id.PodUID,
		Namespace: d.strs[lr.namespace], Pod: d.strs[lr.pod], Container: d.strs[lr.container]}
}

// match works out a label set's workload only when the rest matched and
// the query selects by workload.
func (f *sampleFilter) match(d *genDict, lr labelRec) bool {
	q := f.q
	if !q.MatchProcess(lr.pid, d.strs[lr.comm], d.strs[lr.cgroup]) {
		return false
	}
	return q.Workload.IsZero() || q.Workload.Match(f.workload(d, lr))
}

// rowKey is what a query sums by within one generation: label set, stack
// and (off-CPU) reason string id. Targets leave stack at noStack and
// reason at 0: they never look at either.
type rowKey struct{ label, stack, reason uint32 }

const noStack = ^uint32(0)

type rowSum struct{ samples, nanos int64 }

// genSums is the sums of one generation's selected windows.
type genSums struct {
	dict   *genDict
	sums   map[rowKey]rowSum
	period time.Duration
}

// genWork is the windows of a query in one generation.
type genWork struct {
	gen     uint64
	windows []store.Meta
}

// scan sums the windows of f's query (its range and kind) that pass f, by
// label set and (with byStack) stack and reason, one generation at a time
// on all CPUs, and calls fn with each generation's sums, one at a time.
// Memory is bounded by a generation's dictionary and sums per worker (both
// bounded by what a generation can hold), never by the length of the range.
func (h *History) scan(ctx context.Context, f *sampleFilter, byStack bool, fn func(*genSums) error) error {
	var work []genWork
	for _, m := range h.st.List(kindLevel(f.q.Kind), f.q.From, f.q.To) {
		if n := len(work); n > 0 && work[n-1].gen == m.Gen() {
			work[n-1].windows = append(work[n-1].windows, m)
			continue
		}
		// A generation's windows are contiguous in time unless the clock
		// stepped back; a second run of one is just scanned on its own.
		work = append(work, genWork{gen: m.Gen(), windows: []store.Meta{m}})
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobs := make(chan genWork)
	results := make(chan *genSums)
	var wg sync.WaitGroup
	for range min(max(runtime.GOMAXPROCS(0), 1), len(work)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for gw := range jobs {
				gs, err := h.sumGen(ctx, gw, f, byStack)
				if err != nil {
					continue // ctx is done: the loop below returns its error
				}
				select {
				case results <- gs:
				case <-ctx.Done():
				}
			}
		}()
	}
	go func() {
		defer close(jobs)
		for _, gw := range work {
			select {
			case jobs <- gw:
			case <-ctx.Done():
				return
			}
		}
	}()
	go func() { wg.Wait(); close(results) }()
	var fnErr error
	for gs := range results {
		if fnErr == nil && ctx.Err() == nil {
			if fnErr = fn(gs); fnErr != nil {
				cancel()
			}
		}
	}
	if fnErr != nil {
		return fnErr
	}
	return ctx.Err()
}

// sumGen loads one generation's dictionary, then sums its windows. Windows
// that cannot be decoded (a lost dictionary record, a malformed record) are
// skipped and counted.
func (h *History) sumGen(ctx context.Context, gw genWork, f *sampleFilter, byStack bool) (*genSums, error) {
	d := newGenDict()
	var dictErrs int
	// Listed after the windows: a snapshot that covers every dictionary
	// record the listed windows can depend on.
	err := h.st.Load(h.st.ListGen(gw.gen, levelDict), func(_ store.Meta, b []byte) error {
		if err := d.add(b); err != nil {
			dictErrs++
		}
		return ctx.Err()
	})
	if err != nil {
		return nil, err
	}
	gs := &genSums{dict: d, sums: map[rowKey]rowSum{}}
	keep := make([]int8, len(d.labels)) // 0 unknown, 1 keep, -1 drop
	var rows windowRows
	var bad int
	var lastErr error
	err = h.st.Load(gw.windows, func(_ store.Meta, b []byte) error {
		if err := decodeWindow(b, d, &rows, f.q.Kind); err != nil {
			bad++
			lastErr = err
			return ctx.Err()
		}
		if rows.period > 0 {
			gs.period = rows.period
		}
		for i, l := range rows.labels {
			if keep[l] == 0 {
				keep[l] = -1
				if f.match(d, d.labels[l]) {
					keep[l] = 1
				}
			}
			if keep[l] < 0 {
				continue
			}
			k := rowKey{l, noStack, 0}
			if byStack {
				k.stack, k.reason = rows.stacks[i], rows.reasons[i]
			}
			s := gs.sums[k]
			s.samples += int64(rows.counts[i])
			s.nanos += int64(rows.nanos[i])
			gs.sums[k] = s
		}
		return ctx.Err()
	})
	if err != nil {
		return nil, err
	}
	if bad > 0 {
		h.undecodable.Add(uint64(bad))
		h.log.Warn("history: skipping undecodable windows", "windows", bad, "lost_dictionary_records", dictErrs, "err", lastErr)
	}
	return gs, nil
}

// profileSink builds the answer of Profile from generation sums: frames
// become pprof locations and samples as pprof.Build makes them, and equal
// samples from several generations become one.
type profileSink struct {
	b *pprof.Builder
	f *sampleFilter
}

func (ps *profileSink) add(gs *genSums) error {
	d := gs.dict
	ps.b.SetPeriod(gs.period)
	locs := map[uint32][]*profile.Location{} // this generation's stacks
	for k, s := range gs.sums {
		ls, ok := locs[k.stack]
		if !ok {
			frames := d.symFrames(d.stacks[k.stack])
			ls = make([]*profile.Location, len(frames))
			for i := range frames {
				ls[i] = ps.b.Location(&frames[i])
			}
			locs[k.stack] = ls
		}
		lr := d.labels[k.label]
		ps.b.AddRow(pprof.Row{PID: lr.pid, TID: lr.tid, Comm: d.strs[lr.comm], Cgroup: d.strs[lr.cgroup],
			Workload: ps.f.workload(d, lr), Reason: d.strs[k.reason], Samples: s.samples, Nanos: s.nanos}, ls)
	}
	return nil
}

// Profile returns the profile of the query's kind, range and filters: the
// sum of the windows overlapping it.
func (h *History) Profile(ctx context.Context, q Query) (*profile.Profile, error) {
	if err := h.acquire(ctx); err != nil {
		return nil, err
	}
	defer h.release()
	f := newSampleFilter(&q)
	ps := &profileSink{b: pprof.NewBuilder(q.Kind), f: f}
	if err := h.scan(ctx, f, true, ps.add); err != nil {
		return nil, err
	}
	return ps.b.Profile(q.From, q.To), nil
}

func (h *History) acquire(ctx context.Context) error {
	select {
	case h.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (h *History) release() { <-h.sem }
