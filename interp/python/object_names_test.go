package python

import "testing"

// The names the prefix check lets through to the regexp, and those it
// stops: the interpreter's executables and libraries, and others.
func TestNameMinor(t *testing.T) {
	for path, want := range map[string]int{
		"/usr/bin/python3.11": 11, "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0": 11,
		"/root/.pyenv/versions/3.12.1/bin/python3.12": 12, "python3.13d": 13,
		"/usr/bin/python3": 0, "/usr/lib/libpython3.so": 0, "/usr/bin/true": 0, "/usr/bin/mypython3.11": 0,
	} {
		if got := nameMinor(path); got != want {
			t.Errorf("%s: minor %d, want %d", path, got, want)
		}
	}
}
