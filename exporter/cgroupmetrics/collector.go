// Package cgroupmetrics serves the per-cgroup metrics in Prometheus form:
// the series of every running collector of collector.Table, one label set
// per cgroup (its path and Kubernetes workload), bounded by filters, a depth
// and a cap, plus the collector's own gauges and each collector's scrape
// duration and success. It reads what package collector produces and never
// talks to the kernel itself.
package cgroupmetrics

import (
	"regexp"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/cgscope/cgscope/cgroup"
	"github.com/cgscope/cgscope/collector"
	"github.com/cgscope/cgscope/internal/attribution"
)

// CounterSource is the BPF side of the per-cgroup metrics
// (collector.Counters).
type CounterSource interface {
	Read() (map[uint64]*collector.Usage, error)
	Forget(ids []uint64) error
}

// PathResolver names cgroup2 ids and lists the cgroups that exist
// (cgroup.Resolver).
type PathResolver interface {
	Path(id uint64) string
	All() map[uint64]string
}

// FileSource answers what cgroup files know about a cgroup without making
// a scrape wait long (collector.FileCache).
type FileSource interface {
	Read(path string, scrapeStart time.Time) (cgroup.FileStats, bool)
}

// WorkloadResolver names the container or pod of a cgroup path without
// blocking (attribution.Resolver).
type WorkloadResolver interface {
	Lookup(cgroupPath string) *attribution.Workload
}

// Options shape which cgroups become series, and how many.
type Options struct {
	Include, Exclude *regexp.Regexp // on the cgroup path; nil = no filter
	// MaxCgroups caps the cgroups exported with their own labels; the rest
	// are summed into cgroup="other".
	MaxCgroups int
	// MaxDepth folds cgroups deeper than this many path components into
	// their ancestor at that depth (0 = no limit).
	MaxDepth int
	// GracePeriod keeps a deleted cgroup's series this long, so its last
	// values are scraped, before they go away.
	GracePeriod time.Duration
	// Collectors names the running collectors of collector.Table; series
	// of the others are not exported rather than exported as zeros.
	Collectors map[string]bool
	// Workloads names containers and pods (namespace, pod, container
	// labels); nil takes container_id and pod_uid from the cgroup path.
	Workloads WorkloadResolver
}

// OtherCgroup is the cgroup label of everything beyond MaxCgroups.
const OtherCgroup = "other"

// Collector exports per-cgroup CPU, memory and network metrics, merging BPF
// counters with cgroup files, under a bounded label set.
type Collector struct {
	counters CounterSource // nil when no BPF collector runs
	paths    PathResolver
	files    FileSource // nil when the cgroupfs collector does not run
	opts     Options
	now      func() time.Time

	mu         sync.Mutex // serializes scrapes; guards the fields below
	known      map[uint64]*cgroupEntry
	admitted   map[string]*admission // exported paths and their labels, bounded by MaxCgroups
	lastFold   foldStats
	otherPairs []*dto.LabelPair
}

type cgroupEntry struct {
	path      string // "" when never resolved
	goneSince time.Time
}

type foldStats struct {
	other, unresolved, filtered int
}

// New builds the collector. counters may be nil (every BPF collector off)
// and files may be nil (cgroupfs collector off).
func New(c CounterSource, p PathResolver, files FileSource, opts Options) *Collector {
	if opts.Workloads == nil {
		opts.Workloads = attribution.PathOnly()
	}
	return &Collector{
		counters: c, paths: p, files: files, opts: opts, now: time.Now,
		known: map[uint64]*cgroupEntry{}, admitted: map[string]*admission{},
	}
}

// admission is an exported cgroup's label values, kept while its workload
// stays the same (the runtime may name a container a moment after its
// cgroup appears: its series then move to the full label set).
type admission struct {
	workload *attribution.Workload
	labels   []string
	pairs    []*dto.LabelPair // labels as sorted pairs, built on first use
	faults   collector.FaultSource
}

// cgroupSeries is one exported cgroup: a label set and what it sums.
type cgroupSeries struct {
	labels []string         // cgroupLabels' values
	pairs  []*dto.LabelPair // the same as label pairs, sorted by name
	path   string           // the cgroup path whose files describe it; "" for other
	in     collector.Input
	usage  collector.Usage
}

