package exporter

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cgscope/cgscope/profiler"
)

// BenchmarkCgroupScrape1000 scrapes the per-cgroup metrics of 1,000 real
// cgroups, each of which ran a process so the kernel counters know it, with
// the real BPF collectors, resolver and cgroup file cache.
func BenchmarkCgroupScrape1000(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("SKIPPED: not root; the benchmark loads eBPF and creates cgroups")
	}
	root, err := profiler.Cgroup2Mount()
	if err != nil {
		b.Fatal(err)
	}
	all := map[string]bool{}
	for _, c := range profiler.CounterCollectors {
		all[c] = true
	}
	counters, err := profiler.NewCgroupCounters(profiler.CountersConfig{
		MaxCgroups: 4096, MaxTasks: 65536, MaxSockets: 65536, Collectors: all, CgroupRoot: root,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer counters.Close()

	parent := filepath.Join(root, fmt.Sprintf("cgscope-bench-%d", os.Getpid()))
	if err := os.Mkdir(parent, 0o755); err != nil {
		b.Fatal(err)
	}
	defer removeTree(parent)
	for i := 0; i < 1000; i++ {
		dir := filepath.Join(parent, fmt.Sprintf("c%04d", i))
		if err := os.Mkdir(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		runIn(b, dir)
	}

	resolver, err := profiler.NewCgroupResolver(1 << 16)
	if err != nil {
		b.Fatal(err)
	}
	reader, err := profiler.NewCgroupFileReader()
	if err != nil {
		b.Fatal(err)
	}
	files := NewFileStatsCache(reader, 10*time.Second, 20*time.Millisecond)
	opts := CgroupOptions{MaxCgroups: 2000, GracePeriod: time.Minute, Collectors: all}
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCgroupCollector(counters, resolver, files, opts))
	if _, err := reg.Gather(); err != nil { // first scrape fills the file cache
		b.Fatal(err)
	}
	files.refresh()

	b.ResetTimer()
	var series int
	for b.Loop() {
		mfs, err := reg.Gather()
		if err != nil {
			b.Fatal(err)
		}
		series = 0
		for _, mf := range mfs {
			series += len(mf.Metric)
		}
	}
	b.ReportMetric(float64(series), "series")
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/scrape")
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

func removeTree(parent string) {
	entries, _ := os.ReadDir(parent)
	for _, e := range entries {
		os.Remove(filepath.Join(parent, e.Name()))
	}
	os.Remove(parent)
}
