package collector

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Every collector of the table has a status and a cgscope_collector_enabled
// series, cgroupfs included, whatever runs.
func TestSetReportsEveryCollector(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := Start(ctx, Config{Enabled: map[string]bool{CgroupFS: true}, FilesInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if len(s.Status()) != len(Table) {
		t.Fatalf("%d statuses for %d collectors", len(s.Status()), len(Table))
	}
	for i, st := range s.Status() {
		if st.Name != Table[i].Name {
			t.Errorf("status %d is %s, want %s (table order)", i, st.Name, Table[i].Name)
		}
		if want := st.Name == CgroupFS; st.Enabled != want || s.Running(st.Name) != want {
			t.Errorf("%s: %+v, want running %v", st.Name, st, want)
		}
		if !st.Enabled && st.Reason != disabledByFlag {
			t.Errorf("%s: reason %q, want %q", st.Name, st.Reason, disabledByFlag)
		}
	}
	if s.Counters() != nil || s.Files() == nil {
		t.Errorf("counters %v, files %v: want no counters and a file cache", s.Counters(), s.Files())
	}
	if n := enabledSeries(s); n != len(Table) {
		t.Errorf("%d cgscope_collector_enabled series, want %d", n, len(Table))
	}
	if n := enabledSeries(Unavailable("no cgroup2 hierarchy")); n != len(Table) {
		t.Errorf("unavailable: %d cgscope_collector_enabled series, want %d", n, len(Table))
	}
}

// enabledSeries counts the cgscope_collector_enabled series c collects.
func enabledSeries(c prometheus.Collector) int {
	ch := make(chan prometheus.Metric, 64)
	c.Collect(ch)
	close(ch)
	n := 0
	for m := range ch {
		if m.Desc() == descEnabled {
			n++
		}
	}
	return n
}
