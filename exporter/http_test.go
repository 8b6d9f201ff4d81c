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

func TestFoldDepth(t *testing.T) {
	for _, c := range []struct {
		path  string
		depth int
		want  string
	}{
		{"/a/b/c", 0, "/a/b/c"},
		{"/a/b/c", 1, "/a"},
		{"/a/b/c", 2, "/a/b"},
		{"/a/b/c", 3, "/a/b/c"},
		{"/a/b/c", 9, "/a/b/c"},
		{"/", 1, "/"},
		{"", 1, ""},
	} {
		if got := foldDepth(c.path, c.depth); got != c.want {
			t.Errorf("foldDepth(%q, %d) = %q, want %q", c.path, c.depth, got, c.want)
		}
	}
}

// The cap admits cgroups first come, first kept, and frees the slots of
// cgroups that are gone.
func TestAdmitIsStable(t *testing.T) {
	c := NewCgroupCollector(nil, nil, nil, CgroupOptions{MaxCgroups: 2})
	if l := c.admit("/a"); l[0] != "/a" {
		t.Fatalf("first cgroup not admitted: %v", l)
	}
	c.admit("/b")
	if l := c.admit("/c"); l[0] != OtherCgroup {
		t.Errorf("third cgroup over a cap of 2 got %v", l)
	}
	if l := c.admit("/a"); l[0] != "/a" {
		t.Errorf("admitted cgroup lost its labels: %v", l)
	}
	c.pruneAdmitted(map[string]bool{"/b": true})
	if l := c.admit("/c"); l[0] != "/c" {
		t.Errorf("slot of a gone cgroup not reused: %v", l)
	}
	id := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	c2 := NewCgroupCollector(nil, nil, nil, CgroupOptions{MaxCgroups: 5})
	l := c2.admit("/system.slice/docker-" + id + ".scope")
	if l[1] != id {
		t.Errorf("container id label %q, want %s", l[1], id)
	}
}
