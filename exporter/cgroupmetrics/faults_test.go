package cgroupmetrics

import (
	"testing"
	"time"

	"github.com/cgscope/cgscope/cgroup"
	"github.com/cgscope/cgscope/collector"
)

// scriptedFiles answers each scrape's file reads from a script: one
// answer per path per scrape (nil: not read yet, or a failed read).
type scriptedFiles struct {
	scrape int
	script map[string][]*cgroup.FileStats
}

func (f *scriptedFiles) Read(path string, _ time.Time) (cgroup.FileStats, bool) {
	s := f.script[path]
	if f.scrape >= len(s) || s[f.scrape] == nil {
		return cgroup.FileStats{}, false
	}
	return *s[f.scrape], true
}

// A cgroup's page-fault series keeps the source it got first: none until
// its files were read, then memory.stat where it had faults, the threads'
// figures where it had none, whatever later reads say; a cgroup beyond
// the cap ("other") has the threads' figures.
func TestFaultSeriesKeepTheirSource(t *testing.T) {
	mem := &cgroup.FileStats{PageFaultsMinor: cgroup.Value{V: 700, Known: true}, PageFaultsMajor: cgroup.Value{V: 7, Known: true}}
	noMem := &cgroup.FileStats{}
	files := &scriptedFiles{script: map[string][]*cgroup.FileStats{
		"/covered":   {nil, mem, nil, noMem, mem},
		"/uncovered": {noMem, mem, mem, nil, mem},
	}}
	counters := fixedCounters{1: {PageFaultsMinor: 5}, 2: {PageFaultsMinor: 9}, 3: {PageFaultsMinor: 11}}
	paths := fixedPaths{1: "/covered", 2: "/uncovered", 3: "/beyond"}
	c := New(counters, paths, files, Options{MaxCgroups: 2, GracePeriod: time.Minute,
		Collectors: map[string]bool{collector.Faults: true, collector.CgroupFS: true}})
	// Admitted first come, first kept: /covered and /uncovered, in the
	// order of the map; /beyond goes to "other" once two are in.
	c.admit("/covered")
	c.admit("/uncovered")

	want := []map[string]float64{ // minor faults by cgroup label; absent: no series
		{"/uncovered": 9, OtherCgroup: 11},
		{"/covered": 700, "/uncovered": 9, OtherCgroup: 11},
		{"/uncovered": 9, OtherCgroup: 11},
		{"/uncovered": 9, OtherCgroup: 11},
		{"/covered": 700, "/uncovered": 9, OtherCgroup: 11},
	}
	for i, w := range want {
		files.scrape = i
		mfs, err := c.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]float64{}
		if fam := familyNamed(mfs, "cgscope_cgroup_page_faults_total"); fam != nil {
			for _, m := range fam.Metric {
				var cg, kind string
				for _, l := range m.Label {
					switch l.GetName() {
					case "cgroup":
						cg = l.GetValue()
					case "kind":
						kind = l.GetValue()
					}
				}
				if kind == "minor" {
					if _, dup := got[cg]; dup {
						t.Errorf("scrape %d: two minor-fault series for %s", i, cg)
					}
					got[cg] = m.GetCounter().GetValue()
				}
			}
		}
		if len(got) != len(w) {
			t.Errorf("scrape %d: minor faults %v, want %v", i, got, w)
			continue
		}
		for cg, v := range w {
			if got[cg] != v {
				t.Errorf("scrape %d: minor faults %v, want %v", i, got, w)
				break
			}
		}
	}
}
