package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cgscope/cgscope/internal/kerneltest/held"
)

const miB = 1 << 20

// requireRoot skips, loudly, a test that creates cgroups when not
// root, and fails it in CI, which must run as root.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	msg := "!!! SKIPPED: NOT ROOT: this test creates real cgroups and moves a process into them; run it as root !!!"
	if os.Getenv("CI") != "" {
		t.Fatal("CI must run the tests as root: " + msg)
	}
	t.Skip(msg)
}

// writeTree creates files (path → content) under root.
func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, c := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func wantValue(t *testing.T, name string, got Value, want float64) {
	t.Helper()
	if !got.Known || got.V != want {
		t.Errorf("%s = %+v, want known %v", name, got, want)
	}
}

func wantUnknown(t *testing.T, name string, got Value) {
	t.Helper()
	if got.Known {
		t.Errorf("%s = %+v, want unknown", name, got)
	}
}

// A pure cgroup2 tree as the kernel lays it out, in a temporary directory:
// the library and the reader only read files, so a copy reads like the real
// thing. It checks the cgroup2 semantics this hybrid host cannot show.
func TestCgroupFileReadV2Tree(t *testing.T) {
	root := t.TempDir()
	psi := "some avg10=0.00 avg60=0.00 avg300=0.00 total=%d\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=%d\n"
	writeTree(t, root, map[string]string{
		"cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma misc\n",
		"cpu.stat":           "usage_usec 9000000\nuser_usec 6000000\nsystem_usec 3000000\n",
		"cpu.pressure":       fmt.Sprintf(psi, 1, 0),
		"memory.pressure":    fmt.Sprintf(psi, 2, 1),
		"io.pressure":        fmt.Sprintf(psi, 3, 2),
		"memory.stat":        "anon 100\nfile 200\ninactive_file 50\npgfault 10\npgmajfault 1\n",

		// A pod with a limit and the cpu controller.
		"kubepods.slice/cgroup.controllers": "cpu io memory pids\n",
		"kubepods.slice/cpu.stat": "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n" +
			"nr_periods 400\nnr_throttled 25\nthrottled_usec 1500000\nnr_bursts 0\nburst_usec 0\n",
		"kubepods.slice/cpu.pressure":    fmt.Sprintf(psi, 4000000, 0),
		"kubepods.slice/memory.pressure": fmt.Sprintf(psi, 5000000, 2500000),
		"kubepods.slice/io.pressure":     fmt.Sprintf(psi, 6000000, 3000000),
		"kubepods.slice/memory.current":  "104857600\n",
		"kubepods.slice/memory.max":      "268435456\n",
		"kubepods.slice/memory.stat": "anon 62914560\nfile 41943040\nkernel 1048576\nshmem 0\n" +
			"inactive_anon 0\nactive_anon 62914560\ninactive_file 20971520\nactive_file 20971520\n" +
			"pgfault 12345\npgmajfault 45\n",

		// No limit.
		"kubepods.slice/unlimited.slice/cgroup.controllers": "cpu memory\n",
		"kubepods.slice/unlimited.slice/cpu.stat":           "usage_usec 1\nuser_usec 1\nsystem_usec 0\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n",
		"kubepods.slice/unlimited.slice/memory.current":     "4096\n",
		"kubepods.slice/unlimited.slice/memory.max":         "max\n",
		"kubepods.slice/unlimited.slice/memory.stat":        "anon 0\nfile 8192\ninactive_file 8192\npgfault 0\npgmajfault 0\n",

		// No controllers enabled and PSI files absent (cgroup.pressure 0):
		// only CPU time is known.
		"bare/cgroup.controllers": "\n",
		"bare/cpu.stat":           "usage_usec 42\nuser_usec 40\nsystem_usec 2\n",
	})
	r, err := newFileReader(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Layout() != LayoutV2 {
		t.Fatalf("Layout() = %q, want v2", r.Layout())
	}

	st, err := r.Read("/kubepods.slice")
	if err != nil {
		t.Fatal(err)
	}
	wantValue(t, "usage", st.MemoryUsageBytes, 100*miB)
	wantValue(t, "working set", st.MemoryWorkingSetBytes, 80*miB)
	wantValue(t, "rss", st.MemoryRSSBytes, 60*miB)
	wantValue(t, "cache", st.MemoryCacheBytes, 40*miB)
	wantValue(t, "limit", st.MemoryLimitBytes, 256*miB)
	wantValue(t, "minor faults", st.PageFaultsMinor, 12300)
	wantValue(t, "major faults", st.PageFaultsMajor, 45)
	wantValue(t, "cpu usage", st.CPUUsageSeconds, 2.5)
	wantValue(t, "periods", st.CPUPeriods, 400)
	wantValue(t, "throttled periods", st.CPUThrottledPeriods, 25)
	wantValue(t, "throttled", st.CPUThrottledSeconds, 1.5)
	wantValue(t, "psi cpu", st.PressureCPUSomeSeconds, 4)
	wantValue(t, "psi mem some", st.PressureMemorySomeSeconds, 5)
	wantValue(t, "psi mem full", st.PressureMemoryFullSeconds, 2.5)
	wantValue(t, "psi io some", st.PressureIOSomeSeconds, 6)
	wantValue(t, "psi io full", st.PressureIOFullSeconds, 3)

	st, err = r.Read("kubepods.slice/unlimited.slice/") // sloppy paths are cleaned
	if err != nil {
		t.Fatal(err)
	}
	wantUnknown(t, `limit "max"`, st.MemoryLimitBytes)
	wantValue(t, "working set floored at 0", st.MemoryWorkingSetBytes, 0)
	wantValue(t, "usage", st.MemoryUsageBytes, 4096)
	wantUnknown(t, "psi cpu without cpu.pressure", st.PressureCPUSomeSeconds)

	st, err = r.Read("/bare")
	if err != nil {
		t.Fatal(err)
	}
	wantValue(t, "cpu usage", st.CPUUsageSeconds, 42e-6)
	for name, v := range map[string]Value{
		"usage": st.MemoryUsageBytes, "working set": st.MemoryWorkingSetBytes, "rss": st.MemoryRSSBytes,
		"cache": st.MemoryCacheBytes, "limit": st.MemoryLimitBytes, "minor": st.PageFaultsMinor,
		"major": st.PageFaultsMajor, "periods": st.CPUPeriods, "throttled periods": st.CPUThrottledPeriods,
		"throttled": st.CPUThrottledSeconds, "psi cpu": st.PressureCPUSomeSeconds,
		"psi mem": st.PressureMemorySomeSeconds, "psi io": st.PressureIOFullSeconds,
	} {
		wantUnknown(t, name+" without controllers", v)
	}

	// The root: memory.stat and PSI, no memory.current, memory.max or
	// bandwidth control.
	st, err = r.Read("/")
	if err != nil {
		t.Fatal(err)
	}
	wantValue(t, "root cpu usage", st.CPUUsageSeconds, 9)
	wantValue(t, "root rss", st.MemoryRSSBytes, 100)
	wantValue(t, "root minor faults", st.PageFaultsMinor, 9)
	wantUnknown(t, "root usage", st.MemoryUsageBytes)
	wantUnknown(t, "root working set", st.MemoryWorkingSetBytes)
	wantUnknown(t, "root limit", st.MemoryLimitBytes)
	wantUnknown(t, "root periods", st.CPUPeriods)
	wantValue(t, "root psi io full", st.PressureIOFullSeconds, 2e-6)

	if _, err := r.Read("/gone.slice"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Read of a missing cgroup: err = %v, want fs.ErrNotExist", err)
	}
	if _, err := r.Read("/../../etc"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Read cannot leave the hierarchy: err = %v, want fs.ErrNotExist", err)
	}

	writeTree(t, root, map[string]string{"broken/cgroup.controllers": "memory\n", "broken/cpu.stat": "usage_usec 1\n",
		"broken/memory.stat": "anon 1\n", "broken/io.pressure": "some avg10=0.00\n"})
	st, err = r.Read("/broken")
	if err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Read of a malformed io.pressure: err = %v, want a parse error", err)
	}
	wantValue(t, "cpu usage beside a malformed file", st.CPUUsageSeconds, 1e-6)
	wantUnknown(t, "psi io from a malformed file", st.PressureIOSomeSeconds)
}

