package exporter

import (
	"net/url"
	"testing"
	"time"

	"github.com/cgscope/cgscope/internal/pipeline"
)

func TestParseCaptureQuery(t *testing.T) {
	good := map[string]captureRequest{
		"":                     {duration: 30 * time.Second},
		"seconds=5":            {duration: 5 * time.Second},
		"seconds=300&pid=42":   {duration: 300 * time.Second, filter: Filter{PID: 42}},
		"cgroup=/system.slice": {duration: 30 * time.Second, filter: Filter{CgroupPrefix: "/system.slice"}},
	}
	for q, want := range good {
		v, _ := url.ParseQuery(q)
		got, err := parseCaptureQuery(v, 30, 300)
		if err != nil || got != want {
			t.Errorf("%q: got %+v, %v; want %+v", q, got, err, want)
		}
	}
	for _, q := range []string{"seconds=0", "seconds=301", "seconds=1.5", "pid=0", "pid=-3", "pid=99999999999",
		"cgroup=system.slice", "x=1", "pid=1&pid=2"} {
		v, _ := url.ParseQuery(q)
		if _, err := parseCaptureQuery(v, 30, 300); err == nil {
			t.Errorf("%q accepted", q)
		}
	}
}

func TestFilterMatch(t *testing.T) {
	s := &pipeline.Sample{PID: 7, Cgroup: "/a/b"}
	for f, want := range map[Filter]bool{
		{}:                      true,
		{PID: 7}:                true,
		{PID: 8}:                false,
		{CgroupPrefix: "/"}:     true,
		{CgroupPrefix: "/a"}:    true,
		{CgroupPrefix: "/a/"}:   true,
		{CgroupPrefix: "/a/b"}:  true,
		{CgroupPrefix: "/a/bc"}: false,
		{CgroupPrefix: "/ab"}:   false,
	} {
		if got := f.Match(s); got != want {
			t.Errorf("%+v.Match(%s) = %v, want %v", f, s.Cgroup, got, want)
		}
	}
}
