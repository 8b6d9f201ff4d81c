package cgroupmetrics

import "testing"

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
	c := New(nil, nil, nil, Options{MaxCgroups: 2})
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
	c2 := New(nil, nil, nil, Options{MaxCgroups: 5})
	l := c2.admit("/system.slice/docker-" + id + ".scope")
	if l[1] != id {
		t.Errorf("container id label %q, want %s", l[1], id)
	}
}