// v1 trees, as on a hybrid host (v1 controllers beside a cgroup2 tree) and
// a v1-only host.
func TestCgroupFileReadV1Tree(t *testing.T) {
	root := t.TempDir()
	v1mem := func(usage, limit uint64) map[string]string {
		return map[string]string{
			"memory.stat": "cache 1\nrss 2\nrss_huge 0\npgfault 3\npgmajfault 4\ninactive_file 5\n" +
				"total_cache 20971520\ntotal_rss 62914560\ntotal_pgfault 1000\ntotal_pgmajfault 10\ntotal_inactive_file 10485760\n",
			"memory.oom_control":         "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
			"memory.usage_in_bytes":      strconv.FormatUint(usage, 10) + "\n",
			"memory.max_usage_in_bytes":  "0\n",
			"memory.failcnt":             "0\n",
			"memory.limit_in_bytes":      strconv.FormatUint(limit, 10) + "\n",
			"cpu.stat":                   "nr_periods 10\nnr_throttled 3\nthrottled_time 2500000000\nnr_bursts 0\nburst_time 0\n",
			"cpuacct.usage":              "7500000000\n",
			"cpuacct.stat":               "user 500\nsystem 250\n",
			"cpuacct.usage_percpu":       "5000000000 2500000000\n",
			"cgroup.procs":               "",
			"notify_on_release":          "0\n",
			"memory.kmem.usage_in_bytes": "0\n",
		}
	}
	files := map[string]string{}
	add := func(dir string, m map[string]string) {
		for f, c := range m {
			ctrl := "memory"
			if strings.HasPrefix(f, "cpu.") {
				ctrl = "cpu"
			} else if strings.HasPrefix(f, "cpuacct.") {
				ctrl = "cpuacct"
			}
			files[filepath.Join("v1", ctrl, dir, f)] = c
		}
	}
	add("/", v1mem(2<<30, 9223372036854771712))
	add("/system.slice/app.service", v1mem(100*miB, 256*miB))
	add("/system.slice/unlimited.service", v1mem(100*miB, 9223372036854771712))
	writeTree(t, root, files)
	mounts := map[string]string{
		"memory":  filepath.Join(root, "v1", "memory"),
		"cpu":     filepath.Join(root, "v1", "cpu"),
		"cpuacct": filepath.Join(root, "v1", "cpuacct"),
	}

	t.Run("hybrid", func(t *testing.T) {
		v2 := filepath.Join(root, "unified")
		writeTree(t, v2, map[string]string{
			"cgroup.controllers": "",
			"cpu.stat":           "usage_usec 1\n",
			"system.slice/app.service/cgroup.controllers":       "",
			"system.slice/app.service/cpu.stat":                 "usage_usec 3000000\nuser_usec 2000000\nsystem_usec 1000000\n",
			"system.slice/app.service/cpu.pressure":             "some avg10=0.00 avg60=0.00 avg300=0.00 total=7000000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
			"system.slice/app.service/memory.pressure":          "some avg10=0.00 avg60=0.00 avg300=0.00 total=1000000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=500000\n",
			"system.slice/app.service/io.pressure":              "some avg10=0.00 avg60=0.00 avg300=0.00 total=2000000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=1000000\n",
			"system.slice/unlimited.service/cgroup.controllers": "",
			"system.slice/unlimited.service/cpu.stat":           "usage_usec 5\n",
			"not-mirrored.scope/cgroup.controllers":             "",
			"not-mirrored.scope/cpu.stat":                       "usage_usec 8\n",
		})
		r, err := newFileReader(v2, mounts)
		if err != nil {
			t.Fatal(err)
		}
		if r.Layout() != LayoutHybrid {
			t.Fatalf("Layout() = %q, want hybrid", r.Layout())
		}
		st, err := r.Read("/system.slice/app.service")
		if err != nil {
			t.Fatal(err)
		}
		wantValue(t, "usage", st.MemoryUsageBytes, 100*miB)
		wantValue(t, "working set", st.MemoryWorkingSetBytes, 90*miB)
		wantValue(t, "rss (total_rss)", st.MemoryRSSBytes, 60*miB)
		wantValue(t, "cache (total_cache)", st.MemoryCacheBytes, 20*miB)
		wantValue(t, "limit", st.MemoryLimitBytes, 256*miB)
		wantValue(t, "minor faults", st.PageFaultsMinor, 990)
		wantValue(t, "major faults", st.PageFaultsMajor, 10)
		wantValue(t, "periods", st.CPUPeriods, 10)
		wantValue(t, "throttled periods", st.CPUThrottledPeriods, 3)
		wantValue(t, "throttled (ns)", st.CPUThrottledSeconds, 2.5)
		wantValue(t, "cpu usage from cgroup2", st.CPUUsageSeconds, 3)
		wantValue(t, "psi cpu", st.PressureCPUSomeSeconds, 7)
		wantValue(t, "psi memory full", st.PressureMemoryFullSeconds, 0.5)
		wantValue(t, "psi io some", st.PressureIOSomeSeconds, 2)

		st, err = r.Read("/system.slice/unlimited.service")
		if err != nil {
			t.Fatal(err)
		}
		wantUnknown(t, "v1 limit PAGE_COUNTER_MAX", st.MemoryLimitBytes)
		wantValue(t, "usage", st.MemoryUsageBytes, 100*miB)

		st, err = r.Read("/not-mirrored.scope")
		if err != nil {
			t.Fatal(err)
		}
		wantValue(t, "cpu usage of a cgroup absent from v1", st.CPUUsageSeconds, 8e-6)
		wantUnknown(t, "memory of a cgroup absent from v1", st.MemoryUsageBytes)
		wantUnknown(t, "throttling of a cgroup absent from v1", st.CPUPeriods)

		if _, err := r.Read("/only-in-v1"); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("a cgroup2 path that does not exist: err = %v, want fs.ErrNotExist", err)
		}

		// A v1 cgroup that holds other threads than its cgroup2
		// namesake is not read; the other controller's still is.
		r.CheckMirrors(MirrorChecks{Memory: func(p string) bool { return p != "/system.slice/app.service" }})
		st, err = r.Read("/system.slice/app.service")
		if err != nil {
			t.Fatal(err)
		}
		wantUnknown(t, "memory of an unmirrored v1 cgroup", st.MemoryUsageBytes)
		wantUnknown(t, "faults of an unmirrored v1 cgroup", st.PageFaultsMinor)
		wantValue(t, "throttling of a mirrored v1 cpu cgroup", st.CPUPeriods, 10)
		wantValue(t, "cpu usage from cgroup2", st.CPUUsageSeconds, 3)
		st, err = r.Read("/system.slice/unlimited.service")
		if err != nil {
			t.Fatal(err)
		}
		wantValue(t, "usage of a mirrored v1 cgroup", st.MemoryUsageBytes, 100*miB)
	})

	t.Run("v1", func(t *testing.T) {
		r, err := newFileReader("", mounts)
		if err != nil {
			t.Fatal(err)
		}
		if r.Layout() != LayoutV1 {
			t.Fatalf("Layout() = %q, want v1", r.Layout())
		}
		st, err := r.Read("/system.slice/app.service")
		if err != nil {
			t.Fatal(err)
		}
		wantValue(t, "cpu usage from cpuacct.usage", st.CPUUsageSeconds, 7.5)
		wantValue(t, "limit", st.MemoryLimitBytes, 256*miB)
		wantUnknown(t, "no PSI on v1", st.PressureCPUSomeSeconds)
		st, err = r.Read("/")
		if err != nil {
			t.Fatal(err)
		}
		wantUnknown(t, "root limit", st.MemoryLimitBytes)
		wantValue(t, "root usage", st.MemoryUsageBytes, 2<<30)
		if _, err := r.Read("/nope"); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("a missing cgroup on v1: err = %v, want fs.ErrNotExist", err)
		}
	})

	if _, err := newFileReader("", nil); err == nil {
		t.Error("a reader without any cgroup mount: no error")
	}
}

