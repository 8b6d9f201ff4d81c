package cgroupmetrics

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/cgscope/cgscope/cgroup"
	"github.com/cgscope/cgscope/collector"
	"github.com/cgscope/cgscope/internal/attribution"
	"github.com/cgscope/cgscope/internal/attribution/critest"
)

// scrapeBench is a registry with the cgroup collector over real cgroups,
// each of which ran a process so the kernel counters know it, with the real
// BPF collectors, resolver and cgroup file cache.
type scrapeBench struct {
	reg     prometheus.Gatherer
	cleanup []func()
}

// newScrapeBench creates the cgroups dirs (relative paths, parents first)
// below a fresh parent and registers a collector over them.
func newScrapeBench(b *testing.B, dirs []string, workloads WorkloadResolver) *scrapeBench {
	if os.Geteuid() != 0 {
		b.Skip("SKIPPED: not root; the benchmark loads eBPF and creates cgroups")
	}
	root, err := cgroup.V2Mount()
	if err != nil {
		b.Fatal(err)
	}
	all := map[string]bool{}
	for _, c := range collector.Table {
		all[c.Name] = true
	}
	counters, err := collector.NewCounters(collector.CountersConfig{
		MaxCgroups: 4096, MaxTasks: 65536, MaxSockets: 65536, Collectors: all, CgroupRoot: root,
	})
	if err != nil {
		b.Fatal(err)
	}
	sb := &scrapeBench{cleanup: []func(){func() { counters.Close() }}}
	b.Cleanup(func() {
		for i := len(sb.cleanup) - 1; i >= 0; i-- {
			sb.cleanup[i]()
		}
	})
	parent := filepath.Join(root, fmt.Sprintf("cgscope-bench-%d", os.Getpid()))
	if err := os.Mkdir(parent, 0o755); err != nil {
		b.Fatal(err)
	}
	sb.cleanup = append(sb.cleanup, func() { os.Remove(parent) })
	for _, d := range dirs {
		dir := filepath.Join(parent, d)
		if err := os.Mkdir(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		sb.cleanup = append(sb.cleanup, func() { os.Remove(dir) })
		runIn(b, dir)
	}

	resolver, err := cgroup.NewResolver(1 << 16)
	if err != nil {
		b.Fatal(err)
	}
	reader, err := cgroup.NewFileReader()
	if err != nil {
		b.Fatal(err)
	}
	files := collector.NewFileCache(reader, 10*time.Second, 20*time.Millisecond)
	opts := Options{MaxCgroups: 4000, GracePeriod: time.Minute, Collectors: all, Workloads: workloads}
	sb.reg = CombineGatherers(prometheus.NewRegistry(), New(counters, resolver, files, opts))
	if _, err := sb.reg.Gather(); err != nil { // first scrape fills the file cache
		b.Fatal(err)
	}
	files.Refresh()
	return sb
}

// scrape gathers b.N times and reports series and ms/scrape.
func (sb *scrapeBench) scrape(b *testing.B, check func(mfs []*dto.MetricFamily)) {
	b.ResetTimer()
	var series int
	for b.Loop() {
		mfs, err := sb.reg.Gather()
		if err != nil {
			b.Fatal(err)
		}
		series = 0
		for _, mf := range mfs {
			series += len(mf.Metric)
		}
		if check != nil {
			check(mfs)
			check = nil
		}
	}
	b.ReportMetric(float64(series), "series")
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/scrape")
}

// BenchmarkCgroupScrape1000 scrapes 1,000 plain cgroups.
func BenchmarkCgroupScrape1000(b *testing.B) {
	var dirs []string
	for i := range 1000 {
		dirs = append(dirs, fmt.Sprintf("c%04d", i))
	}
	newScrapeBench(b, dirs, nil).scrape(b, nil)
}

// BenchmarkCgroupScrape500Pods scrapes 500 pods laid out as the kubelet
// and containerd lay them out (a pod cgroup with its sandbox's and one
// container's cgroup: 1,500 cgroups), named by a CRI runtime on a real
// socket whose 500 pods and 1,000 containers are cached. extra-MiB is how
// much the heap grew from before the resolver started to after its first
// listing and the first scrape: the names cache plus the collector's own
// state for 1,500 cgroups, an upper bound of what Kubernetes names cost.
func BenchmarkCgroupScrape500Pods(b *testing.B) {
	cri := critest.Start(b)
	dirs := kubeletPods(500, cri)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	workloads, err := attribution.NewResolver(attribution.Config{Endpoint: cri.Endpoint})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go workloads.Run(ctx)
	probe := "/x/kubepods/burstable/pod" + critest.UID(499) + "/" + critest.HexID(20499)
	for deadline := time.Now().Add(10 * time.Second); !workloads.Lookup(probe).Named(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("the CRI runtime's listing never arrived")
		}
	}
	sb := newScrapeBench(b, dirs, workloads)
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	named := func(mfs []*dto.MetricFamily) {
		for _, mf := range mfs {
			if mf.GetName() != "cgscope_cgroup_cpu_seconds_total" {
				continue
			}
			n := 0
			for _, m := range mf.Metric {
				for _, l := range m.Label {
					if l.GetName() == "container" && l.GetValue() == "app" {
						n++
					}
				}
			}
			if n != 500 {
				b.Fatalf("%d cpu series named container=app, want 500", n)
			}
		}
	}
	sb.scrape(b, named)
	b.ReportMetric(float64(int64(after.HeapInuse)-int64(before.HeapInuse))/(1<<20), "extra-MiB")
}

// kubeletPods lays out n pods as the kubelet and containerd do with the
// cgroupfs driver (pod cgroup, sandbox and one container below it) and,
// with a CRI server, declares them to it.
func kubeletPods(n int, cri *critest.Server) []string {
	dirs := []string{"kubepods", "kubepods/burstable"}
	for i := range n {
		pod := critest.Pod{SandboxID: critest.HexID(10000 + i), UID: critest.UID(i), Namespace: fmt.Sprintf("ns-%d", i%20), Name: fmt.Sprintf("pod-%d", i)}
		ctr := critest.Container{ID: critest.HexID(20000 + i), Name: "app", Pod: pod}
		if cri != nil {
			cri.AddPod(pod)
			cri.AddContainer(ctr)
		}
		podDir := "kubepods/burstable/pod" + pod.UID
		dirs = append(dirs, podDir, podDir+"/"+pod.SandboxID, podDir+"/"+ctr.ID)
	}
	return dirs
}

// BenchmarkCgroupScrape500PodsUnreachableRuntime is the same scrape while
// the CRI socket accepts connections and never answers: the scrape must
// cost what it costs without names (ids from the paths only), never the
// runtime's timeouts.
func BenchmarkCgroupScrape500PodsUnreachableRuntime(b *testing.B) {
	endpoint, _ := critest.Hanging(b)
	workloads, err := attribution.NewResolver(attribution.Config{Endpoint: endpoint, Resync: time.Second, MinRefresh: 100 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go workloads.Run(ctx)
	newScrapeBench(b, kubeletPods(500, nil), workloads).scrape(b, nil)
}

// runIn runs one short process born inside the cgroup dir.
func runIn(b *testing.B, dir string) {
	f, err := os.Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("/bin/true")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
	if err := cmd.Run(); err != nil {
		b.Fatal(err)
	}
}
