package exporter

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/cgscope/cgscope/internal/attribution"
)

// WorkloadResolver names the container or pod of a cgroup path without
// blocking (attribution.Resolver). A nil WorkloadResolver is allowed where
// one is optional: cgroups then carry no Kubernetes labels.
type WorkloadResolver interface {
	Lookup(cgroupPath string) *attribution.Workload
}

// workloadLabels are the Kubernetes identity of a sample or a cgroup as
// cgscope exports it everywhere: pprof sample labels, /metrics labels,
// history filters. "" is unknown.
type workloadLabels struct {
	containerID, podUID, namespace, pod, container string
}

func labelsOfWorkload(w *attribution.Workload) workloadLabels {
	if w == nil {
		return workloadLabels{}
	}
	return workloadLabels{w.ContainerID, w.PodUID, w.Namespace, w.Pod, w.Container}
}

func (l workloadLabels) values() [5]string {
	return [5]string{l.containerID, l.podUID, l.namespace, l.pod, l.container}
}

// addTo sets the known labels on a pprof sample's string labels.
func (l workloadLabels) addTo(labels map[string][]string) {
	for i, v := range l.values() {
		if v != "" {
			labels[attribution.LabelNames[i]] = []string{v}
		}
	}
}

// WorkloadFilter selects samples by container and pod. Zero values match
// all; set fields must all match.
type WorkloadFilter struct {
	ContainerID string // full id or a prefix of at least 12 hex digits
	PodUID      string
	Namespace   string
	Pod         string
	Container   string
}

// IsZero reports whether the filter selects everything.
func (f WorkloadFilter) IsZero() bool { return f == WorkloadFilter{} }

func (f WorkloadFilter) match(l workloadLabels) bool {
	return (f.ContainerID == "" || strings.HasPrefix(l.containerID, f.ContainerID)) &&
		(f.PodUID == "" || l.podUID == f.PodUID) &&
		(f.Namespace == "" || l.namespace == f.Namespace) &&
		(f.Pod == "" || l.pod == f.Pod) &&
		(f.Container == "" || l.container == f.Container)
}

// workloadParams names the query parameters WorkloadFilter understands.
const workloadParams = "container_id, pod_uid, namespace, pod, container"

// Kubernetes' own name rules (RFC 1123 label for namespaces and containers,
// subdomain for pods), so a typo is a 400 rather than an empty profile.
var (
	reDNSLabel     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	reDNSSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`)
	rePodUID       = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$|^[0-9a-f]{32}$`)
)

// workloadParam is one filter parameter: the field it sets and what it
// accepts.
type workloadParam struct {
	field func(*WorkloadFilter) *string
	valid func(string) bool
	want  string
}

var workloadParamsByName = map[string]workloadParam{
	"container_id": {func(f *WorkloadFilter) *string { return &f.ContainerID }, isContainerIDPrefix,
		"12 to 64 lowercase hex digits"},
	"pod_uid": {func(f *WorkloadFilter) *string { return &f.PodUID }, rePodUID.MatchString,
		"a UID like 01234567-89ab-cdef-0123-456789abcdef"},
	"namespace": {func(f *WorkloadFilter) *string { return &f.Namespace }, reDNSLabel.MatchString,
		"a Kubernetes namespace name (lowercase letters, digits, '-', at most 63)"},
	"pod": {func(f *WorkloadFilter) *string { return &f.Pod }, reDNSSubdomain.MatchString,
		"a Kubernetes pod name (lowercase letters, digits, '-', '.', at most 253)"},
	"container": {func(f *WorkloadFilter) *string { return &f.Container }, reDNSLabel.MatchString,
		"a Kubernetes container name (lowercase letters, digits, '-', at most 63)"},
}

func isContainerIDPrefix(v string) bool {
	return len(v) >= 12 && len(v) <= 64 && strings.Trim(v, "0123456789abcdef") == ""
}

// parseParam sets the field named by a query parameter. known is false for
// a parameter that is not a workload filter.
func (f *WorkloadFilter) parseParam(name, v string) (known bool, err error) {
	p, ok := workloadParamsByName[name]
	if !ok {
		return false, nil
	}
	if !p.valid(v) {
		return true, fmt.Errorf("%s=%q: want %s", name, v, p.want)
	}
	*p.field(f) = v
	return true, nil
}