// expectedLayout tells the host's layout the way runc and systemd do, by
// filesystem magic, independently of the reader's mountinfo parsing.
func expectedLayout(t *testing.T) string {
	const cgroup2Magic, tmpfsMagic = 0x63677270, 0x01021994
	var s syscall.Statfs_t
	if err := syscall.Statfs("/sys/fs/cgroup", &s); err != nil {
		t.Skipf("no /sys/fs/cgroup: %v", err)
	}
	if s.Type == cgroup2Magic {
		return LayoutV2
	}
	if s.Type != tmpfsMagic {
		t.Skipf("/sys/fs/cgroup is neither cgroup2 nor tmpfs (0x%x)", s.Type)
	}
	if err := syscall.Statfs("/sys/fs/cgroup/unified", &s); err == nil && s.Type == cgroup2Magic {
		return LayoutHybrid
	}
	return LayoutV1
}

func TestFileReaderHost(t *testing.T) {
	r, err := NewFileReader()
	if err != nil {
		t.Fatal(err)
	}
	want := expectedLayout(t)
	t.Logf("layout %s, cgroup2 at %q", r.Layout(), r.v2root)
	if r.Layout() != want {
		t.Errorf("Layout() = %q, want %q", r.Layout(), want)
	}
	_, err = r.Read(fmt.Sprintf("/cgscope-no-such-cgroup-%d.scope", os.Getpid()))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Read of an absent cgroup: err = %v, want one wrapping fs.ErrNotExist", err)
	}
	st, err := r.Read("/")
	if err != nil {
		t.Fatalf("Read(/): %v", err)
	}
	if !st.CPUUsageSeconds.Known || st.CPUUsageSeconds.V <= 0 {
		t.Errorf("root CPU usage = %+v, want known and > 0", st.CPUUsageSeconds)
	}
}

