package collector

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/cgscope/cgscope/internal/bpfstats"
	"github.com/cgscope/cgscope/internal/dutycycle"
	"github.com/cgscope/cgscope/internal/kerneltest"
)

// The run-queue latency histogram's count, each wait weighted by 1/duty,
// estimates how many waits a workload's threads had (how often they were
// switched in, by their schedstat): exactly, give or take 2%, for a pipe
// ping-pong with the program attached throughout, and within 10% for
// threads waking from short sleeps with the duty-cycle controller
// attaching it a quarter of the time. (Not the ping-pong: a workload bound
// by its switches runs slower while the program is attached, so a sample
// of those moments sees fewer waits than the rest of the time has.)
func TestRunqHistogramSampled(t *testing.T) {
	c := sharedCounters(t)
	p := c.SwitchPrograms()
	if p == nil {
		t.Fatal("no run-queue latency program to sample with")
	}
	t.Run("duty=1", func(t *testing.T) {
		if err := p.Start(time.Hour, 1); err != nil {
			t.Fatal(err)
		}
		defer p.Stop()
		counted, waits, u := sampledWaits(t, c, "pingpong", "2s")
		if !within(counted, waits, 0.02) {
			t.Errorf("histogram counted %.0f waits, the threads had %.0f: want within 2%%", counted, waits)
		}
		// Attached throughout, the sum is every wait, less the parts
		// before a move to another CPU's run queue.
		if u.RunqHistogramSumSeconds > u.RunqWaitSeconds*1.01 || u.RunqHistogramSumSeconds < u.RunqWaitSeconds*0.8 {
			t.Errorf("histogram sum %.4f s, the threads waited %.4f s: want 80-101%%", u.RunqHistogramSumSeconds, u.RunqWaitSeconds)
		}
	})
	t.Run("duty=0.25", func(t *testing.T) {
		// Without a measured cost the controller assumes Fallback per
		// second attached, which sets the duty to Budget/Fallback, less
		// the share of the budget that attaching and detaching take once
		// measured (a few ms each time: a tenth of the budget at most,
		// unless the period would pass MaxPeriod).
		ctl := dutycycle.New(dutycycle.Config{Budget: 25 * time.Millisecond, Period: 100 * time.Millisecond,
			Fallback: 100 * time.Millisecond}, unmeasured{p})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { ctl.Run(ctx); close(done) }()
		// Eight seconds: the periods stretch to about a second (windows of
		// at least 250 ms, toggling a tenth of the budget at most), and
		// the estimate of a host loaded by other tests needs the windows.
		counted, waits, u := sampledWaits(t, c, "sleepers", "4", "8s")
		cancel()
		<-done
		st := ctl.Stats()
		t.Logf("duty %.3f, period %v, toggle %v", st.Duty, st.Period, st.Toggle)
		if st.Duty > 0.25 || st.Duty < 0.2 {
			t.Fatalf("the controller ran at duty %v, want 0.25 less what toggling takes, at most a tenth", st.Duty)
		}
		if !within(counted, waits, 0.10) {
			t.Errorf("histogram estimated %.0f waits, the threads had %.0f: want within 10%%", counted, waits)
		}
		if !within(u.RunqHistogramSumSeconds, u.RunqWaitSeconds, 0.3) {
			t.Errorf("histogram sum estimated %.4f s, the threads waited %.4f s: want within 30%%", u.RunqHistogramSumSeconds, u.RunqWaitSeconds)
		}
	})
}

// unmeasured hides a program's BPF time from the duty-cycle controller.
type unmeasured struct{ dutycycle.Program }

func (unmeasured) Runtime() time.Duration { return 0 }

// sampledWaits runs a workload in a new cgroup, and returns the waits the
// histogram counted for it and how often its threads were switched in
// (every time, they had waited in a run queue).
func sampledWaits(t *testing.T, c *Counters, workload ...string) (counted, waits float64, u *Usage) {
	t.Helper()
	cg := kerneltest.NewCgroup(t, "runqhist")
	w := startHeld(t, cg, workload...)
	w.WaitFor(t, "ready")
	pcount := threadFigures(t, w.Pid()).switchIns
	u = usageOf(t, c, cg)
	w.Finish(t)
	var n uint64
	for _, b := range u.RunqHistogram {
		n += b
	}
	t.Logf("histogram %v; %d counted, %d switch-ins; sum %.4f s, waited %.4f s", u.RunqHistogram, n, pcount, u.RunqHistogramSumSeconds, u.RunqWaitSeconds)
	if pcount < 10000 {
		t.Fatalf("only %d switch-ins in %v", pcount, workload)
	}
	return float64(n), float64(pcount), u
}