// Gather returns the per-cgroup families and the collector's own (folded,
// filtered and exported cgroups; scrape duration and success of the whole,
// as collector "cgroup", and of each running collector). A failure to read
// the counters is returned with the families that could be built.
func (c *Collector) Gather() ([]*dto.MetricFamily, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	start := c.now()
	series, err := c.gather()
	out := newFamilySink()
	scrapes := c.emit(out, series, start, err == nil)
	out.add(descCgroupsFolded, nil, float64(c.lastFold.other), "over_limit")
	out.add(descCgroupsFolded, nil, float64(c.lastFold.unresolved), "unresolved")
	out.add(descCgroupsFiltered, nil, float64(c.lastFold.filtered))
	out.add(descCgroupsExported, nil, float64(len(series)))
	scrapes = append([]scrape{{"cgroup", c.now().Sub(start), err == nil}}, scrapes...)
	for _, s := range scrapes {
		out.add(descScrapeDuration, nil, s.took.Seconds(), s.name)
		out.add(descScrapeSuccess, nil, boolFloat(s.ok), s.name)
	}
	return out.order, err
}

// scrape is how one collector fared.
type scrape struct {
	name string
	took time.Duration
	ok   bool
}

// emit writes the series of every running collector, one collector at a
// time, timing each. The cgroup files are read first (timed as cgroupfs's),
// since they decide where a new cgroup's page faults come from
// (faultSource). When
// the cgroups could not be gathered (ok false), no collector has series.
func (c *Collector) emit(out *familySink, series []*cgroupSeries, start time.Time, ok bool) []scrape {
	var took time.Duration
	if c.files != nil {
		t := c.now()
		for _, s := range series {
			if s.path == "" {
				continue
			}
			if fs, ok := c.files.Read(s.path, start); ok {
				s.in.Files = &fs
			}
		}
		took = c.now().Sub(t)
	}
	for _, s := range series {
		s.in.Faults = c.faultSource(s)
	}
	var scrapes []scrape
	sink := &seriesSink{out: out}
	for _, info := range collector.Table {
		if !c.running(info) {
			continue
		}
		t := c.now()
		for _, s := range series {
			sink.pairs = s.pairs
			info.Emit(&s.in, sink)
		}
		d := c.now().Sub(t)
		if info.Source == collector.Files {
			d += took
		}
		scrapes = append(scrapes, scrape{info.Name, d, ok})
	}
	return scrapes
}

// faultSource picks where a series' page faults come from, once per
// admitted cgroup (kept until its slot is freed), so that the series never
// switches between memory.stat and the threads' figures. "other" sums
// cgroups whose files are not read: the threads' figures.
func (c *Collector) faultSource(s *cgroupSeries) collector.FaultSource {
	a := c.admitted[s.path]
	if s.path == "" || a == nil {
		return collector.PickFaultSource(collector.FaultsUndecided, nil, false)
	}
	a.faults = collector.PickFaultSource(a.faults, s.in.Files, c.files != nil)
	return a.faults
}

func (c *Collector) running(info *collector.Info) bool {
	if info.Source == collector.Files && c.files == nil {
		return false
	}
	return c.opts.Collectors[info.Name]
}

// gather reads the counters and groups them into series: filtered, folded
// to MaxDepth, capped at MaxCgroups, deleted cgroups kept for the grace
// period and then forgotten in the kernel map too.
func (c *Collector) gather() ([]*cgroupSeries, error) {
	usage, err := c.usage()
	if err != nil {
		return nil, err
	}
	now := c.now()
	byLabel := map[string]*cgroupSeries{}
	var forget []uint64
	c.lastFold = foldStats{}
	live := map[string]bool{}
	for id, u := range usage {
		path, keep := c.pathOf(id, now)
		if !keep {
			forget = append(forget, id)
			continue
		}
		if path != "" && !c.selected(path) {
			c.lastFold.filtered++
			continue
		}
		if path == "" {
			c.lastFold.unresolved++
		}
		path = foldDepth(path, c.opts.MaxDepth)
		live[path] = true
		labels := c.admit(path)
		if labels[0] == OtherCgroup && path != "" {
			c.lastFold.other++
		}
		s := byLabel[labels[0]]
		if s == nil {
			s = &cgroupSeries{labels: labels, pairs: c.pairsOf(labels)}
			s.in.Usage = &s.usage
			if labels[0] != OtherCgroup {
				s.path = path
			}
			byLabel[labels[0]] = s
		}
		s.usage.Add(u)
	}
	c.pruneAdmitted(live)
	if len(forget) > 0 && c.counters != nil {
		if err := c.counters.Forget(forget); err != nil {
			return nil, err
		}
	}
	out := make([]*cgroupSeries, 0, len(byLabel))
	for _, s := range byLabel {
		out = append(out, s)
	}
	return out, nil
}

