package main

import (
	"errors"
	"sort"
	"sync"
	"time"

	"github.com/cilium/ebpf"

	"github.com/cgscope/cgscope/internal/bench/benchutil"
)

// progStat is the kernel's accounting of one BPF program at one moment.
type progStat struct {
	name    string // as the kernel keeps it: at most 15 characters
	runtime time.Duration
	runs    uint64
}

// readProg reads one program's name and bpf_stats by id. The descriptor
// opened for it is closed at once: holding it would keep alive a program
// its owner closed.
func readProg(id ebpf.ProgramID) (progStat, error) {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return progStat{}, err
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return progStat{}, err
	}
	st, err := p.Stats()
	if err != nil {
		return progStat{}, err
	}
	return progStat{name: info.Name, runtime: st.Runtime, runs: st.RunCount}, nil
}

// hostProgs reads the run time of every BPF program loaded on the host.
func hostProgs() map[ebpf.ProgramID]time.Duration {
	out := map[ebpf.ProgramID]time.Duration{}
	id := ebpf.ProgramID(0)
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			return out // ErrNotExist: past the last one
		}
		id = next
		if s, err := readProg(id); err == nil {
			out[id] = s.runtime
		}
	}
}

// otherBPF is the run time between two readings of hostProgs of the
// programs not in ours (a program loaded between them counts from zero;
// one unloaded between them is lost).
func otherBPF(start, end map[ebpf.ProgramID]time.Duration, ours []ebpf.ProgramID) time.Duration {
	skip := map[ebpf.ProgramID]bool{}
	for _, id := range ours {
		skip[id] = true
	}
	var sum time.Duration
	for id, t := range end {
		if !skip[id] {
			sum += max(t-start[id], 0)
		}
	}
	return sum
}

// tracker follows the BPF programs a process holds a descriptor to, from
// the start of a window to its end: those it held at the start, and those
// it loaded during the window (which start from zero). A program it closed
// in the window keeps the last figure read, up to one poll before.
type tracker struct {
	pid int

	mu    sync.Mutex
	start map[ebpf.ProgramID]progStat // at the window's start
	last  map[ebpf.ProgramID]progStat // at the latest reading
	held  map[ebpf.ProgramID]bool     // at the latest reading
	polls int
	err   error // the first failure to list the descriptors

	stop chan struct{}
	done chan struct{}
}

// startTracking reads the programs the process holds now (the window's
// start) and polls them every interval until finish.
func startTracking(pid int, every time.Duration) (*tracker, error) {
	t := &tracker{pid: pid, last: map[ebpf.ProgramID]progStat{}, stop: make(chan struct{}), done: make(chan struct{})}
	if err := t.read(); err != nil {
		return nil, err
	}
	t.start = make(map[ebpf.ProgramID]progStat, len(t.last))
	for id, s := range t.last {
		t.start[id] = s
	}
	go func() {
		defer close(t.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-t.stop:
				return
			case <-tick.C:
				if err := t.read(); err != nil {
					t.mu.Lock()
					if t.err == nil {
						t.err = err
					}
					t.mu.Unlock()
				}
			}
		}
	}()
	return t, nil
}

// read lists the process's programs and reads each.
func (t *tracker) read() error {
	ids, _, err := benchutil.HeldBPF(t.pid)
	if err != nil {
		return err
	}
	held := make(map[ebpf.ProgramID]bool, len(ids))
	now := make(map[ebpf.ProgramID]progStat, len(ids))
	for id := range ids {
		pid := ebpf.ProgramID(id)
		s, err := readProg(pid)
		if err != nil {
			continue // closed since the listing
		}
		held[pid] = true
		now[pid] = s
	}
	if len(held) == 0 {
		return errors.New("cgscope holds no BPF program")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, s := range now {
		t.last[id] = s
	}
	t.held = held
	t.polls++
	return nil
}

// bpfUse is what a process's programs did in a window.
type bpfUse struct {
	total  time.Duration
	byName map[string]time.Duration
	runs   map[string]uint64
	ids    []ebpf.ProgramID // every program counted
	gone   int              // of them, closed before the window's end
	loaded int              // of them, loaded during the window
	polls  int
}

// finish reads the programs a last time (the window's end), stops the
// polling and returns what they used since the start.
func (t *tracker) finish() (bpfUse, error) {
	err := t.read()
	close(t.stop)
	<-t.done
	t.mu.Lock()
	defer t.mu.Unlock()
	if err == nil {
		err = t.err
	}
	u := bpfUse{byName: map[string]time.Duration{}, runs: map[string]uint64{}, polls: t.polls}
	for id, s := range t.last {
		s0, ok := t.start[id] // a program loaded in the window starts at zero
		if !ok {
			u.loaded++
		}
		d := max(s.runtime-s0.runtime, 0)
		u.total += d
		u.byName[s.name] += d
		if s.runs >= s0.runs {
			u.runs[s.name] += s.runs - s0.runs
		}
		if !t.held[id] {
			u.gone++
		}
		u.ids = append(u.ids, id)
	}
	sort.Slice(u.ids, func(i, j int) bool { return u.ids[i] < u.ids[j] })
	return u, err
}
