package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"
	"go.opentelemetry.io/collector/pdata/pcommon"

	"github.com/cgscope/cgscope/internal/attribution/critest"
)

// kubePod is a pod with one container, laid out in real cgroups the way a
// runtime lays it out, below the test's own cgroup.
type kubePod struct {
	ns, name, container string
	uid, sandboxID, id  string
	rel, abs            string // the container's cgroup
}

// containerCgroups creates the pod's and container's cgroups under the
// test cgroup in one runtime's layout and removes them after the test.
func containerCgroups(t *testing.T, parentRel, parentAbs string, segments ...string) (rel, abs string) {
	t.Helper()
	rel, abs = parentRel, parentAbs
	for _, seg := range segments {
		rel, abs = rel+"/"+seg, filepath.Join(abs, seg)
		if err := os.Mkdir(abs, 0o755); err != nil {
			t.Fatal(err)
		}
		dir := abs
		t.Cleanup(func() { // LIFO: children first, before cgroup2's own cleanup
			for range 50 {
				if err := os.Remove(dir); err == nil || os.IsNotExist(err) {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
			t.Errorf("could not remove %s", dir)
		})
	}
	return rel, abs
}

func systemdSlice(uid string) string { return strings.ReplaceAll(uid, "-", "_") }

// Containers of containerd (systemd and cgroupfs drivers) and CRI-O get
// their namespace, pod and container names from the runtime's CRI socket:
// on /metrics, in pprof sample labels and filters, and in the history.
func TestKubernetesAttribution(t *testing.T) {
	cri := critest.Start(t)
	rootRel, rootAbs := cgroup2(t)
	pods := []*kubePod{
		{ns: "shop", name: "cart-7d9f", container: "app", uid: critest.UID(11), sandboxID: critest.HexID(110), id: critest.HexID(111)},
		{ns: "shop", name: "search-5b6c", container: "indexer", uid: critest.UID(12), sandboxID: critest.HexID(120), id: critest.HexID(121)},
		{ns: "batch", name: "etl-29", container: "worker", uid: critest.UID(13), sandboxID: critest.HexID(130), id: critest.HexID(131)},
	}
	layouts := [][]string{
		{"kubepods.slice", "kubepods-burstable.slice", "kubepods-burstable-pod" + systemdSlice(pods[0].uid) + ".slice", "cri-containerd-" + pods[0].id + ".scope"},
		{"kubepods", "besteffort", "pod" + pods[1].uid, pods[1].id},
		{"kubepods-pod" + systemdSlice(pods[2].uid) + ".slice", "crio-" + pods[2].id + ".scope"},
	}
	// The second and third layouts share nothing with the first, so each
	// starts from the test root.
	for i, p := range pods {
		p.rel, p.abs = containerCgroups(t, rootRel, rootAbs, layouts[i]...)
		pod := critest.Pod{SandboxID: p.sandboxID, UID: p.uid, Namespace: p.ns, Name: p.name}
		cri.AddPod(pod)
		cri.AddContainer(critest.Container{ID: p.id, Name: p.container, Pod: pod})
	}

	otlp := startOTLPReceiver(t, "")
	d := startCgscope(t, t.Cleanup, "--profiling.frequency=99", "--profiling.interval=1s",
		"--kubernetes.cri-endpoint="+cri.Endpoint,
		"--otlp.endpoint="+otlp.addr, "--otlp.insecure", "--otlp.interval=1s")
	dir := artifacts(t)
	for _, p := range pods {
		w := workload(t, filepath.Join(dir, "gosplit"))
		joinCgroup(t, p.abs, w.Process.Pid)
	}
	from := time.Now()

	// /metrics: every container's CPU under its full label set.
	deadline := time.Now().Add(20 * time.Second)
	for _, p := range pods {
		series := fmt.Sprintf(`cgscope_cgroup_cpu_seconds_total{cgroup=%q,container=%q,container_id=%q,namespace=%q,pod=%q,pod_uid=%q}`,
			p.rel, p.container, p.id, p.ns, p.name, p.uid)
		for {
			body, _ := httpGet(t, d.url("/metrics"))
			if v := parseMetrics(t, string(body))[series]; v > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %s on /metrics:\n%s\ncgscope log:\n%s", series, grepLines(string(body), p.id[:12]), d.stderr)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	// A live capture filtered by namespace holds both shop pods and only
	// them, each sample labelled with its pod and container.
	prof := d.capture(t, "seconds=2&namespace=shop")
	byPod := map[string]int64{}
	for _, s := range prof.Sample {
		if got := s.Label["namespace"]; len(got) != 1 || got[0] != "shop" {
			t.Fatalf("namespace=shop let through a sample labelled %v", s.Label)
		}
		byPod[s.Label["pod"][0]+"/"+s.Label["container"][0]] += s.Value[0]
	}
	for _, p := range pods[:2] {
		if byPod[p.name+"/"+p.container] == 0 {
			t.Errorf("no samples labelled %s/%s in the namespace=shop capture: %v", p.name, p.container, byPod)
		}
	}
	prof = d.capture(t, "seconds=2&pod=etl-29&container=worker")
	if n := samplesWhere(prof, func(s *profile.Sample) bool { return stackHas(s, "main.hotSeventyFive") }); n == 0 {
		t.Errorf("pod=etl-29: no samples of the workload's hot function:\n%s", topLeaves(prof))
	}
	for _, s := range prof.Sample {
		if s.Label["container_id"][0] != pods[2].id || s.Label["pod_uid"][0] != pods[2].uid {
			t.Fatalf("pod=etl-29 sample labels %v", s.Label)
		}
	}

	// The history keeps the names: a query by namespace after the fact.
	time.Sleep(1500 * time.Millisecond) // one more window stored
	hist := d.historyProfile(t, from, time.Now(), "&namespace=batch")
	if len(hist.Sample) == 0 {
		t.Fatal("history: no samples for namespace=batch")
	}
	for _, s := range hist.Sample {
		if s.Label["pod"][0] != "etl-29" || s.Label["container"][0] != "worker" {
			t.Fatalf("history namespace=batch returned a sample labelled %v", s.Label)
		}
	}

	// Malformed names are the client's mistake.
	for _, q := range []string{"namespace=Shop_Prod", "pod=", "container=" + strings.Repeat("x", 64), "pod_uid=nope"} {
		if body, status := httpGet(t, d.url("/debug/pprof/profile?seconds=1&"+q)); status != 400 {
			t.Errorf("profile?%s: %d %s, want 400", q, status, body)
		}
		if body, status := httpGet(t, d.url("/api/v1/profile?"+q)); status != 400 {
			t.Errorf("api/v1/profile?%s: %d %s, want 400", q, status, body)
		}
	}
	body, _ := httpGet(t, d.url("/metrics"))
	if v := parseMetrics(t, string(body))["cgscope_kubernetes_cri_up"]; v != 1 {
		t.Errorf("cgscope_kubernetes_cri_up = %v, want 1", v)
	}

	// OTLP carries the same names: profiles as resource attributes,
	// metrics as data point attributes.
	for _, p := range pods {
		want := map[string]string{"k8s.namespace.name": p.ns, "k8s.pod.name": p.name, "k8s.container.name": p.container,
			"container.id": p.id, "k8s.pod.uid": p.uid}
		if !otlp.hasProfileResource(want) {
			t.Errorf("no OTLP profile resource with %v", want)
		}
		if !otlp.hasMetricPoint("container.cpu.time", want) {
			t.Errorf("no OTLP container.cpu.time point with %v", want)
		}
	}
}

// hasProfileResource reports whether a received profile's resource has
// every attribute of want.
func (r *otlpReceiver) hasProfileResource(want map[string]string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, pd := range r.profiles {
		for i := 0; i < pd.ResourceProfiles().Len(); i++ {
			if hasAttrs(pd.ResourceProfiles().At(i).Resource().Attributes(), want) {
				return true
			}
		}
	}
	return false
}

// hasMetricPoint reports whether a received sum data point of the named
// metric has every attribute of want.
func (r *otlpReceiver) hasMetricPoint(name string, want map[string]string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, md := range r.metrics {
		rms := md.ResourceMetrics()
		for i := 0; i < rms.Len(); i++ {
			sms := rms.At(i).ScopeMetrics()
			for j := 0; j < sms.Len(); j++ {
				ms := sms.At(j).Metrics()
				for k := 0; k < ms.Len(); k++ {
					if ms.At(k).Name() != name {
						continue
					}
					dps := ms.At(k).Sum().DataPoints()
					for l := 0; l < dps.Len(); l++ {
						if hasAttrs(dps.At(l).Attributes(), want) {
							return true
						}
					}
				}
			}
		}
	}
	return false
}

func hasAttrs(m pcommon.Map, want map[string]string) bool {
	for k, v := range want {
		if got, ok := m.Get(k); !ok || got.Str() != v {
			return false
		}
	}
	return true
}

// A runtime socket that accepts and never answers: cgscope still starts,
// serves /metrics with ids from cgroup paths, reports the runtime down, and
// says so once in its log, not once per retry.
func TestKubernetesUnreachableRuntime(t *testing.T) {
	endpoint, _ := critest.Hanging(t)
	rootRel, rootAbs := cgroup2(t)
	uid, id := critest.UID(21), critest.HexID(211)
	rel, abs := containerCgroups(t, rootRel, rootAbs, "kubepods", "pod"+uid, id)
	d := startCgscope(t, t.Cleanup, "--kubernetes.cri-endpoint="+endpoint, "--kubernetes.cri-resync-interval=1s")
	w := workload(t, filepath.Join(artifacts(t), "gosplit"), "-duration=1s")
	joinCgroup(t, abs, w.Process.Pid)
	w.Wait()

	series := fmt.Sprintf(`cgscope_cgroup_cpu_seconds_total{cgroup=%q,container="",container_id=%q,namespace="",pod="",pod_uid=%q}`, rel, id, uid)
	deadline := time.Now().Add(20 * time.Second)
	for {
		body, _ := httpGet(t, d.url("/metrics"))
		m := parseMetrics(t, string(body))
		if m[series] > 0 && m[`cgscope_kubernetes_cri_listings_total{result="error"}`] >= 3 {
			if m["cgscope_kubernetes_cri_up"] != 0 {
				t.Errorf("cgscope_kubernetes_cri_up = %v with a runtime that never answers", m["cgscope_kubernetes_cri_up"])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("want %s and 3 failed listings:\n%s\n%s", series, grepLines(string(body), "kubernetes"), d.stderr)
		}
		time.Sleep(250 * time.Millisecond)
	}
	d.stop()
	if n := strings.Count(d.stderr.String(), "CRI runtime unreachable"); n != 1 {
		t.Errorf("the unreachable runtime was logged %d times, want once:\n%s", n, d.stderr)
	}
}
