package server

import (
	"net/url"
	"testing"
	"time"

	"github.com/cgscope/cgscope/exporter/pprof"
)

func TestParseCaptureQuery(t *testing.T) {
	good := map[string]captureRequest{
		"":                     {duration: 30 * time.Second},
		"seconds=5":            {duration: 5 * time.Second},
		"seconds=300&pid=42":   {duration: 300 * time.Second, filter: pprof.Selector{PID: 42}},
		"cgroup=/system.slice": {duration: 30 * time.Second, filter: pprof.Selector{Cgroup: "/system.slice"}},
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