// Counters never go back, and each part of a thread's figures is charged
// once: when a thread ends (charged as it exits and when it is freed), and
// when its process moves to another cgroup (what it did before stays with
// the old cgroup, what it does after goes to the new one).
func TestCountersMonotonicAcrossExitAndMove(t *testing.T) {
	c := sharedCounters(t)
	a, b := kerneltest.NewCgroup(t, "move-a"), kerneltest.NewCgroup(t, "move-b")
	w := startHeld(t, a, "steps")
	w.WaitFor(t, "ready")
	w.Step(t, "spin 200ms")
	a1 := usageOf(t, c, a)
	w.Step(t, "thread 300ms") // a thread no collection saw spins, then ends
	a2 := usageOf(t, c, a)
	a3 := settledUsageOf(t, c, a) // charged when the kernel freed it
	requireGrowing(t, "a, a thread ended", a1, a2, a3)
	if !within(a3.CPUSeconds, a.CPUStatUsage(t), 0.02) {
		t.Errorf("a: %.3f s counted, cpu.stat %.3f s, a thread having ended", a3.CPUSeconds, a.CPUStatUsage(t))
	}
	if a3.CPUSeconds-a1.CPUSeconds < 0.29 {
		t.Errorf("the ended thread's 300 ms were not counted: %.3f s before, %.3f s after", a1.CPUSeconds, a3.CPUSeconds)
	}

	if err := os.WriteFile(filepath.Join(b.Abs, "cgroup.procs"), []byte(strconv.Itoa(w.Pid())), 0); err != nil {
		t.Fatal(err)
	}
	w.Step(t, "spin 300ms")
	w.Step(t, "thread 200ms")
	a4, b4 := usageOf(t, c, a), usageOf(t, c, b)
	requireGrowing(t, "a, its process moved to b", a3, a4)
	if d := a4.CPUSeconds - a3.CPUSeconds; d > 0.02 {
		t.Errorf("a was charged %.3f s of what its process did in b", d)
	}
	if !within(b4.CPUSeconds, b.CPUStatUsage(t), 0.05) {
		t.Errorf("b: %.3f s counted, cpu.stat %.3f s", b4.CPUSeconds, b.CPUStatUsage(t))
	}

	w.Finish(t)
	b5 := settledUsageOf(t, c, b)
	a5 := usageOf(t, c, a)
	requireGrowing(t, "a, its process ended in b", a4, a5)
	requireGrowing(t, "b, its process ended", b4, b5)
	if !within(b5.CPUSeconds, b.CPUStatUsage(t), 0.02) {
		t.Errorf("b: %.3f s counted after the process ended, cpu.stat %.3f s", b5.CPUSeconds, b.CPUStatUsage(t))
	}
	t.Logf("cpu: a %.3f → %.3f → %.3f → %.3f → %.3f s, b %.3f → %.3f s; switches a %d, b %d",
		a1.CPUSeconds, a2.CPUSeconds, a3.CPUSeconds, a4.CPUSeconds, a5.CPUSeconds, b4.CPUSeconds, b5.CPUSeconds,
		a5.SwitchesVoluntary+a5.SwitchesInvoluntary, b5.SwitchesVoluntary+b5.SwitchesInvoluntary)
}

// requireGrowing fails unless no counter of Usage shrinks from one reading
// to the next.
func requireGrowing(t *testing.T, what string, readings ...*Usage) {
	t.Helper()
	for i := 1; i < len(readings); i++ {
		prev, cur := reflect.ValueOf(*readings[i-1]), reflect.ValueOf(*readings[i])
		for f := 0; f < prev.NumField(); f++ {
			name := prev.Type().Field(f).Name
			if name == "TCPActive" || name == "RunqSampled" {
				continue // a gauge, a flag
			}
			if shrank(prev.Field(f), cur.Field(f)) {
				t.Errorf("%s: %s went from %v to %v", what, name, prev.Field(f), cur.Field(f))
			}
		}
	}
}

