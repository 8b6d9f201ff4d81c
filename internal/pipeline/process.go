package pipeline

import (
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/cgscope/cgscope/profiler"
)

// Process lifecycle. The sampler announces a process image at its first sample
// (ProcessStarted) and its exec or exit (ProcessGone). What the symbolizer holds of a
// process is needed until its last samples are symbolized, and those may still be in
// the kernel's maps when it exits: a sample taken just before the exit is drained by the
// next drain at the latest. So an exited process is released once a drain that started
// after its exit was symbolized: at most two intervals after the exit, one on average.
// A notice the ring buffer had no room for is made up for by a sweep at every drain,
// which finds the announced processes that no longer exist.

// processes tracks the announced processes and those waiting to be released.
type processes struct {
	mu sync.Mutex
	// drains counts the drains started; an exit is stamped with the count at its time.
	drains uint64
	// running maps announced pids to their image (0 when announced by a sweep of the
	// sampler, which knows no image).
	running map[uint32]uint64
	// exited are the gone processes, by the drain count at their exit.
	exited map[uint32]uint64

	// releasers are told of each released pid (OnProcessReleased).
	releasers []func(pid uint32)

	exitsBySampler, exitsBySweep atomic.Uint64
}

func newProcesses() *processes {
	return &processes{running: map[uint32]uint64{}, exited: map[uint32]uint64{}}
}

// started records pid's new image: a release pending for the pid (an earlier image,
// or the process the pid belonged to before) no longer applies, since the new snapshot
// replaces the old one.
func (ps *processes) started(pid uint32, image uint64) {
	ps.mu.Lock()
	ps.running[pid] = image
	delete(ps.exited, pid)
	ps.mu.Unlock()
}

// gone records the exit or exec of pid's image (0: whatever image); the notice of an
// image older than the one announced last is ignored.
func (ps *processes) gone(pid uint32, image uint64) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if cur, ok := ps.running[pid]; ok && image != 0 && cur != 0 && cur != image {
		return
	}
	delete(ps.running, pid)
	ps.exited[pid] = ps.drains
	ps.exitsBySampler.Add(1)
}

// drainStarted counts a drain and returns its number.
func (ps *processes) drainStarted() uint64 {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.drains++
	return ps.drains
}

// release tells the releasers of the processes that exited before drain started (drain
// has been symbolized): none of their samples is left in the kernel.
func (ps *processes) release(drain uint64) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for pid, at := range ps.exited {
		if at < drain {
			// Under ps.mu, so that a new image of the pid (started) cannot be
			// snapshotted in between and lose its snapshot.
			for _, fn := range ps.releasers {
				fn(pid)
			}
			delete(ps.exited, pid)
		}
	}
}

// sweep finds the announced processes that no longer exist although no notice said so
// (the ring buffer was full), and treats them as exited now.
func (ps *processes) sweep() {
	ps.mu.Lock()
	candidates := make(map[uint32]uint64, len(ps.running))
	for pid, image := range ps.running {
		candidates[pid] = image
	}
	ps.mu.Unlock()
	for pid := range candidates {
		// Signal 0 only checks that the pid names a process.
		if syscall.Kill(int(pid), 0) != syscall.ESRCH {
			delete(candidates, pid)
		}
	}
	if len(candidates) == 0 {
		return
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for pid, image := range candidates {
		if cur, ok := ps.running[pid]; ok && cur == image { // not announced again meanwhile
			delete(ps.running, pid)
			ps.exited[pid] = ps.drains
			ps.exitsBySweep.Add(1)
		}
	}
}

// counts returns how many processes run and wait to be released.
func (ps *processes) counts() (running, exited int) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return len(ps.running), len(ps.exited)
}

// ProcessReleaser is state kept per process (a symbolizer's mappings snapshot, an
// interpreter's per-process state) that can be let go of once the process is done with.
type ProcessReleaser interface {
	// ReleaseProcess is called once pid exited and its last samples were symbolized and
	// delivered; a later image of the pid is announced anew. It must not block long: it
	// runs after each drain, before the next one.
	ReleaseProcess(pid uint32)
}

// OnProcessReleased adds r to what is told of released processes: the one seam through
// which per-process state is let go of. The symbolizer given to New joins by itself when
// it is a ProcessReleaser. Call it before the pipeline runs.
func (p *Pipeline) OnProcessReleased(r ProcessReleaser) {
	p.procs.mu.Lock()
	p.procs.releasers = append(p.procs.releasers, r.ReleaseProcess)
	p.procs.mu.Unlock()
}

// releaseWith joins v to the releasers if it is one.
func (p *Pipeline) releaseWith(v any) {
	if r, ok := v.(ProcessReleaser); ok {
		p.OnProcessReleased(r)
	}
}

// releaseExited is run after every symbolized drain: it releases the processes
// whose last samples that drain held, and sweeps for exits nobody announced.
// The batch's unannounced processes are looked for before the release: after
// it, every process the release let go of, whose last samples the batch
// holds, would look unannounced, and be tracked, swept and released again
// (a signal and a release per exited process: under churn, hundreds at
// every drain).
func (p *Pipeline) releaseExited(drain uint64, batch *profiler.RawBatch) {
	p.procs.sampled(batch)
	p.procs.release(drain)
	p.procs.sweep()
}

// sampled adds the processes with user stacks in batch that were never announced (their
// notice was lost, the ring buffer being full): the symbolizer snapshotted them to name
// their frames, so they must be swept and released like the others.
func (ps *processes) sampled(batch *profiler.RawBatch) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	last := uint32(0)
	for i := range batch.Samples {
		smp := &batch.Samples[i]
		if len(smp.User) == 0 || smp.PID == last {
			continue
		}
		last = smp.PID
		if _, ok := ps.running[smp.PID]; ok {
			continue
		}
		if _, ok := ps.exited[smp.PID]; ok {
			continue
		}
		ps.running[smp.PID] = 0 // no image known: the sweep alone ends it
	}
}
