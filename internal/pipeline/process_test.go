package pipeline

import (
	"os/exec"
	"slices"
	"testing"

	"github.com/cgscope/cgscope/profiler"
)

type recordReleaser struct{ pids []uint32 }

func (r *recordReleaser) ReleaseProcess(pid uint32) { r.pids = append(r.pids, pid) }

// TestProcessReleasedAfterNextDrain checks that an exited process is released only once
// a drain that started after its exit was delivered, that a new image of the pid cancels
// the release, and that a stale image's notice is ignored.
func TestProcessReleasedAfterNextDrain(t *testing.T) {
	ps := newProcesses()
	var r recordReleaser
	ps.releasers = append(ps.releasers, r.ReleaseProcess)

	ps.started(10, 1)
	ps.started(11, 1)
	ps.started(12, 1)
	d := ps.drainStarted()
	ps.gone(10, 1) // during drain d: its last samples may be after d's read
	ps.gone(12, 7) // an older image's notice: 12 runs image 1
	ps.release(d)
	if len(r.pids) != 0 {
		t.Fatalf("released %v by the drain running at the exit", r.pids)
	}
	ps.gone(11, 1)
	ps.started(11, 2) // exec'd again before its release: the new snapshot stays
	d = ps.drainStarted()
	ps.release(d)
	if !slices.Equal(r.pids, []uint32{10}) {
		t.Fatalf("released %v, want [10]", r.pids)
	}
	if run, ex := ps.counts(); run != 2 || ex != 0 {
		t.Fatalf("running %d exited %d, want 2 and 0", run, ex)
	}
}

// TestProcessSweep checks that an announced process that exited without a notice (the
// ring buffer was full) is found by the sweep and released after the next drain.
func TestProcessSweep(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := uint32(cmd.Process.Pid) // reaped: no such process (unless the pid is reused)
	ps := newProcesses()
	var r recordReleaser
	ps.releasers = append(ps.releasers, r.ReleaseProcess)
	ps.started(dead, 5)
	ps.started(1, 5) // init lives
	ps.sweep()
	ps.release(ps.drainStarted())
	if !slices.Equal(r.pids, []uint32{dead}) || ps.exitsBySweep.Load() != 1 {
		t.Fatalf("released %v (sweep exits %d), want [%d]", r.pids, ps.exitsBySweep.Load(), dead)
	}
}

// TestUnannouncedSampledProcessSwept checks that a process with user stacks in a drain
// that was never announced (its notice lost) is tracked, so its exit is swept and
// released like an announced one's.
func TestUnannouncedSampledProcessSwept(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := uint32(cmd.Process.Pid)
	ps := newProcesses()
	var r recordReleaser
	ps.releasers = append(ps.releasers, r.ReleaseProcess)
	ps.sampled(&profiler.RawBatch{Samples: []profiler.RawSample{
		{PID: dead, User: []uint64{0x1000}},
		{PID: 1}, // no user stack: kernel work, nothing snapshotted
	}})
	if run, _ := ps.counts(); run != 1 {
		t.Fatalf("%d processes tracked, want the one with a user stack", run)
	}
	ps.sweep()
	ps.release(ps.drainStarted())
	if !slices.Equal(r.pids, []uint32{dead}) {
		t.Fatalf("released %v, want [%d]", r.pids, dead)
	}
}

// TestReleasedProcessNotTrackedAgain checks that a process released after a
// drain, whose last samples that drain held, is not taken for an unannounced
// one: it is released once, and the sweep signals no process for it.
func TestReleasedProcessNotTrackedAgain(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := uint32(cmd.Process.Pid)
	p := &Pipeline{procs: newProcesses()}
	var r recordReleaser
	p.OnProcessReleased(&r)
	p.procs.started(dead, 3)
	p.procs.gone(dead, 3)
	// The drain after the exit holds the process's last samples.
	d := p.procs.drainStarted()
	p.releaseExited(d, &profiler.RawBatch{Samples: []profiler.RawSample{{PID: dead, User: []uint64{0x1000}}}})
	if !slices.Equal(r.pids, []uint32{dead}) {
		t.Fatalf("released %v, want [%d]", r.pids, dead)
	}
	if run, ex := p.procs.counts(); run != 0 || ex != 0 || p.procs.exitsBySweep.Load() != 0 {
		t.Fatalf("after its release: %d running, %d exited, %d swept; want none", run, ex, p.procs.exitsBySweep.Load())
	}
	p.releaseExited(p.procs.drainStarted(), &profiler.RawBatch{})
	if len(r.pids) != 1 {
		t.Fatalf("released %v: more than once", r.pids)
	}
}
