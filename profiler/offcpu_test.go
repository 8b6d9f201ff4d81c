package profiler

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/cgscope/cgscope/internal/kerneltest"
)

// offcpuWorkload sleeps 50 ms at a time in fid_sleep on one thread and
// burns CPU in fid_burn on another, for argv[1] seconds.
const offcpuWorkload = `
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static double until;
volatile unsigned long sink;
__attribute__((noinline)) void fid_sleep(void) { struct timespec d = {0, 50000000}; nanosleep(&d, NULL); }
__attribute__((noinline)) void fid_burn(void) { for (unsigned long i = 0; i < 1000000; i++) sink += i; }
static void *sleeper(void *a) { while (now() < until) fid_sleep(); return a; }
int main(int argc, char **argv) {
	until = now() + atof(argv[1]);
	pthread_t t; pthread_create(&t, NULL, sleeper, NULL);
	while (now() < until) fid_burn();
	pthread_join(t, NULL);
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
	kerneltest.RequireRoot(t)
	bin := buildOffCPUWorkload(t)
	s, err := NewSampler(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	o, err := s.LoadOffCPU(DefaultOffCPUConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if err := o.Start(time.Hour, 1); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "3")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
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
	cmd.Wait()

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
