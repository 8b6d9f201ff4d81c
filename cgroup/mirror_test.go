package cgroup

import (
	"maps"
	"slices"
	"testing"
)

// The paths whose v1 namesake holds other threads than the cgroup2 cgroup,
// counting descendants on both sides.
func TestUnmirrored(t *testing.T) {
	for _, c := range []struct {
		name       string
		placements []Placement
		want       []string
	}{
		{"systemd units with accounting: the same path in both", []Placement{
			{"/system.slice/a.service", "/system.slice/a.service"}, {"/", "/"}}, nil},
		{"a unit without memory accounting stays in its slice's v1 cgroup", []Placement{
			{"/system.slice/a.service", "/system.slice"}}, []string{"/system.slice/a.service"}},
		{"a v1 cgroup below its cgroup2 namesake's path", []Placement{
			{"/a", "/a/b"}}, []string{"/a/b"}},
		{"a container engine's v1-only cgroups", []Placement{
			{"/system.slice/docker.service", "/system.slice/docker.service"},
			{"/system.slice/docker.service", "/docker/0123"}},
			[]string{"/docker", "/docker/0123", "/system.slice", "/system.slice/docker.service"}},
		{"no placements", nil, nil},
	} {
		got := slices.Sorted(maps.Keys(Unmirrored(c.placements)))
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}
