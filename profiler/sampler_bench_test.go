package profiler

import (
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf/btf"

	"github.com/cgscope/cgscope/internal/kerneltest"
)

// cpuTime is this process's user+sys time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkSamplerLoad reports the CPU time (user+sys, kernel work of map
// creation and verification included) of loading, attaching and closing the
// sampler, which every start of cgscope pays; the kernel BTF, which cgscope
// parses once for all its programs, is parsed in the first run only.
func BenchmarkSamplerLoad(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("SKIPPED: not root; the benchmark loads eBPF")
	}
	cfg := DefaultConfig()
	cfg.BTF = btf.NewCache() // parsed once, as cgscope shares it with the counters
	var cpu time.Duration
	for b.Loop() {
		c0 := cpuTime(b)
		s, err := NewSampler(cfg)
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		cpu += cpuTime(b) - c0
	}
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N), "cpu-ms/op")
}

// BenchmarkSamplerProgramCost samples this process at 999 Hz while goroutines
// burn CPU 20 calls deep and one makes system calls (kernel stacks), and
// reports the sampling program's cost per run from bpf_stats, and its drain.
func BenchmarkSamplerProgramCost(b *testing.B) {
	kerneltest.WithBPFStats(b)
	cfg := DefaultConfig()
	cfg.Frequency = 999
	s, err := NewSampler(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	stop := make(chan struct{})
	defer close(stop)
	for i := 0; i < runtime.NumCPU(); i++ {
		go burnAtDepth(20, stop)
	}
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
				syscall.Getppid()
			}
		}
	}()
	before, err := s.ProgramStats()
	if err != nil {
		b.Fatal(err)
	}
	var drain time.Duration
	for b.Loop() {
		time.Sleep(time.Second)
		t0 := time.Now()
		if _, err := s.Drain(); err != nil {
			b.Fatal(err)
		}
		drain += time.Since(t0)
	}
	after, err := s.ProgramStats()
	if err != nil {
		b.Fatal(err)
	}
	runs := after[0].RunCount - before[0].RunCount
	if runs == 0 {
		b.Fatal("no samples")
	}
	b.ReportMetric(float64(after[0].Runtime-before[0].Runtime)/float64(runs), "ns/sample")
	b.ReportMetric(float64(drain.Microseconds())/float64(b.N), "drain-µs/op")
}
