package collector

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/cgscope/cgscope/bpf"
	"github.com/cgscope/cgscope/cgroup"
	"github.com/cgscope/cgscope/internal/bpfstats"
	"github.com/cgscope/cgscope/internal/kerneltest"
)

// BenchmarkCounterProgramCost runs a context-switch-heavy load (two threads
// ping-ponging over a pipe) and a loopback TCP stream with every collector
// attached, the run-queue latency program throughout, and reports each
// program's cost per run in ns, from the kernel's bpf_stats. Targets:
// runq_latency < 300 ns, cgroup_skb < 150 ns.
func BenchmarkCounterProgramCost(b *testing.B) {
	kerneltest.WithBPFStats(b)
	root, err := cgroup.V2Mount()
	if err != nil {
		b.Fatal(err)
	}
	all := map[string]bool{}
	for _, c := range bpfCollectors() {
		all[c] = true
	}
	c, err := NewCounters(CountersConfig{MaxCgroups: 4096, MaxTasks: 65536, MaxSockets: 65536, Collectors: all, CgroupRoot: root})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if err := c.SwitchPrograms().Start(time.Hour, 1); err != nil {
		b.Fatal(err)
	}

	before, err := c.ProgramStats()
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); pingPong(20000) }()
		go func() { defer wg.Done(); stream(b, 64<<20) }()
		wg.Wait()
	}
	b.StopTimer()
	after, err := c.ProgramStats()
	if err != nil {
		b.Fatal(err)
	}
	reportPerRun(b, before, after)
}

// reportPerRun reports the BPF time per run of each program that ran
// between two readings of their statistics (of the named ones, if any).
func reportPerRun(b *testing.B, before, after []bpfstats.Program, only ...string) {
	for i, a := range after {
		runs := a.RunCount - before[i].RunCount
		if runs == 0 || (len(only) > 0 && !slices.Contains(only, a.Name)) {
			continue
		}
		b.ReportMetric(float64(a.Runtime-before[i].Runtime)/float64(runs), "ns/"+a.Name)
	}
}

// threadFigureCounters loads the sched and faults collectors alone.
func threadFigureCounters(b *testing.B) *Counters {
	kerneltest.WithBPFStats(b)
	c, err := NewCounters(CountersConfig{MaxCgroups: 4096, MaxTasks: 65536, MaxSockets: 64,
		Collectors: map[string]bool{Sched: true, Faults: true}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// BenchmarkCollect measures a collection: the task iterator charging every
// thread of the host to its cgroup, and the read of the counters, with the
// BPF time per thread.
func BenchmarkCollect(b *testing.B) {
	c := threadFigureCounters(b)
	iter := func() *ebpf.Program {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.programs[bpf.CgroupStatsProgCountTasks]
	}()
	before, err := iter.Stats()
	if err != nil {
		b.Fatal(err)
	}
	threads, _ := filepath.Glob("/proc/[0-9]*/task/[0-9]*")
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Read(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	after, err := iter.Stats()
	if err != nil {
		b.Fatal(err)
	}
	runs := after.RunCount - before.RunCount
	b.ReportMetric(float64(len(threads)), "threads")
	if runs > 0 {
		b.ReportMetric(float64(after.Runtime-before.Runtime)/float64(runs), "bpf-ns/thread")
	}
}

// BenchmarkThreadChurn starts and ends threads with the sched and faults
// collectors running, and reports what the exit and free hooks cost per
// thread (bpf_stats).
func BenchmarkThreadChurn(b *testing.B) {
	c := threadFigureCounters(b)
	before, err := c.ProgramStats()
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		done := make(chan struct{})
		go func() {
			runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
			close(done)
		}()
		<-done
	}
	time.Sleep(50 * time.Millisecond) // the last threads' free
	after, err := c.ProgramStats()
	if err != nil {
		b.Fatal(err)
	}
	reportPerRun(b, before, after, bpf.CgroupStatsProgTaskExit, bpf.CgroupStatsProgTaskFree)
}

// pingPong makes two OS threads wake each other n times through pipes:
// every round trip is two voluntary context switches and two wakeups.
func pingPong(n int) {
	r1, w1, _ := os.Pipe()
	r2, w2, _ := os.Pipe()
	defer func() { r1.Close(); w1.Close(); r2.Close(); w2.Close() }()
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		buf := make([]byte, 1)
		for i := 0; i < n; i++ {
			r1.Read(buf)
			w2.Write(buf)
		}
		close(done)
	}()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	buf := []byte{1}
	for i := 0; i < n; i++ {
		w1.Write(buf)
		r2.Read(buf)
	}
	<-done
}

// stream sends size bytes over loopback TCP.
func stream(b *testing.B, size int) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go func() {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		io.Copy(io.Discard, conn)
		conn.Close()
	}()
	conn, err := net.DialTimeout("tcp", l.Addr().String(), 5*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 64<<10)
	for sent := 0; sent < size; sent += len(buf) {
		if _, err := conn.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
}