// testCgroup is a cgroup the test created at the same relative path in the
// cgroup2 tree and in the v1 memory, cpu and cpuacct hierarchies.
type testCgroup struct {
	rel  string
	dirs []string // every directory created, in creation order
}

func (c *testCgroup) dir(prefix string) string {
	for _, d := range c.dirs {
		if strings.HasPrefix(d, prefix+"/") {
			return d
		}
	}
	return ""
}

// newTestCgroup creates rel under the cgroup2 mount and, when v1 is set, in
// every v1 hierarchy the reader uses, and removes them all when the test ends
// (after moving any process left back to the root cgroup).
func newTestCgroup(t *testing.T, r *FileReader, rel string, v1 bool) *testCgroup {
	t.Helper()
	c := &testCgroup{rel: rel}
	var roots []string
	if r.v2root != "" {
		roots = append(roots, r.v2root)
	}
	if v1 {
		m, err := ReadMounts()
		if err != nil {
			t.Fatal(err)
		}
		mounts := m.V1
		seen := map[string]bool{}
		for _, ctrl := range []string{"memory", "cpu", "cpuacct"} {
			if m, ok := mounts[ctrl]; ok && !seen[m] {
				seen[m] = true
				roots = append(roots, m)
			}
		}
	}
	t.Cleanup(func() {
		for i := len(c.dirs) - 1; i >= 0; i-- {
			d := c.dirs[i]
			root := d[:len(d)-len(rel)]
			for range 50 {
				if b, err := os.ReadFile(filepath.Join(d, "cgroup.procs")); err == nil {
					for _, pid := range strings.Fields(string(b)) {
						_ = os.WriteFile(filepath.Join(root, "cgroup.procs"), []byte(pid), 0)
					}
				}
				err := syscall.Rmdir(d)
				if err == nil || errors.Is(err, syscall.ENOENT) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if _, err := os.Stat(d); err == nil {
				t.Errorf("could not remove test cgroup %s", d)
			}
		}
	})
	for _, root := range roots {
		d := filepath.Join(root, rel)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatalf("creating cgroup: %v", err)
		}
		c.dirs = append(c.dirs, d)
	}
	return c
}

