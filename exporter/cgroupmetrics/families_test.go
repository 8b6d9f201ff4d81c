package cgroupmetrics

import (
	"errors"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/cgscope/cgscope/collector"
	"github.com/cgscope/cgscope/internal/attribution"
)

// fixedCounters and fixedPaths stand in for the kernel maps and the cgroup
// tree; the e2e tests drive the collector with the real ones.
type fixedCounters map[uint64]*collector.Usage

func (f fixedCounters) Read() (map[uint64]*collector.Usage, error) {
	out := map[uint64]*collector.Usage{}
	for id, u := range f {
		c := *u
		out[id] = &c
	}
	return out, nil
}
func (fixedCounters) Forget([]uint64) error { return nil }

type fixedPaths map[uint64]string

func (f fixedPaths) Path(id uint64) string                     { return f[id] }
func (f fixedPaths) All() map[uint64]string                    { return f }
func (f fixedWorkloads) Lookup(p string) *attribution.Workload { return f[p] }

type fixedWorkloads map[string]*attribution.Workload

// The families written directly pass every check client_golang's own
// gathering makes (label names sorted and unique, values valid UTF-8, no
// duplicate series, types consistent), and each series has exactly its
// family's label names.
func TestCgroupFamiliesAreWellFormed(t *testing.T) {
	usage := func(cpu float64) *collector.Usage {
		u := &collector.Usage{CPUSeconds: cpu, RunqWaitSeconds: cpu / 10, RunqSampled: true, SwitchesVoluntary: 3, RxBytes: 100, TCPActive: -1}
		u.RunqHistogram[0], u.RunqHistogram[5], u.RunqHistogram[collector.RunqBuckets-1] = 4, 2, 1
		return u
	}
	pod := "/kubepods/burstable/pod01234567-89ab-cdef-0123-456789abcdef/0ba8ac17e4e7a31fb82279503552fe94e64bab4745bf6fd2ff231e7c8ca8bed0"
	counters := fixedCounters{1: usage(1), 2: usage(2), 3: usage(3), 4: usage(4)}
	paths := fixedPaths{1: "/system.slice/a.service", 2: pod, 3: "/bad\xffname", 4: "/overflow"}
	all := map[string]bool{}
	for _, c := range collector.Table {
		if c.Source == collector.BPF {
			all[c.Name] = true
		}
	}
	opts := Options{MaxCgroups: 10, GracePeriod: time.Minute, Collectors: all,
		Workloads: fixedWorkloads{pod: {ContainerID: "0ba8ac17e4e7a31fb82279503552fe94e64bab4745bf6fd2ff231e7c8ca8bed0",
			PodUID: "01234567-89ab-cdef-0123-456789abcdef", Namespace: "shop", Pod: "cart", Container: "app"}}}
	direct, err := New(counters, paths, nil, opts).Gather()
	if err != nil {
		t.Fatal(err)
	}
	checkCgroupFamilies(t, direct, true)

	// Beyond MaxCgroups one cgroup (whichever came last) is "other".
	opts.MaxCgroups = 3
	capped, err := New(counters, paths, nil, opts).Gather()
	if err != nil {
		t.Fatal(err)
	}
	checkCgroupFamilies(t, capped, false)
	if fam := familyNamed(capped, "cgscope_cgroups_folded"); fam == nil || fam.Metric[0].GetGauge().GetValue() != 1 {
		t.Errorf("cgscope_cgroups_folded: %v, want over_limit 1", fam)
	}
}

// checkCgroupFamilies passes the families through client_golang's checks
// and compares every series' label names with its family's description.
func checkCgroupFamilies(t *testing.T, direct []*dto.MetricFamily, wantPod bool) {
	t.Helper()
	// prometheus.Gatherers re-checks and normalizes every series.
	checked, err := prometheus.Gatherers{prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) { return direct, nil })}.Gather()
	if err != nil {
		t.Fatalf("client_golang rejects the families: %v", err)
	}
	want := map[string][]string{}
	describe := func(m *collector.Metric, perCgroup bool) {
		names := slices.Clone(m.Labels)
		if perCgroup {
			names = append(names, cgroupLabels...)
		}
		slices.Sort(names)
		want[m.Name] = names
	}
	for _, c := range collector.Table {
		for _, m := range c.Metrics {
			describe(m, true)
		}
	}
	for _, m := range []*collector.Metric{descCgroupsFolded, descCgroupsFiltered, descCgroupsExported, descScrapeDuration, descScrapeSuccess} {
		describe(m, false)
	}
	series, named := 0, false
	for _, mf := range checked {
		names, ok := want[mf.GetName()]
		if !ok {
			t.Errorf("family %s has no description in the collector table or the own families", mf.GetName())
			continue
		}
		for _, m := range mf.Metric {
			series++
			var got []string
			for _, l := range m.Label {
				got = append(got, l.GetName())
				if l.GetName() == "pod" && l.GetValue() == "cart" {
					named = true
				}
			}
			if !slices.Equal(got, names) {
				t.Errorf("%s series labelled %v, want %v", mf.GetName(), got, names)
			}
		}
	}
	if series < 4*15 || (wantPod && !named) {
		t.Errorf("%d series, pod label seen: %v; want every cgroup's series and the pod's names", series, named)
	}
}

func familyNamed(mfs []*dto.MetricFamily, name string) *dto.MetricFamily {
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf
		}
	}
	return nil
}

type failingCounters struct{}

func (failingCounters) Read() (map[uint64]*collector.Usage, error) {
	return nil, errors.New("map gone")
}
func (failingCounters) Forget([]uint64) error { return nil }

// Every running collector reports its scrape duration and success beside
// the whole ("cgroup"); a failed read of the counters fails them all.
func TestScrapeMetricsPerCollector(t *testing.T) {
	running := map[string]bool{collector.Sched: true, collector.TCP: true}
	paths := fixedPaths{1: "/a"}
	for _, c := range []struct {
		counters CounterSource
		want     float64
	}{{fixedCounters{1: &collector.Usage{CPUSeconds: 1}}, 1}, {failingCounters{}, 0}} {
		mfs, _ := New(c.counters, paths, nil, Options{MaxCgroups: 10, Collectors: running}).Gather()
		got := map[string]float64{}
		for _, m := range familyNamed(mfs, "cgscope_scrape_collector_success").GetMetric() {
			got[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
		}
		want := map[string]float64{"cgroup": c.want, collector.Sched: c.want, collector.TCP: c.want}
		if !maps.Equal(got, want) {
			t.Errorf("%T: success %v, want %v", c.counters, got, want)
		}
		if n := len(familyNamed(mfs, "cgscope_scrape_collector_duration_seconds").GetMetric()); n != len(want) {
			t.Errorf("%T: %d durations, want %d", c.counters, n, len(want))
		}
	}
}
