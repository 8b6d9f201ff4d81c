package exporter

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/pprof/profile"

	"github.com/cgscope/cgscope/internal/store"
	"github.com/cgscope/cgscope/profiler"
)

// HistoryQuery selects a time range of the history and the samples in it.
type HistoryQuery struct {
	From, To    time.Time
	PID         uint32
	Comm        string
	Cgroup      string // path prefix by whole components, like Filter
	ContainerID string // full id or a prefix of at least 12 characters
	PodUID      string
}

// QueryError is a malformed query: HTTP handlers answer 400 with it.
type QueryError struct{ msg string }

func (e *QueryError) Error() string { return e.msg }

// BadRequest marks the error as the client's fault.
func (e *QueryError) BadRequest() bool { return true }

func queryErrorf(format string, args ...any) error {
	return &QueryError{msg: fmt.Sprintf(format, args...)}
}

// DefaultHistoryRange is the range of a query without from=.
const DefaultHistoryRange = 5 * time.Minute

// ParseHistoryQuery validates q strictly: unknown, repeated or malformed
// parameters are errors, never ignored.
func ParseHistoryQuery(q url.Values, now time.Time) (HistoryQuery, error) {
	hq := HistoryQuery{To: now}
	var haveFrom bool
	for name, values := range q {
		if len(values) != 1 {
			return hq, queryErrorf("parameter %q given %d times, want once", name, len(values))
		}
		v := values[0]
		var err error
		switch name {
		case "from":
			hq.From, err = parseTime(name, v)
			haveFrom = true
		case "to":
			hq.To, err = parseTime(name, v)
		default:
			err = hq.parseFilter(name, v)
		}
		if err != nil {
			return hq, err
		}
	}
	if !haveFrom {
		hq.From = hq.To.Add(-DefaultHistoryRange)
	}
	if !hq.From.Before(hq.To) {
		return hq, queryErrorf("from=%s is not before to=%s", hq.From.Format(time.RFC3339), hq.To.Format(time.RFC3339))
	}
	return hq, nil
}

func (hq *HistoryQuery) parseFilter(name, v string) error {
	switch name {
	case "pid":
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil || n == 0 {
			return queryErrorf("pid=%q: want a positive process id", v)
		}
		hq.PID = uint32(n)
	case "comm":
		if v == "" || len(v) > 64 {
			return queryErrorf("comm=%q: want a process name", v)
		}
		hq.Comm = v
	case "cgroup":
		if !strings.HasPrefix(v, "/") {
			return queryErrorf("cgroup=%q: want a cgroup2 path starting with /", v)
		}
		hq.Cgroup = v
	case "container_id":
		if len(v) < 12 || len(v) > 64 || strings.Trim(v, "0123456789abcdef") != "" {
			return queryErrorf("container_id=%q: want 12 to 64 lowercase hex digits", v)
		}
		hq.ContainerID = v
	case "pod_uid":
		if len(v) != 36 {
			return queryErrorf("pod_uid=%q: want a UUID like 01234567-89ab-cdef-0123-456789abcdef", v)
		}
		hq.PodUID = v
	case "namespace", "pod", "container":
		return queryErrorf("%s=: Kubernetes attribution is not available yet; filter by pod_uid or container_id", name)
	default:
		return queryErrorf("unknown parameter %q (known: from, to, pid, comm, cgroup, container_id, pod_uid)", name)
	}
	return nil
}

// parseTime accepts RFC 3339 or Unix seconds (fractions allowed).
func parseTime(name, v string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 || f > 1e11 || math.IsNaN(f) {
		return time.Time{}, queryErrorf("%s=%q: want RFC 3339 (2006-01-02T15:04:05Z) or Unix seconds", name, v)
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), nil
}

// hasFilter reports whether the query selects a subset of samples.
func (hq *HistoryQuery) hasFilter() bool {
	return hq.PID != 0 || hq.Comm != "" || hq.Cgroup != "" || hq.ContainerID != "" || hq.PodUID != ""
}

// sampleFilter keeps the samples a query selects. It caches the container
// identity of each cgroup path: a query sees few distinct cgroups.
type sampleFilter struct {
	q          *HistoryQuery
	mu         sync.Mutex
	containers map[string]profiler.ContainerIdentity
}

func (f *sampleFilter) container(cgroup string) profiler.ContainerIdentity {
	f.mu.Lock()
	defer f.mu.Unlock()
	id, ok := f.containers[cgroup]
	if !ok {
		id = profiler.ParseContainerPath(cgroup)
		f.containers[cgroup] = id
	}
	return id
}

// apply drops the samples the query does not select and labels the rest
// with their container, so the pprof UI can filter and group by it.
func (f *sampleFilter) apply(p *profile.Profile) {
	keep := p.Sample[:0]
	for _, s := range p.Sample {
		cg := label(s, "cgroup")
		id := f.container(cg)
		if !f.match(s, cg, id) {
			continue
		}
		if id.ContainerID != "" {
			s.Label["container_id"] = []string{id.ContainerID}
		}
		if id.PodUID != "" {
			s.Label["pod_uid"] = []string{id.PodUID}
		}
		keep = append(keep, s)
	}
	p.Sample = keep
}

func (f *sampleFilter) match(s *profile.Sample, cg string, id profiler.ContainerIdentity) bool {
	q := f.q
	if q.PID != 0 && numLabel(s, "pid") != int64(q.PID) {
		return false
	}
	if q.Comm != "" && label(s, "comm") != q.Comm {
		return false
	}
	if q.Cgroup != "" && !(Filter{CgroupPrefix: q.Cgroup}).matchCgroup(cg) {
		return false
	}
	if q.ContainerID != "" && !strings.HasPrefix(id.ContainerID, q.ContainerID) {
		return false
	}
	if q.PodUID != "" && id.PodUID != q.PodUID {
		return false
	}
	return true
}

