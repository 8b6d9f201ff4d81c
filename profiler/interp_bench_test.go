package profiler

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cgscope/cgscope/bpf"
	"github.com/cgscope/cgscope/internal/kerneltest"
	"github.com/cgscope/cgscope/interp"
	"github.com/cgscope/cgscope/interp/python"
	"github.com/cgscope/cgscope/symbolizer"
)

// pyDepth is how deep the benchmark's Python stack is: as deep as a web
// framework's handler typically runs.
const pyDepth = 40

// BenchmarkInterpreterSampleCost samples, at 999 Hz, Debian's python3.11
// burning CPU pyDepth Python frames deep, with its interpreter loaded for
// the walker and without it, alternating each second, and reports from
// bpf_stats the sampling program's cost per run in both, and the walker's
// own per walk (walk-ns/walk, timed in BPF: the BPF cost of an interpreter
// stack per sample of the process).
func BenchmarkInterpreterSampleCost(b *testing.B) {
	const python = "/usr/bin/python3.11"
	if _, err := os.Stat(python); err != nil {
		b.Fatalf("%s missing (scripts/install-deps.sh installs it): %v", python, err)
	}
	kerneltest.WithBPFStats(b)
	cfg := DefaultConfig()
	cfg.Frequency = 999
	s, err := NewSampler(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()

	script := filepath.Join(b.TempDir(), "deep.py")
	src := fmt.Sprintf("def fid_deep(n):\n    if n:\n        return fid_deep(n - 1)\n    x = 0\n    while True:\n        x = (x * 31 + 7) %% 1000003\n\nfid_deep(%d)\n", pyDepth-2)
	if err := os.WriteFile(script, []byte(src), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(python, script)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pid := uint32(cmd.Process.Pid)

	// Its image's cookie, once sampled; then its interpreter, as the
	// registry would find it.
	var image uint64
	for deadline := time.Now().Add(5 * time.Second); image == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("the python process was never sampled")
		}
		s.objs.KnownProcs.Lookup(pid, &image)
	}
	st := attachPython(b, pid)
	measureWalkerCost(b, s, pid, image, st, "cpython")
}

// phaseCost sums the sampling program's runs and run time over phases.
type phaseCost struct{ runs, ns uint64 }

func (c *phaseCost) measure(b *testing.B, s *Sampler) {
	before := sampleProgram(b, s)
	time.Sleep(time.Second)
	after := sampleProgram(b, s)
	c.runs += after.RunCount - before.RunCount
	c.ns += uint64(after.Runtime - before.Runtime)
}

func sampleProgram(b *testing.B, s *Sampler) (p struct {
	RunCount uint64
	Runtime  time.Duration
}) {
	progs, err := s.ProgramStats()
	if err != nil {
		b.Fatal(err)
	}
	for _, pr := range progs {
		if pr.Name == bpf.ProfileProgSampleCpu {
			p.RunCount, p.Runtime = pr.RunCount, pr.Runtime
		}
	}
	return p
}

// attachPython finds the interpreter of pid as the registry does, reading
// its files through /proc/PID/root.
func attachPython(b *testing.B, pid uint32) *interp.State {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	maps, err := symbolizer.ParseMaps(f)
	if err != nil {
		b.Fatal(err)
	}
	var exec []interp.Mapping
	for _, m := range maps {
		if m.Exec && strings.HasPrefix(m.Path, "/") {
			exec = append(exec, interp.Mapping{Start: m.Start, Limit: m.Limit, Offset: m.Offset, Path: m.Path, Object: m.Path})
		}
	}
	rt := python.New()
	cache := interp.NewCache(1 << 20)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var last error
		for _, m := range exec {
			if !rt.Candidate(m.Path) {
				continue
			}
			path := fmt.Sprintf("/proc/%d/root%s", pid, m.Path)
			p, err := rt.Attach(&interp.Target{PID: pid, Mem: interp.NewMemory(pid), Mappings: exec, Candidate: m, Cache: cache, Owner: 1,
				Read: func(read func(io.ReaderAt) error) error {
					f, err := os.Open(path)
					if err != nil {
						return err
					}
					defer f.Close()
					return read(f)
				}})
			if err == nil {
				return p.State()
			}
			last = err
		}
		if time.Now().After(deadline) {
			b.Fatalf("no interpreter in pid %d: %v", pid, last)
		}
	}
}

// measureWalkerCost alternates one-second phases with pid's interpreter
// given to the walker and not, and reports the sampling program's cost per
// run in both, the walks' own time (timed in BPF) and frames per walk.
func measureWalkerCost(b *testing.B, s *Sampler, pid uint32, image uint64, st *interp.State, runtime string) {
	ip := s.Interpreters()

	var on, off phaseCost
	var walks, frames uint64
	var walkTime time.Duration
	for b.Loop() {
		if err := ip.LoadProcess(pid, image, st); err != nil {
			b.Fatal(err)
		}
		w0, t0 := runtimeWalks(b, s, runtime)
		on.measure(b, s)
		w1, t1 := runtimeWalks(b, s, runtime)
		walks, walkTime = walks+w1-w0, walkTime+t1-t0
		batch, err := s.Drain()
		if err != nil {
			b.Fatal(err)
		}
		for _, rs := range batch.Samples {
			if rs.PID == pid && len(rs.Interp) > 0 {
				frames += uint64(len(rs.Interp)) * rs.Count
			}
		}
		if err := ip.UnloadProcess(pid); err != nil {
			b.Fatal(err)
		}
		off.measure(b, s)
		if _, err := s.Drain(); err != nil {
			b.Fatal(err)
		}
	}
	if walks == 0 || on.runs == 0 || off.runs == 0 {
		b.Fatalf("%d walks, %d and %d runs", walks, on.runs, off.runs)
	}
	onNs, offNs := float64(on.ns)/float64(on.runs), float64(off.ns)/float64(off.runs)
	b.ReportMetric(onNs, "ns/sample-walker")
	b.ReportMetric(offNs, "ns/sample-native")
	// The walks' own time (timed in BPF), and the program's extra time
	// with the walker, over the walks (noisy: other processes' samples
	// vary from phase to phase).
	b.ReportMetric(float64(walkTime)/float64(walks), "walk-ns/walk")
	b.ReportMetric((float64(on.ns)-offNs*float64(on.runs))/float64(walks), "extra-ns/walk")
	b.ReportMetric(float64(frames)/float64(walks), "frames/walk")
}

// runtimeWalks returns the walks of a runtime that recorded frames so far
// and the time all its walks took.
func runtimeWalks(b *testing.B, s *Sampler, name string) (uint64, time.Duration) {
	st, err := s.Stats()
	if err != nil {
		b.Fatal(err)
	}
	e := st.InterpStacks[name]
	return e["complete"] + e["depth_limit"] + e["read_failed"], st.InterpWalkTime[name]
}