// usage returns the BPF counters of every cgroup they saw and, when cgroup
// files are read too, an empty entry for every other existing cgroup, so
// idle cgroups still get their memory series.
func (c *Collector) usage() (map[uint64]*collector.Usage, error) {
	// Listing the tree also refreshes the resolver, which is how deleted
	// cgroups are noticed.
	existing := c.paths.All()
	usage := map[uint64]*collector.Usage{}
	if c.counters != nil {
		var err error
		if usage, err = c.counters.Read(); err != nil {
			return nil, err
		}
	}
	if c.files != nil {
		// The histogram runs for all cgroups or none: the root always has
		// threads, so Read says which.
		sampled := false
		for _, u := range usage {
			sampled = sampled || u.RunqSampled
		}
		for id := range existing {
			if usage[id] == nil {
				usage[id] = &collector.Usage{RunqSampled: sampled}
			}
		}
	}
	return usage, nil
}

// pathOf returns the cgroup's path, remembering it past deletion for the
// grace period. keep is false once a deleted cgroup's grace has passed.
func (c *Collector) pathOf(id uint64, now time.Time) (path string, keep bool) {
	e := c.known[id]
	if e == nil {
		e = &cgroupEntry{}
		c.known[id] = e
	}
	if p := c.paths.Path(id); p != "" {
		e.path, e.goneSince = p, time.Time{}
		return p, true
	}
	if e.goneSince.IsZero() {
		e.goneSince = now
	}
	if now.Sub(e.goneSince) > c.opts.GracePeriod {
		delete(c.known, id)
		return "", false
	}
	return e.path, true
}

func (c *Collector) selected(path string) bool {
	if c.opts.Include != nil && !c.opts.Include.MatchString(path) {
		return false
	}
	return c.opts.Exclude == nil || !c.opts.Exclude.MatchString(path)
}

var otherLabels = []string{OtherCgroup, "", "", "", "", ""}

// admit returns the labels a path is exported under: its own (cgroup and
// its workload's) while fewer than MaxCgroups are admitted (first come,
// first kept, so series do not flap between scrapes), else those of
// "other". Unresolved cgroups are "other".
func (c *Collector) admit(path string) []string {
	if path == "" {
		return otherLabels
	}
	a, ok := c.admitted[path]
	if !ok {
		if len(c.admitted) >= c.opts.MaxCgroups {
			return otherLabels
		}
		a = &admission{}
		c.admitted[path] = a
	}
	w := c.opts.Workloads.Lookup(path)
	if a.labels == nil || w != a.workload {
		a.workload = w
		v := w.LabelValues()
		a.labels = append([]string{path}, v[:]...)
		a.pairs = nil
	}
	return a.labels
}

// pairsOf returns the label pairs of an admitted label set, built once per
// label set and shared by all its series.
func (c *Collector) pairsOf(labels []string) []*dto.LabelPair {
	if labels[0] == OtherCgroup {
		if c.otherPairs == nil {
			c.otherPairs = labelPairs(cgroupLabels, otherLabels)
		}
		return c.otherPairs
	}
	a := c.admitted[labels[0]]
	if a.pairs == nil {
		a.pairs = labelPairs(cgroupLabels, a.labels)
	}
	return a.pairs
}

// pruneAdmitted frees the slots of cgroups that are gone.
func (c *Collector) pruneAdmitted(live map[string]bool) {
	for p := range c.admitted {
		if !live[p] {
			delete(c.admitted, p)
		}
	}
}

// foldDepth cuts a path to at most depth components ("/a/b/c", 2 → "/a/b").
func foldDepth(path string, depth int) string {
	if depth <= 0 || path == "" || path == "/" {
		return path
	}
	parts := strings.SplitN(strings.TrimPrefix(path, "/"), "/", depth+1)
	if len(parts) <= depth {
		return path
	}
	return "/" + strings.Join(parts[:depth], "/")
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
