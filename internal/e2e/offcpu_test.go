package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/pprof/profile"
)

// Off-CPU profiles from the daemon's defaults: where threads wait, for how
// long, and why, next to the CPU profile of the same window.

var (
	waitsOnce sync.Once
	waitsBin  string
	waitsErr  error
)

// waitsWorkload builds testdata/offcpu/waits.c once (no frame pointers:
// its stacks come from the unwind tables).
func waitsWorkload(t *testing.T) string {
	t.Helper()
	waitsOnce.Do(func() {
		dir, err := os.MkdirTemp("", "cgscope-offcpu-")
		if err != nil {
			waitsErr = err
			return
		}
		waitsBin = filepath.Join(dir, "waits")
		out, err := exec.Command("gcc", "-O2", "-fomit-frame-pointer", "-pthread", "-o", waitsBin,
			"testdata/offcpu/waits.c").CombinedOutput()
		if err != nil {
			waitsErr = fmt.Errorf("gcc waits.c: %v\n%s", err, out)
		}
	})
	if waitsErr != nil {
		t.Fatal(waitsErr)
	}
	return waitsBin
}

// offCPUWhere sums a profile's off-CPU time over the samples keep selects.
func offCPUWhere(p *profile.Profile, keep func(*profile.Sample) bool) time.Duration {
	var ns int64
	for _, s := range p.Sample {
		if keep(s) {
			ns += s.Value[1]
		}
	}
	return time.Duration(ns)
}

// inFunction selects pid's samples whose stack holds fn.
func inFunction(pid int, fn string) func(*profile.Sample) bool {
	return func(s *profile.Sample) bool {
		return pidIs(pid)(s) && slices.Contains(sampleFrames(s), fn)
	}
}

func reasonIs(reason string) func(*profile.Sample) bool {
	return func(s *profile.Sample) bool { return slices.Equal(s.Label["off_cpu_reason"], []string{reason}) }
}

func both(a, b func(*profile.Sample) bool) func(*profile.Sample) bool {
	return func(s *profile.Sample) bool { return a(s) && b(s) }
}

// offCPUDaemon starts a daemon for the off-CPU tests with a budget for
// the programs that run at every switch of 100 ms a second instead of 3.
// At the default rate (50 samples a second of a thread's time off the CPU)
// every block of this test's threads is sampled — they block for 20 and
// 50 ms — unless the budget makes the sampler sample less host-wide: with
// the default budget, a test host busy with other tests' processes gets a
// hundred samples a second host-wide, a handful of them this test's in a
// 5 s capture, and totals vary by ±20% from capture to capture as a
// sampling profiler's do. How well the sampled and duty-cycled estimates
// keep totals is tested against the kernel's own figures in profiler
// (TestOffCPUSampledWeights, TestOffCPUDutyCycledWeights).
func offCPUDaemon(t *testing.T) *daemon {
	return startCgscope(t, t.Cleanup, "--profiling.interval=2s", "--scheduler.bpf-budget=100ms")
}

