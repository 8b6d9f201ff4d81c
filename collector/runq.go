package collector

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/cgscope/cgscope/bpf"
)

// runqSampler is the run-queue latency histogram's program (runq_latency,
// at sched_switch) as a dutycycle.Program: a duty-cycle controller attaches
// it for a window of each period, and each wait it sees counts 1/duty, so
// the histogram's counts estimate every wait of the host without the
// program running at every switch.
type runqSampler struct {
	prog   *ebpf.Program
	config *ebpf.Map // runq_config
	stats  *ebpf.Map // cgroup_stats, where the program counts its runs

	mu     sync.Mutex
	link   link.Link
	closed bool
}

// Start attaches the program for a window that is the fraction duty of the
// controller's period, weighting what it sees by 1/duty. Already attached
// (duty 1 from one period to the next), it only sets the weight. Waits
// ending after the window are not counted: detaching takes up to a few
// milliseconds, which would add to the time counted.
func (s *runqSampler) Start(window time.Duration, duty float64) error {
	if !(duty >= minRunqDuty && duty <= 1) {
		return fmt.Errorf("run-queue latency sampling: duty %v out of [%v, 1]", duty, minRunqDuty)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("run-queue latency sampling: closed")
	}
	cfg := bpf.CgroupStatsRunqConfig{Weight: uint64(math.Round(float64(uint64(1)<<runqWeightShift) / duty)), Until: math.MaxUint64}
	configure := func() error {
		if duty < 1 {
			cfg.Until = monotonicNow() + uint64(window)
		}
		if err := s.config.Update(uint32(0), &cfg, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("run-queue latency sampling: %w", err)
		}
		return nil
	}
	if err := configure(); err != nil {
		return err
	}
	if s.link != nil {
		return nil
	}
	l, err := link.AttachTracing(link.TracingOptions{Program: s.prog})
	if err != nil {
		return fmt.Errorf("attaching the run-queue latency program to sched_switch: %w", err)
	}
	s.link = l
	// The window counts from now that the program runs.
	return configure()
}

// Stop detaches the program.
func (s *runqSampler) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.detach()
}

// monotonicNow is bpf_ktime_get_ns()'s clock.
func monotonicNow() uint64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

func (s *runqSampler) detach() error {
	if s.link == nil {
		return nil
	}
	err := s.link.Close()
	s.link = nil
	return err
}

// minRunqDuty is the smallest duty Start takes: the weight 2^16/duty of a
// wait then stays within 2^24, which the histogram's weighted sum needs to
// fit 64 bits (RUNQ_MAX_SUM_WAIT_NS). The duty-cycle controller goes no
// lower than 0.01.
const minRunqDuty = 1.0 / 256

// Runtime is the BPF time the program used so far: the kernel's bpf_stats
// when they are on; without them (no CAP_SYS_ADMIN to enable them, the
// least-privilege set-up), an estimate from the runs the program counted,
// so that the duty-cycle controller still holds it to its budget.
func (s *runqSampler) Runtime() time.Duration {
	if st, err := s.prog.Stats(); err == nil && st.Runtime > 0 {
		return st.Runtime
	}
	return s.estimatedRuntime()
}

// estimatedRuntime is the program's runs times what one costs.
func (s *runqSampler) estimatedRuntime() time.Duration {
	return time.Duration(s.runs()) * estimatedRunqCost
}

// runs is how many times the program ran since it was loaded.
func (s *runqSampler) runs() uint64 {
	n, err := readStat(s.stats, bpf.CgroupStatsCgroupStatIndexCGSTAT_RUNQ_RUNS)
	if err != nil {
		return 0
	}
	return n
}

// estimatedRunqCost is what one run of runq_latency costs, for when
// bpf_stats cannot say: the most of BenchmarkCounterProgramCost's
// ns/runq_latency (bpf_stats, a pipe ping-pong and a TCP stream with the
// program attached throughout) over 5 runs on the 6.18 test VM (2 CPUs,
// shared): 208-250 ns. Most of those runs count a wait, the dearer path;
// a switch to a thread that did not wait returns after counting the run,
// so on most hosts this errs on the side of the budget.
const estimatedRunqCost = 250 * time.Nanosecond

// close detaches the program for good: a controller still running gets an
// error from Start. The program itself is closed with the others.
func (s *runqSampler) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return s.detach()
}