// addProc moves pid into every hierarchy's copy of the cgroup.
func (c *testCgroup) addProc(t *testing.T, pid int) {
	t.Helper()
	for _, d := range c.dirs {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
			t.Fatalf("moving %d into %s: %v", pid, d, err)
		}
	}
}

// The helper process of TestCgroupFileReadLive: on "go" it touches
// CGSCOPE_TEST_ALLOC_MIB MiB, burns CPU for a while, says "ready" and holds
// the memory until its stdin closes.
func TestCgroupFileHelperProcess(t *testing.T) {
	n, err := strconv.Atoi(os.Getenv("CGSCOPE_TEST_ALLOC_MIB"))
	if err != nil {
		return // not the helper
	}
	in := bufio.NewReader(os.Stdin)
	if _, err := in.ReadString('\n'); err != nil {
		os.Exit(2)
	}
	mem := make([]byte, n*miB)
	for i := 0; i < len(mem); i += 4096 {
		mem[i] = 1
	}
	x := 0
	for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end); {
		for i := range 100000 {
			x += i
		}
	}
	fmt.Printf("ready %d\n", x&1)
	_, _ = in.ReadString('\n')
	runtime.KeepAlive(mem)
	os.Exit(0)
}

// TestCgroupFileReadLive creates real cgroups, puts a process that touches
// 64 MiB and burns CPU in them, and checks what Read reports.
func TestCgroupFileReadLive(t *testing.T) {
	requireRoot(t)
	r, err := NewFileReader()
	if err != nil {
		t.Fatal(err)
	}
	if r.Layout() == LayoutV1 {
		t.Skip("v1-only host: covered by TestCgroupFileReadV1Tree")
	}
	rel := fmt.Sprintf("/cgscope-test-%d.scope", os.Getpid())
	cg := newTestCgroup(t, r, rel, r.Layout() == LayoutHybrid)
	const limit = 256 * miB
	if r.Layout() == LayoutHybrid {
		d := cg.dir(mountOf(t, "memory"))
		if d == "" {
			t.Fatal("no v1 memory cgroup created")
		}
		if err := os.WriteFile(filepath.Join(d, "memory.limit_in_bytes"), []byte(strconv.Itoa(limit)), 0); err != nil {
			t.Fatal(err)
		}
		// A fifth of a CPU in 10 ms periods, so that the burn is throttled
		// even when a loaded machine gives it little time.
		if d := cg.dir(mountOf(t, "cpu")); d != "" {
			for _, fv := range [][2]string{{"cpu.cfs_period_us", "10000"}, {"cpu.cfs_quota_us", "2000"}} {
				if err := os.WriteFile(filepath.Join(d, fv[0]), []byte(fv[1]), 0); err != nil {
					t.Fatal(err)
				}
			}
		}
	} else {
		// Pure v2: the root must hand memory and cpu down to the new cgroup.
		b, _ := os.ReadFile(filepath.Join(r.v2root, "cgroup.subtree_control"))
		if !strings.Contains(string(b), "memory") || !strings.Contains(string(b), "cpu") {
			t.Skipf("cgroup2 root does not enable memory and cpu for children (%q)", strings.TrimSpace(string(b)))
		}
		if err := os.WriteFile(filepath.Join(r.v2root, rel, "memory.max"), []byte(strconv.Itoa(limit)), 0); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(r.v2root, rel, "cpu.max"), []byte("2000 10000"), 0); err != nil {
			t.Fatal(err)
		}
	}
	// A second cgroup only in the cgroup2 tree: what v1 does not mirror.
	newTestCgroup(t, r, rel+".lone", false)

	cmd := exec.Command(os.Args[0], "-test.run=^TestCgroupFileHelperProcess$")
	cmd.Env = append(os.Environ(), "CGSCOPE_TEST_ALLOC_MIB=64")
	// Started after the cgroups, so it is killed before they are removed.
	w := held.Start(t, cmd)
	cg.addProc(t, w.Pid())
	w.Send(t, "go")
	if line := w.Line(t); !strings.HasPrefix(line, "ready") {
		t.Fatalf("helper did not get ready: %q", line)
	}

	st, err := r.Read(rel)
	if err != nil {
		t.Fatalf("Read(%s): %v", rel, err)
	}
	t.Logf("%s: %+v", rel, st)
	if !st.MemoryUsageBytes.Known || st.MemoryUsageBytes.V < 64*miB {
		t.Errorf("usage = %+v, want ≥ 64 MiB", st.MemoryUsageBytes)
	}
	if !st.MemoryRSSBytes.Known || st.MemoryRSSBytes.V < 60*miB {
		t.Errorf("RSS = %+v, want ≥ 60 MiB", st.MemoryRSSBytes)
	}
	wantValue(t, "limit", st.MemoryLimitBytes, limit)
	if !st.MemoryWorkingSetBytes.Known || st.MemoryWorkingSetBytes.V > st.MemoryUsageBytes.V {
		t.Errorf("working set = %+v, want known and ≤ usage %v", st.MemoryWorkingSetBytes, st.MemoryUsageBytes.V)
	}
	if !st.MemoryCacheBytes.Known {
		t.Errorf("cache unknown")
	}
	if !st.PageFaultsMinor.Known || st.PageFaultsMinor.V < 64*miB/4096/2 {
		t.Errorf("minor faults = %+v, want at least one per two pages touched", st.PageFaultsMinor)
	}
	if !st.CPUUsageSeconds.Known || st.CPUUsageSeconds.V <= 0 {
		t.Errorf("CPU usage = %+v, want > 0 after a burn", st.CPUUsageSeconds)
	}
	if st.CPUPeriods.V <= 0 || st.CPUThrottledPeriods.V <= 0 || st.CPUThrottledSeconds.V <= 0 ||
		!st.CPUPeriods.Known || !st.CPUThrottledPeriods.Known || !st.CPUThrottledSeconds.Known {
		t.Errorf("a burn under a fifth of a CPU: periods %+v, throttled periods %+v, throttled %+v; want all known and > 0",
			st.CPUPeriods, st.CPUThrottledPeriods, st.CPUThrottledSeconds)
	}
	if _, err := os.Stat("/proc/pressure/cpu"); err == nil {
		for name, v := range map[string]Value{"cpu some": st.PressureCPUSomeSeconds, "memory some": st.PressureMemorySomeSeconds,
			"memory full": st.PressureMemoryFullSeconds, "io some": st.PressureIOSomeSeconds, "io full": st.PressureIOFullSeconds} {
			if !v.Known {
				t.Errorf("PSI %s unknown though the kernel has PSI", name)
			}
		}
	}

	ls, err := r.Read(rel + ".lone")
	if err != nil {
		t.Fatal(err)
	}
	if !ls.CPUUsageSeconds.Known {
		t.Errorf("CPU usage of a cgroup2-only cgroup unknown")
	}
	if r.Layout() == LayoutHybrid && (ls.MemoryUsageBytes.Known || ls.CPUPeriods.Known) {
		t.Errorf("memory/CPU bandwidth of a cgroup absent from v1 should be unknown: %+v", ls)
	}
}