func shrank(prev, cur reflect.Value) bool {
	switch prev.Kind() {
	case reflect.Float64:
		return cur.Float() < prev.Float()-1e-9
	case reflect.Uint64:
		return cur.Uint() < prev.Uint()
	case reflect.Array:
		for i := 0; i < prev.Len(); i++ {
			if shrank(prev.Index(i), cur.Index(i)) {
				return true
			}
		}
	}
	return false
}

// Without bpf_stats (no CAP_SYS_ADMIN) the run-queue latency program's
// cost is its runs, which it counts, times what a run was measured to
// cost: every switch-in of a workload's threads is a run, the estimate
// stays within a factor of the cost bpf_stats measure, and a duty-cycle
// controller given only the estimate holds the program to its budget.
func TestRunqCostWithoutBPFStats(t *testing.T) {
	c := sharedCounters(t)
	s := c.runq
	if s == nil {
		t.Fatal("no run-queue latency program")
	}
	stats, err := bpfstats.Enable()
	if err != nil && !bpfstats.Enabled() {
		t.Fatal(err)
	}
	if stats != nil {
		defer stats.Close()
	}
	if err := s.Start(time.Hour, 1); err != nil {
		t.Fatal(err)
	}
	runs0, st0 := s.runs(), programStats(t, s)
	cg := kerneltest.NewCgroup(t, "runqcost")
	w := startHeld(t, cg, "pingpong", "1s")
	w.WaitFor(t, "ready")
	switchIns := threadFigures(t, w.Pid()).switchIns
	runs1, st1 := s.runs(), programStats(t, s)
	w.Finish(t)
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	runs := runs1 - runs0
	estimated := time.Duration(runs) * estimatedRunqCost
	measured := st1.Runtime - st0.Runtime
	t.Logf("%d runs (%d switch-ins of the workload); estimated %v, bpf_stats %v for %d runs (%.0f ns a run)",
		runs, switchIns, estimated, measured, st1.RunCount-st0.RunCount, float64(measured)/float64(st1.RunCount-st0.RunCount))
	if runs < switchIns {
		t.Errorf("%d runs counted, fewer than the workload's %d switch-ins", runs, switchIns)
	}
	if kernelRuns := st1.RunCount - st0.RunCount; runs < kernelRuns*9/10 || runs > kernelRuns*11/10 {
		t.Errorf("%d runs counted, bpf_stats say %d", runs, kernelRuns)
	}
	if estimated < measured/3 || estimated > measured*3 {
		t.Errorf("estimated cost %v, bpf_stats measured %v: want within a factor of 3", estimated, measured)
	}

	// The controller sees only the estimate, as without bpf_stats.
	ctl := dutycycle.New(dutycycle.Config{Budget: 200 * time.Microsecond, Period: 100 * time.Millisecond,
		MinWindow: 20 * time.Millisecond, Fallback: time.Microsecond}, estimateOnly{s})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { ctl.Run(ctx); close(done) }()
	busy := kerneltest.NewCgroup(t, "runqcost-busy")
	w = startHeld(t, busy, "pingpong", "2s")
	w.WaitFor(t, "ready")
	cancel()
	<-done
	w.Finish(t)
	cst := ctl.Stats()
	t.Logf("controller: cost %v a second attached, duty %.3f", cst.Cost, cst.Duty)
	// The ping-pong alone switches tens of thousands of times a second:
	// several ms a second attached, far above the 0.2 ms budget.
	if cst.Cost < time.Millisecond || cst.Duty > 0.5 {
		t.Errorf("from the estimate the controller saw %v a second attached and ran at duty %.3f: want the budget to bind", cst.Cost, cst.Duty)
	}
}

// estimateOnly gives the duty-cycle controller the run-queue program's
// estimated cost, as Runtime does when bpf_stats are off.
type estimateOnly struct{ *runqSampler }

func (e estimateOnly) Runtime() time.Duration { return e.estimatedRuntime() }

func programStats(t *testing.T, s *runqSampler) *ebpf.ProgramStats {
	t.Helper()
	st, err := s.prog.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return st
}