func (f Filter) matchCgroup(cg string) bool {
	p := strings.TrimSuffix(f.CgroupPrefix, "/")
	return p == "" || cg == p || strings.HasPrefix(cg, p+"/")
}

func label(s *profile.Sample, key string) string {
	if v := s.Label[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func numLabel(s *profile.Sample, key string) int64 {
	if v := s.NumLabel[key]; len(v) > 0 {
		return v[0]
	}
	return 0
}

// plan picks the records that together cover [from, to) exactly once: each
// rollup block (coarsest first, up to maxLevel) lying wholly inside the
// range, then the windows whose start is in no chosen block. With startIn,
// windows must start inside the range (used to build rollups, whose blocks
// own the windows starting in them); otherwise overlapping is enough.
func (h *History) plan(from, to time.Time, maxLevel uint8, startIn bool) []store.Meta {
	var picked []store.Meta
	covered := map[uint8]map[int64]bool{}
	for level := int(min(maxLevel, uint8(len(h.levels)))); level >= 1; level-- {
		d := h.levels[level-1]
		covered[uint8(level)] = map[int64]bool{}
		for _, m := range h.st.List(uint8(level), from, to) {
			if m.Start.Before(from) || m.Start.Add(d).After(to) || isCovered(covered, h.levels, m.Start) {
				continue
			}
			covered[uint8(level)][m.Start.UnixNano()] = true
			picked = append(picked, m)
		}
	}
	for _, m := range h.st.List(0, from, to) {
		if (startIn && m.Start.Before(from)) || isCovered(covered, h.levels, m.Start) {
			continue
		}
		picked = append(picked, m)
	}
	return picked
}

func isCovered(covered map[uint8]map[int64]bool, levels []time.Duration, t time.Time) bool {
	for level, blocks := range covered {
		if blocks[t.Truncate(levels[level-1]).UnixNano()] {
			return true
		}
	}
	return false
}

// scan decodes the records of metas on all CPUs and calls fn with each
// profile, one at a time. Channels are small, so at most a few profiles are
// decoded ahead of fn whatever the range: memory is bounded by the profiles
// in flight plus what fn keeps.
func (h *History) scan(ctx context.Context, metas []store.Meta, fn func(*profile.Profile) error) error {
	workers := max(runtime.GOMAXPROCS(0), 1)
	raw := make(chan []byte, workers)
	decoded := make(chan *profile.Profile, workers)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var loadErr error
	go func() {
		defer close(raw)
		loadErr = h.st.Load(metas, func(_ store.Meta, b []byte) error {
			select {
			case raw <- b:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	var wg sync.WaitGroup
	var decodeErrs sync.Map
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range raw {
				p, err := decodeProfile(b)
				if err != nil {
					decodeErrs.Store(err.Error(), true)
					continue
				}
				select {
				case decoded <- p:
				case <-ctx.Done():
				}
			}
		}()
	}
	go func() { wg.Wait(); close(decoded) }()

	var fnErr error
	for p := range decoded {
		if fnErr == nil {
			if fnErr = fn(p); fnErr != nil {
				cancel()
			}
		}
	}
	decodeErrs.Range(func(k, _ any) bool {
		h.log.Warn("history: skipping undecodable record", "err", k)
		return true
	})
	if fnErr != nil {
		return fnErr
	}
	if loadErr != nil && !errors.Is(loadErr, context.Canceled) {
		return loadErr
	}
	return ctx.Err()
}

// mergeBatch is how many profiles are merged at once: merging in batches
// is much faster than one by one, and bounds what is held meanwhile.
const mergeBatch = 32

// merger merges profiles in batches into one.
type merger struct {
	acc   *profile.Profile
	batch []*profile.Profile
}

func (m *merger) add(p *profile.Profile) error {
	m.batch = append(m.batch, p)
	if len(m.batch) < mergeBatch {
		return nil
	}
	return m.flush()
}

func (m *merger) flush() error {
	if len(m.batch) == 0 {
		return nil
	}
	if m.acc != nil {
		m.batch = append(m.batch, m.acc)
	}
	var err error
	m.acc, err = profile.Merge(m.batch)
	m.batch = m.batch[:0]
	return err
}

// result returns the merged profile, nil when nothing was added.
func (m *merger) result() (*profile.Profile, error) {
	err := m.flush()
	return m.acc, err
}

// Profile returns the merged profile of the query's range and filters.
func (h *History) Profile(ctx context.Context, q HistoryQuery) (*profile.Profile, error) {
	if err := h.acquire(ctx); err != nil {
		return nil, err
	}
	defer h.release()
	f := &sampleFilter{q: &q, containers: map[string]profiler.ContainerIdentity{}}
	var m merger
	err := h.scan(ctx, h.plan(q.From, q.To, uint8(len(h.levels)), false), func(p *profile.Profile) error {
		f.apply(p)
		return m.add(p)
	})
	if err != nil {
		return nil, err
	}
	acc, err := m.result()
	if err != nil {
		return nil, err
	}
	if acc == nil {
		acc = BuildProfile(nil, Filter{})
	}
	acc.TimeNanos = q.From.UnixNano()
	acc.DurationNanos = q.To.Sub(q.From).Nanoseconds()
	return acc, nil
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
