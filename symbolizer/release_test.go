package symbolizer

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// openFDs counts this test process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestReleaseProcessClosesObjects checks that releasing the processes gives back their
// snapshots and closes the objects no held process maps, file descriptors included, and
// that an object shared with a process still held stays open.
func TestReleaseProcessClosesObjects(t *testing.T) {
	fdsBefore := openFDs(t)
	s, first, bin := startC(t, false)
	second, _ := startProgram(t, bin)
	if err := s.ProcessStarted(second.pid); err != nil {
		t.Fatal(err)
	}
	hidden, _ := elfSymbol(t, bin, "hidden_work", false)
	for _, p := range []*testProgram{first, second} {
		if f := s.User(p.pid, []uint64{runtimeAddress(t, p.pid, bin, hidden)}); f[0].Function != "hidden_work" {
			t.Fatalf("pid %d: frame %+v", p.pid, f[0])
		}
	}
	if s.blocks.len() == 0 {
		t.Fatal("symbolizing read no block of the objects")
	}
	st := s.Stats()
	if st.ProcessesCached != 2 || st.OpenFiles == 0 || st.ObjectsMapped < st.OpenFiles || st.ProcessBytes <= 0 {
		t.Fatalf("two processes held: %+v", st)
	}
	t.Logf("held: %d objects mapped, %d files open, %d snapshot bytes, %d of %d maps reads by PROCMAP_QUERY",
		st.ObjectsMapped, st.OpenFiles, st.ProcessBytes, st.MapsQueries, st.MapsReads)
	open := st.OpenFiles

	s.ReleaseProcess(first.pid)
	st = s.Stats()
	if st.ProcessesCached != 1 || st.OpenFiles != open || st.ProcessesForgotten != 1 || st.ObjectsUnmapped != 0 {
		t.Fatalf("after releasing one of two processes of the same binary: %+v (open before %d)", st, open)
	}
	// The second process's objects still answer.
	if f := s.User(second.pid, []uint64{runtimeAddress(t, second.pid, bin, hidden)}); f[0].Function != "hidden_work" {
		t.Fatalf("frame of the process still held: %+v", f[0])
	}

	s.ReleaseProcess(second.pid)
	s.ReleaseProcess(second.pid) // twice: nothing more to give back
	st = s.Stats()
	if st.ProcessesCached != 0 || st.OpenFiles != 0 || st.ObjectsMapped != 0 || st.ObjectsCached != 0 ||
		st.ProcessBytes != 0 || st.ProcessesForgotten != 2 || st.ObjectsUnmapped == 0 || st.ProcessesEvicted != 0 {
		t.Fatalf("after releasing both: %+v", st)
	}
	if n := s.blocks.len(); n != 0 {
		t.Errorf("%d blocks of closed objects left in the block cache", n)
	}
	// The test programs' pipes are still open; only the objects' files were closed.
	if n := openFDs(t); n > fdsBefore+6 {
		t.Errorf("%d file descriptors open, %d before the test (objects left open?)", n, fdsBefore)
	}
}

// TestEvictedSnapshotReleasesObjects checks the second line: a snapshot pushed out by
// MaxProcesses gives back its objects too, and is counted as evicted.
func TestEvictedSnapshotReleasesObjects(t *testing.T) {
	mustBeRoot(t)
	dir := t.TempDir()
	bin := buildC(t, dir, "prog", cProgram, "-ldl")
	s := New(Options{MaxProcesses: 1})
	a, _ := startProgram(t, bin)
	// Another binary: different objects but libc.
	sleep := exec.Command("sleep", "60")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleep.Process.Kill(); sleep.Wait() })
	b := uint32(sleep.Process.Pid)
	waitExec(t, b, "sleep")
	for _, pid := range []uint32{a.pid, b} {
		if err := s.ProcessStarted(pid); err != nil {
			t.Fatal(err)
		}
	}
	st := s.Stats()
	if st.ProcessesCached != 1 || st.ProcessesEvicted != 1 || st.ObjectsUnmapped == 0 {
		t.Fatalf("after a second process past MaxProcesses=1: %+v", st)
	}
	s.ReleaseProcess(b)
	if st = s.Stats(); st.OpenFiles != 0 || st.ObjectsMapped != 0 || st.ProcessBytes != 0 {
		t.Fatalf("after releasing the last process: %+v", st)
	}
}

// waitExec waits until pid runs the program name (its exec is done).
func waitExec(t *testing.T, pid uint32, name string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if b, err := os.ReadFile("/proc/" + itoa(pid) + "/comm"); err == nil && strings.TrimSpace(string(b)) == name {
			return
		}
	}
	t.Fatalf("pid %d did not exec %s", pid, name)
}
