package profiler

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cgscope/cgscope/internal/kerneltest"
)

// offcpuWorkload runs argv[2] threads that sleep argv[3] µs at a time in
// fid_sleep, and burns CPU in fid_burn on the main thread when argv[4] is
// 1, for argv[1] seconds; then it prints how many sleeps the threads made
// and the nanoseconds they spent in them.
const offcpuWorkload = `
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static double until;
static long sleep_us;
static unsigned long sleeps, slept_ns;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
volatile unsigned long sink;
__attribute__((noinline)) void fid_sleep(void) { struct timespec d = {sleep_us / 1000000, sleep_us % 1000000 * 1000}; nanosleep(&d, NULL); }
__attribute__((noinline)) void fid_burn(void) { for (unsigned long i = 0; i < 1000000; i++) sink += i; }
static void *sleeper(void *a) {
	unsigned long n = 0; double in = 0;
	while (now() < until) { double t0 = now(); fid_sleep(); in += now() - t0; n++; }
	pthread_mutex_lock(&mu); sleeps += n; slept_ns += in * 1e9; pthread_mutex_unlock(&mu);
	return a;
}
int main(int argc, char **argv) {
	until = now() + atof(argv[1]);
	int threads = atoi(argv[2]);
	sleep_us = atol(argv[3]);
	pthread_t t[256];
	for (int i = 0; i < threads && i < 256; i++) pthread_create(&t[i], NULL, sleeper, NULL);
	while (atoi(argv[4]) && now() < until) fid_burn();
	for (int i = 0; i < threads && i < 256; i++) pthread_join(t[i], NULL);
	printf("%lu %lu\n", sleeps, slept_ns);
	return 0;
}
`

func buildOffCPUWorkload(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "offcpu.c")
	if err := os.WriteFile(src, []byte(offcpuWorkload), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "offcpu")
	if out, err := exec.Command("gcc", "-O2", "-pthread", "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	return bin
}

// A thread sleeping 50 ms at a time is away from the CPU nearly all the
// time: its off-CPU samples, weighted, add up to the wall time, with the
// reason "sleeping" and nanosleep's kernel stack.
func TestOffCPUSleepingThread(t *testing.T) {
	s, o := loadOffCPU(t, DefaultOffCPUConfig())
	if err := o.Start(time.Hour, 1); err != nil {
		t.Fatal(err)
	}
	cmd, out := startOffCPUWorkload(t, "3", "1", "50000", "1")
	pid := uint32(cmd.Process.Pid)
	time.Sleep(500 * time.Millisecond)
	if _, err := s.Drain(); err != nil { // what came before is not measured
		t.Fatal(err)
	}
	start := time.Now()
	time.Sleep(2 * time.Second)
	b, err := s.Drain()
	if err != nil {
		t.Fatal(err)
	}
	wall := time.Since(start)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("workload: %v\n%s", err, out)
	}

	var sleepNs, sleeps uint64
	var reasons = map[string]uint64{}
	for _, rs := range b.OffCPU {
		if rs.PID != pid || rs.TID == pid { // the sleeper, not the burning main thread
			continue
		}
		reasons[rs.Reason.String()] += rs.OffCPUNanos
		if rs.Reason.String() == "sleeping" && len(rs.Kernel) > 0 {
			sleepNs += rs.OffCPUNanos
			sleeps += rs.Count
		}
	}
	t.Logf("sleeper: %v away over %v of wall time, %d switch-outs, by reason %v; stats %+v",
		time.Duration(sleepNs), wall, sleeps, reasons, o.Stats())
	if ratio := float64(sleepNs) / float64(wall); ratio < 0.9 || ratio > 1.1 {
		t.Errorf("the sleeping thread was away %.0f%% of the wall time, want 100%% ± 10", ratio*100)
	}
	if sleeps < 30 || sleeps > 50 {
		t.Errorf("%d sleeps of 50 ms counted in 2 s, want about 40", sleeps)
	}
}

// Threads that switch far more often than the per-thread rate are sampled,
// and the weights make up for it: at the default sampling, the estimated
// switch-outs and time away of 16 threads sleeping 200 µs at a time are
// within 10% of the kernel's own figures (the threads' context switches,
// and their wall time less the CPU time in /proc/PID/task/TID/schedstat).
func TestOffCPUSampledWeights(t *testing.T) {
	s, o := loadOffCPU(t, DefaultOffCPUConfig())
	if err := o.Start(time.Hour, 1); err != nil {
		t.Fatal(err)
	}
	cmd, _ := startOffCPUWorkload(t, "60", "16", "200", "0")
	pid := uint32(cmd.Process.Pid)
	time.Sleep(500 * time.Millisecond)
	before := sleeperTimes(t, pid)
	if _, err := s.Drain(); err != nil { // what came before is not measured
		t.Fatal(err)
	}
	sampledBefore := o.Stats().Sampled
	time.Sleep(8 * time.Second)
	b, err := s.Drain()
	if err != nil {
		t.Fatal(err)
	}
	truth := sleeperTimes(t, pid).since(before)
	est := sumOffCPU(b, pid, "")
	sampled := o.Stats().Sampled - sampledBefore
	t.Logf("kernel: %d switch-outs, %v away; estimated %d, %v (%d samples host-wide)",
		truth.switches, truth.away, est.count, time.Duration(est.ns), sampled)
	// Other processes' samples count too: both bounds hold all the more.
	if sampled < 500 {
		t.Fatalf("only %d samples: too few to judge the weights", sampled)
	}
	if float64(sampled) > 0.2*float64(truth.switches) {
		t.Errorf("%d samples for %d switch-outs: the per-thread rate (%d/s) did not apply", sampled, truth.switches, DefaultOffCPUConfig().PerThread)
	}
	checkWithin(t, "switch-outs", float64(est.count), float64(truth.switches), 0.10)
	checkWithin(t, "time away", float64(est.ns), float64(truth.away), 0.10)
}

