package ruby

import "testing"

// The names the prefix check lets through to the regexp, and those it
// stops.
func TestCandidateNames(t *testing.T) {
	var rt Runtime
	for path, want := range map[string]bool{
		"/usr/lib/x86_64-linux-gnu/libruby-3.1.so.3.1.2": true, "/usr/bin/ruby3.1": true, "/usr/bin/ruby": true,
		"/usr/local/lib/libruby.so.3.3": true,
		"/usr/bin/rubyx":                false, "/usr/bin/true": false, "/usr/lib/librubyx.so": false, "/usr/bin/irb": false,
	} {
		if got := rt.Candidate(path); got != want {
			t.Errorf("%s: %v, want %v", path, got, want)
		}
	}
}
