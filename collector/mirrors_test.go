package collector

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/cgscope/cgscope/cgroup"
	"github.com/cgscope/cgscope/internal/kerneltest"
)

// On a hybrid host, a cgroup's memory figures come from the v1 memory
// cgroup of its path only while that holds the same threads: here a
// process of cgroup b sits in a's v1 memory cgroup, which makes both a's and
// b's v1 cgroups wrong for them, until it moves to b's.
func TestV1MirrorsOnHybridHost(t *testing.T) {
	kerneltest.RequireRoot(t)
	r, err := cgroup.NewFileReader()
	if err != nil {
		t.Fatal(err)
	}
	if r.Layout() != cgroup.LayoutHybrid {
		t.Skipf("SKIPPED: the host's cgroups are %s, not hybrid", r.Layout())
	}
	root, err := cgroup.V2Mount()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := Start(ctx, Config{Enabled: map[string]bool{Faults: true, CgroupFS: true}, MaxCgroups: 4096, MaxTasks: 65536,
		MaxSockets: 64, CgroupRoot: root, FilesInterval: time.Hour, FilesBudget: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	a, b := kerneltest.NewCgroup(t, "mirror-a"), kerneltest.NewCgroup(t, "mirror-b")
	v1a, v1b := v1MemoryCgroup(t, a), v1MemoryCgroup(t, b)
	wa, wb := startHeld(t, a, "steps"), startHeld(t, b, "steps")
	wa.WaitFor(t, "ready")
	wb.WaitFor(t, "ready")
	joinCgroup(t, v1a, wa.Pid())
	joinCgroup(t, v1a, wb.Pid()) // b's process in a's v1 cgroup

	memoryKnown := func() (bool, bool) {
		t.Helper()
		if _, err := s.Counters().Read(); err != nil { // a collection: where the threads are
			t.Fatal(err)
		}
		s.Files().Refresh()
		sa, _ := s.Files().Read(a.Rel, time.Now())
		sb, _ := s.Files().Read(b.Rel, time.Now())
		return sa.MemoryUsageBytes.Known, sb.MemoryUsageBytes.Known
	}
	if ka, kb := memoryKnown(); ka || kb {
		t.Errorf("memory read from v1 cgroups that hold another cgroup's threads: a %v, b %v", ka, kb)
	}
	joinCgroup(t, v1b, wb.Pid())
	if ka, kb := memoryKnown(); !ka || !kb {
		t.Errorf("memory not read from v1 cgroups that mirror their cgroup2 namesakes: a %v, b %v", ka, kb)
	}
	wa.Finish(t)
	wb.Finish(t)
}

// v1MemoryCgroup makes the v1 memory cgroup of the cgroup's path.
func v1MemoryCgroup(t *testing.T, cg *kerneltest.Cgroup) string {
	t.Helper()
	dir := filepath.Join("/sys/fs/cgroup/memory", cg.Rel)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kerneltest.RemoveCgroupDir(t, dir, "/sys/fs/cgroup/memory/cgroup.procs") })
	return dir
}

func joinCgroup(t *testing.T, dir string, pid int) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		t.Fatal(err)
	}
}