// Attached a quarter of the time, in windows of 200 ms, the sampler still
// estimates the time away of 16 threads asleep 50 ms at a time (a quarter
// of a window: their weights also make up for blocks that outlast a window)
// within 15% of the kernel's figures, and counts the blocks it could not
// see end.
func TestOffCPUDutyCycledWeights(t *testing.T) {
	s, o := loadOffCPU(t, DefaultOffCPUConfig())
	cmd, _ := startOffCPUWorkload(t, "60", "16", "50000", "0")
	pid := uint32(cmd.Process.Pid)
	time.Sleep(200 * time.Millisecond)
	before := sleeperTimes(t, pid)
	if _, err := s.Drain(); err != nil {
		t.Fatal(err)
	}
	const window, period = 200 * time.Millisecond, 800 * time.Millisecond
	for range 10 {
		if err := o.Start(window, float64(window)/float64(period)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(window)
		if err := o.Stop(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(period - window)
	}
	b, err := s.Drain()
	if err != nil {
		t.Fatal(err)
	}
	truth := sleeperTimes(t, pid).since(before)
	est := sumOffCPU(b, pid, "")
	st := o.Stats()
	t.Logf("kernel: %d switch-outs, %v away; estimated %d, %v; %d samples, %d unseen ends host-wide",
		truth.switches, truth.away, est.count, time.Duration(est.ns), st.Sampled, st.Censored)
	checkWithin(t, "time away", float64(est.ns), float64(truth.away), 0.15)
	checkWithin(t, "switch-outs", float64(est.count), float64(truth.switches), 0.15)
	if st.Censored == 0 {
		t.Errorf("no sample counted as unseen: blocks that outlast a window must be")
	}
}

// threadTimes are the kernel's figures for a process's threads but the
// main one, summed.
type threadTimes struct {
	at       time.Time
	cpu      time.Duration // on the CPU (schedstat's first field)
	switches uint64        // voluntary and involuntary context switches
	threads  int
}

type threadDelta struct {
	away     time.Duration // wall time less CPU time, over every thread
	switches uint64
}

func sleeperTimes(t *testing.T, pid uint32) threadTimes {
	t.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
	if err != nil {
		t.Fatal(err)
	}
	tt := threadTimes{at: time.Now()}
	for _, dir := range tasks {
		if filepath.Base(dir) == fmt.Sprint(pid) {
			continue
		}
		stat, err := os.ReadFile(dir + "/schedstat")
		if err != nil {
			t.Fatal(err)
		}
		var cpu, wait, slices uint64
		if _, err := fmt.Sscan(string(stat), &cpu, &wait, &slices); err != nil {
			t.Fatalf("%s/schedstat: %v", dir, err)
		}
		status, err := os.ReadFile(dir + "/status")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(status), "\n") {
			var n uint64
			if _, err := fmt.Sscanf(line, "voluntary_ctxt_switches: %d", &n); err == nil {
				tt.switches += n
			} else if _, err := fmt.Sscanf(line, "nonvoluntary_ctxt_switches: %d", &n); err == nil {
				tt.switches += n
			}
		}
		tt.cpu += time.Duration(cpu)
		tt.threads++
	}
	return tt
}

func (tt threadTimes) since(before threadTimes) threadDelta {
	wall := tt.at.Sub(before.at) * time.Duration(tt.threads)
	return threadDelta{away: wall - (tt.cpu - before.cpu), switches: tt.switches - before.switches}
}

func loadOffCPU(t *testing.T, cfg OffCPUConfig) (*Sampler, *OffCPU) {
	t.Helper()
	kerneltest.RequireRoot(t)
	s, err := NewSampler(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	o, err := s.LoadOffCPU(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s, o
}

// startOffCPUWorkload starts the workload with its arguments; out has what
// it printed once it is waited for.
func startOffCPUWorkload(t *testing.T, args ...string) (*exec.Cmd, *strings.Builder) {
	t.Helper()
	cmd := exec.Command(buildOffCPUWorkload(t), args...)
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, out
}

type offCPUSum struct{ count, ns uint64 }

// sumOffCPU adds up the off-CPU samples of pid's threads other than the
// main one that left the CPU for reason (any, when "").
func sumOffCPU(b *RawBatch, pid uint32, reason string) offCPUSum {
	var sum offCPUSum
	for _, rs := range b.OffCPU {
		if rs.PID == pid && rs.TID != pid && (reason == "" || rs.Reason.String() == reason) {
			sum.count += rs.Count
			sum.ns += rs.OffCPUNanos
		}
	}
	return sum
}

func checkWithin(t *testing.T, what string, got, want, tolerance float64) {
	t.Helper()
	if ratio := got / want; ratio < 1-tolerance || ratio > 1+tolerance {
		t.Errorf("%s: estimated %.4g, actual %.4g (%.0f%%), want within %.0f%%", what, got, want, ratio*100, tolerance*100)
	}
}