func mountOf(t testing.TB, ctrl string) string {
	t.Helper()
	m, err := ReadMounts()
	if err != nil {
		t.Fatal(err)
	}
	return m.V1[ctrl]
}

// BenchmarkCgroupFileRead reads every cgroup of this machine's cgroup2 tree
// (existing), and, as root, 100 cgroups created for the purpose at the same
// path in every hierarchy (mirrored), as a systemd host has them.
func BenchmarkCgroupFileRead(b *testing.B) {
	r, err := NewFileReader()
	if err != nil {
		b.Fatal(err)
	}
	run := func(b *testing.B, paths []string) {
		b.ReportAllocs()
		for b.Loop() {
			for _, p := range paths {
				if _, err := r.Read(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(paths)), "ns/cgroup")
		b.ReportMetric(float64(len(paths)), "cgroups")
	}
	b.Run("existing", func(b *testing.B) {
		root := r.v2root
		if root == "" {
			root = mountOf(b, "memory")
		}
		var paths []string
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				paths = append(paths, "/"+strings.TrimPrefix(strings.TrimPrefix(p, root), "/"))
			}
			return nil
		})
		run(b, paths)
	})
	b.Run("mirrored", func(b *testing.B) {
		requireRoot(b)
		var paths []string
		var created []string
		b.Cleanup(func() {
			for i := len(created) - 1; i >= 0; i-- {
				_ = syscall.Rmdir(created[i])
			}
		})
		roots := []string{}
		if r.v2root != "" {
			roots = append(roots, r.v2root)
		}
		seen := map[string]bool{}
		for _, ctrl := range []string{"memory", "cpu", "cpuacct"} {
			if m := mountOf(b, ctrl); m != "" && !seen[m] {
				seen[m] = true
				roots = append(roots, m)
			}
		}
		for i := range 100 {
			rel := fmt.Sprintf("/cgscope-bench-%d-%d.scope", os.Getpid(), i)
			for _, root := range roots {
				d := filepath.Join(root, rel)
				if err := os.Mkdir(d, 0o755); err != nil {
					b.Fatal(err)
				}
				created = append(created, d)
			}
			paths = append(paths, rel)
		}
		run(b, paths)
	})
}

// A v1 hierarchy mounted as "cpu,cpuacct" is usable through the usual
// "cpu" symlink beside it, and not without one.
func TestV1Root(t *testing.T) {
	root := t.TempDir()
	mnt := filepath.Join(root, "cpu,cpuacct")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, ok := v1Root(mnt, "cpu"); ok {
		t.Error(`"cpu,cpuacct" without a "cpu" symlink: usable`)
	}
	if err := os.Symlink("cpu,cpuacct", filepath.Join(root, "cpu")); err != nil {
		t.Fatal(err)
	}
	if got, ok := v1Root(mnt, "cpu"); !ok || got != root {
		t.Errorf(`"cpu,cpuacct" with a "cpu" symlink: %q, %v; want %q`, got, ok, root)
	}
	if got, ok := v1Root(filepath.Join(root, "memory"), "memory"); !ok || got != root {
		t.Errorf("memory: %q, %v; want %q", got, ok, root)
	}
}
