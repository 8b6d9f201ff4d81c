package pprof

import (
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/cgscope/cgscope/internal/attribution"
	"github.com/cgscope/cgscope/internal/pipeline"
)

// Selector selects the samples that go into a profile, live or from the
// history: of which kind (CPU or off-CPU), and whose. Zero values match
// all (and the kind is CPU); set fields must all match.
type Selector struct {
	// Kind picks the samples a profile is made of (type=); Match leaves it
	// to the caller, which takes the kind's samples only.
	Kind Kind
	PID  uint32 // 0 = any process
	Comm string // process name, "" = any
	// Cgroup is a cgroup2 path prefix matched by whole components: "/a"
	// matches "/a" and "/a/b", not "/ab". "" = any cgroup.
	Cgroup   string
	Workload WorkloadSelector
}

// Match reports whether a live sample passes the selector.
func (s *Selector) Match(smp *pipeline.Sample) bool {
	if !s.MatchProcess(smp.PID, smp.Comm, smp.Cgroup) {
		return false
	}
	if s.Workload.IsZero() {
		return true
	}
	var w attribution.Workload
	if smp.Workload != nil {
		w = *smp.Workload
	}
	return s.Workload.Match(w)
}

// MatchProcess checks what a sample says without its workload: a caller
// that has to work the workload out (the history) checks this first.
func (s *Selector) MatchProcess(pid uint32, comm, cgroup string) bool {
	return (s.PID == 0 || pid == s.PID) && (s.Comm == "" || comm == s.Comm) && s.matchCgroup(cgroup)
}

// matchCgroup reports whether cg is the prefix's cgroup or below it.
func (s *Selector) matchCgroup(cg string) bool {
	p := strings.TrimSuffix(s.Cgroup, "/")
	return p == "" || cg == p || strings.HasPrefix(cg, p+"/")
}

// WorkloadSelector selects samples by container and pod. Zero values match
// all; set fields must all match.
type WorkloadSelector struct {
	ContainerID string // full id or a prefix of at least 12 hex digits
	PodUID      string
	Namespace   string
	Pod         string
	Container   string
}

// IsZero reports whether the selector selects everything.
func (f WorkloadSelector) IsZero() bool { return f == WorkloadSelector{} }

// Match reports whether a workload passes the selector.
func (f WorkloadSelector) Match(w attribution.Workload) bool {
	return (f.ContainerID == "" || strings.HasPrefix(w.ContainerID, f.ContainerID)) &&
		(f.PodUID == "" || w.PodUID == f.PodUID) &&
		(f.Namespace == "" || w.Namespace == f.Namespace) &&
		(f.Pod == "" || w.Pod == f.Pod) &&
		(f.Container == "" || w.Container == f.Container)
}

// ParamError is a malformed query parameter: HTTP handlers answer 400 with
// it (BadRequest).
type ParamError struct{ msg string }

func (e *ParamError) Error() string { return e.msg }

// BadRequest marks the error as the client's fault.
func (e *ParamError) BadRequest() bool { return true }

// ParamErrorf formats a ParamError.
func ParamErrorf(format string, args ...any) error {
	return &ParamError{msg: fmt.Sprintf(format, args...)}
}

// Param is a query parameter of the caller's own, beside the selector's
// ("seconds" of a live capture, "from" and "to" of the history).
type Param struct {
	Name string
	Set  func(value string) error // its error is the client's fault
}

// ParseParams reads a selector from q, and the caller's own parameters
// with their setters. It is strict: a parameter that is unknown, given more
// than once or malformed is a *ParamError, never silently ignored.
func ParseParams(q url.Values, own ...Param) (Selector, error) {
	var s Selector
	for name, values := range q {
		if len(values) != 1 {
			return s, ParamErrorf("parameter %q given %d times, want once", name, len(values))
		}
		if err := s.set(name, values[0], own); err != nil {
			return s, err
		}
	}
	return s, nil
}

func (s *Selector) set(name, v string, own []Param) error {
	for _, p := range own {
		if p.Name == name {
			if err := p.Set(v); err != nil {
				return &ParamError{msg: err.Error()}
			}
			return nil
		}
	}
	if p, ok := selectorParams[name]; ok {
		if !p.valid(v) {
			return ParamErrorf("%s=%q: want %s", name, v, p.want)
		}
		p.set(s, v)
		return nil
	}
	known := make([]string, 0, len(own)+len(selectorParamNames))
	for _, p := range own {
		known = append(known, p.Name)
	}
	return ParamErrorf("unknown parameter %q (known: %s)", name, strings.Join(append(known, selectorParamNames...), ", "))
}

// Kubernetes' own name rules (RFC 1123 label for namespaces and containers,
// subdomain for pods), so a typo is a 400 rather than an empty profile.
var (
	reDNSLabel     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	reDNSSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`)
	rePodUID       = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$|^[0-9a-f]{32}$`)
)

// selectorParam is one selector parameter: what it accepts and the field it
// sets.
type selectorParam struct {
	valid func(string) bool
	want  string
	set   func(*Selector, string)
}

// selectorParamNames are the selector's parameters, in the order messages
// list them.
var selectorParamNames = []string{"type", "pid", "comm", "cgroup", "container_id", "pod_uid", "namespace", "pod", "container"}

var selectorParams = map[string]selectorParam{
	"type": {isKind, "one of " + strings.Join(kindNames(), ", "),
		func(s *Selector, v string) { s.Kind, _ = ParseKind(v) }},
	"pid": {isPID, "a positive process id",
		func(s *Selector, v string) { n, _ := strconv.ParseUint(v, 10, 32); s.PID = uint32(n) }},
	"comm": {func(v string) bool { return v != "" && len(v) <= 64 }, "a process name",
		func(s *Selector, v string) { s.Comm = v }},
	"cgroup": {func(v string) bool { return strings.HasPrefix(v, "/") }, "a cgroup2 path starting with /",
		func(s *Selector, v string) { s.Cgroup = v }},
	"container_id": {isContainerIDPrefix, "12 to 64 lowercase hex digits",
		func(s *Selector, v string) { s.Workload.ContainerID = v }},
	"pod_uid": {rePodUID.MatchString, "a UID like 01234567-89ab-cdef-0123-456789abcdef",
		func(s *Selector, v string) { s.Workload.PodUID = v }},
	"namespace": {reDNSLabel.MatchString, "a Kubernetes namespace name (lowercase letters, digits, '-', at most 63)",
		func(s *Selector, v string) { s.Workload.Namespace = v }},
	"pod": {reDNSSubdomain.MatchString, "a Kubernetes pod name (lowercase letters, digits, '-', '.', at most 253)",
		func(s *Selector, v string) { s.Workload.Pod = v }},
	"container": {reDNSLabel.MatchString, "a Kubernetes container name (lowercase letters, digits, '-', at most 63)",
		func(s *Selector, v string) { s.Workload.Container = v }},
}

func isKind(v string) bool {
	_, err := ParseKind(v)
	return err == nil
}

func isPID(v string) bool {
	n, err := strconv.ParseUint(v, 10, 32)
	return err == nil && n != 0
}

func isContainerIDPrefix(v string) bool {
	return len(v) >= 12 && len(v) <= 64 && strings.Trim(v, "0123456789abcdef") == ""
}