// A thread that sleeps 50 ms at a time and one that waits on a pipe are
// named in the off-CPU profile with the time they spent blocked (all of
// the capture, within 10%), as sleeping; the thread that burns CPU is named
// in the CPU profile of the same window.
func TestOffCPUProfileNamesWaits(t *testing.T) {
	d := offCPUDaemon(t)
	w := workload(t, waitsWorkload(t))
	pid := w.Process.Pid
	time.Sleep(time.Second) // announced, mappings read, tables loaded

	var cpu *profile.Profile
	done := make(chan struct{})
	go func() { defer close(done); cpu = d.capture(t, fmt.Sprintf("seconds=5&pid=%d", pid)) }()
	off := d.capture(t, fmt.Sprintf("type=off_cpu&seconds=5&pid=%d", pid))
	<-done

	if got := off.SampleType[1]; got.Type != "off_cpu" || got.Unit != "nanoseconds" {
		t.Fatalf("off-CPU profile's second sample type is %s/%s, want off_cpu/nanoseconds", got.Type, got.Unit)
	}
	wall := time.Duration(off.DurationNanos)
	defer func() {
		if t.Failed() {
			metrics, _ := httpGet(t, d.url("/metrics"))
			t.Logf("off-CPU profile:\n%s\nself-metrics:\n%s", off,
				grepLines(string(metrics), "cgscope_offcpu_")+grepLines(string(metrics), "cgscope_scheduler_programs_"))
		}
	}()
	for _, fn := range []string{"fid_sleep_50ms", "fid_pipe_wait"} {
		blocked := offCPUWhere(off, inFunction(pid, fn))
		sleeping := offCPUWhere(off, both(inFunction(pid, fn), reasonIs("sleeping")))
		t.Logf("%s: %v off the CPU (%v sleeping) over %v", fn, blocked, sleeping, wall)
		if ratio := float64(blocked) / float64(wall); ratio < 0.9 || ratio > 1.1 {
			t.Errorf("%s: blocked %v over a %v capture (%.0f%%), want the whole capture ± 10%%", fn, blocked, wall, 100*ratio)
		}
		if sleeping < blocked*9/10 {
			t.Errorf("%s: %v of %v blocked as sleeping, want nearly all", fn, sleeping, blocked)
		}
	}
	// fid_burn never blocks: it is off the CPU only when preempted.
	if burnOff := offCPUWhere(off, both(inFunction(pid, "fid_burn"), func(s *profile.Sample) bool { return !reasonIs("runnable")(s) })); burnOff > 0 {
		t.Errorf("fid_burn, which never blocks, is off the CPU %v other than preempted", burnOff)
	}
	burn, all := samplesWhere(cpu, inFunction(pid, "fid_burn")), samplesWhere(cpu, pidIs(pid))
	t.Logf("CPU profile: %d of the workload's %d samples in fid_burn", burn, all)
	if all == 0 || float64(burn) < 0.9*float64(all) {
		t.Errorf("CPU profile: %d of %d samples in fid_burn, want nearly all", burn, all)
	}
	for _, fn := range []string{"fid_sleep_50ms", "fid_pipe_wait"} {
		if n := samplesWhere(cpu, inFunction(pid, fn)); n > all/10 {
			t.Errorf("CPU profile: %d samples in %s, which only waits", n, fn)
		}
	}
}

// A thread reading a block device with O_DIRECT waits for the disk: its
// off-CPU time is mostly io_wait, in fid_disk_read.
func TestOffCPUIOWaitReason(t *testing.T) {
	dev := loopDevice(t, 64<<20)
	d := offCPUDaemon(t)
	w := workload(t, waitsWorkload(t), "io", dev)
	pid := w.Process.Pid
	time.Sleep(time.Second)
	off := d.capture(t, fmt.Sprintf("type=off_cpu&seconds=4&pid=%d", pid))

	reading := inFunction(pid, "fid_disk_read")
	blocked := offCPUWhere(off, reading)
	ioWait := offCPUWhere(off, both(reading, reasonIs("io_wait")))
	reasons := map[string]time.Duration{}
	for _, s := range off.Sample {
		if reading(s) {
			reasons[strings.Join(s.Label["off_cpu_reason"], ",")] += time.Duration(s.Value[1])
		}
	}
	t.Logf("fid_disk_read: %v off the CPU, by reason %v", blocked, reasons)
	if blocked == 0 || ioWait < blocked/2 {
		t.Errorf("fid_disk_read: %v of %v off the CPU in io_wait, want most", ioWait, blocked)
	}
}

// loopDevice attaches a file of size bytes to a free loop device for the
// test's lifetime.
func loopDevice(t *testing.T, size int64) string {
	t.Helper()
	backing := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(backing)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := exec.Command("losetup", "--find", "--show", backing).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup (the io_wait test needs a loop device): %v\n%s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v\n%s", dev, err, out)
		}
	})
	return dev
}
