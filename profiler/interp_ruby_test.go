package profiler

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/cgscope/cgscope/bpf"
	"github.com/cgscope/cgscope/internal/kerneltest"
	"github.com/cgscope/cgscope/interp"
	"github.com/cgscope/cgscope/interp/ruby"
	"github.com/cgscope/cgscope/symbolizer"
)

// The Ruby walker in the kernel, on Debian's ruby3.1 alone: the sampler's
// program is attached to the cpu-clock of the workload's threads only (so
// its run time is the workload's samples'), the process's interpreter is
// given to it as the agent would, and the words drained are named: the
// main thread's chain, the other Thread's singleton method. Its BPF cost
// per sample is measured with the walker on and off, alternately, on the
// same samples.

const rubyChainScript = `class Work
  def fid_leaf(n)
    x = 0
    i = 0
    while i < n
      x = (x * 31 + i) % 1_000_003
      i += 1
    end
    x
  end

  def fid_middle
    fid_leaf(200_000)
  end

  def fid_outer
    loop { fid_middle }
  end
end

module Background
  def self.spin_other
    loop { [1, 2, 3].each { |v| v * v } }
  end
end

def deep(n)
  n > 0 ? deep(n - 1) : loop { [1, 2, 3].each { |v| v * v } }
end

Thread.new { Background.spin_other }
Thread.new { deep(60) }
$stdout.puts Process.pid
$stdout.flush
Work.new.fid_outer
`

type imageLog struct {
	mu     sync.Mutex
	images map[uint32]uint64
}

func (l *imageLog) ProcessStarted(pid uint32, image uint64) {
	l.mu.Lock()
	l.images[pid] = image
	l.mu.Unlock()
}
func (l *imageLog) ProcessForked(pid uint32, image uint64, _ uint32) { l.ProcessStarted(pid, image) }
func (l *imageLog) ProcessGone(uint32, uint64)                       {}
func (l *imageLog) ProcessMappingsChanged(uint32, uint64)            {}
func (l *imageLog) ProcessVanished(uint32, uint64)                   {}

// attachThreads attaches the sampler's program to a cpu-clock event of each
// of pid's threads.
func attachThreads(t *testing.T, s *Sampler, pid, freq int) {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		attr := unix.PerfEventAttr{
			Type: unix.PERF_TYPE_SOFTWARE, Config: unix.PERF_COUNT_SW_CPU_CLOCK,
			Size: uint32(unsafe.Sizeof(unix.PerfEventAttr{})), Sample: uint64(freq), Bits: unix.PerfBitFreq,
		}
		fd, err := unix.PerfEventOpen(&attr, tid, -1, -1, unix.PERF_FLAG_FD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		l, err := link.AttachRawLink(link.RawLinkOptions{Target: fd, Program: s.objs.SampleCpu, Attach: ebpf.AttachPerfEvent})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
	}
}

// rubyTarget is the registry's view of pid's libruby.
func rubyTarget(t *testing.T, pid int) *interp.Target {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	maps, err := symbolizer.ParseMaps(f)
	if err != nil {
		t.Fatal(err)
	}
	rt := ruby.New()
	for _, m := range maps {
		if !m.Exec || !rt.Candidate(m.Path) || !strings.Contains(m.Path, "libruby") {
			continue
		}
		path := fmt.Sprintf("/proc/%d/root%s", pid, m.Path)
		return &interp.Target{PID: uint32(pid), Mem: interp.NewMemory(uint32(pid)), Cache: interp.NewCache(1 << 20), Owner: 1,
			Candidate: interp.Mapping{Start: m.Start, Limit: m.Limit, Offset: m.Offset, Path: m.Path, Object: m.Path},
			Read: func(read func(io.ReaderAt) error) error {
				f, err := os.Open(path)
				if err != nil {
					return err
				}
				defer f.Close()
				return read(f)
			}}
	}
	t.Fatal("no libruby mapped")
	return nil
}

func TestRubyWalkerInTheKernel(t *testing.T) {
	kerneltest.RequireRoot(t)
	const rubyBin = "/usr/bin/ruby3.1"
	if _, err := os.Stat(rubyBin); err != nil {
		t.Fatalf("%s is missing (scripts/install-deps.sh installs ruby3.1): %v", rubyBin, err)
	}
	script := filepath.Join(t.TempDir(), "chain.rb")
	if err := os.WriteFile(script, []byte(rubyChainScript), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(rubyBin, "--disable-gems", script)
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid

	kerneltest.WithBPFStats(t) // the cost below is read from bpf_stats
	cfg := DefaultConfig()
	cfg.Frequency = 499
	s, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	images := &imageLog{images: map[uint32]uint64{}}
	go s.RunProcessEvents(images)
	attachThreads(t, s, pid, cfg.Frequency)

	var image uint64
	for deadline := time.Now().Add(5 * time.Second); image == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		images.mu.Lock()
		image = images.images[uint32(pid)]
		images.mu.Unlock()
	}
	if image == 0 {
		t.Fatal("the workload was never announced")
	}
	proc, err := ruby.New().Attach(rubyTarget(t, pid))
	if err != nil {
		t.Fatal(err)
	}

	// The cost: sample_cpu's run time per run, walker on and off.
	runTime := func() (time.Duration, uint64) {
		progs, err := s.ProgramStats()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range progs {
			if p.Name == bpf.ProfileProgSampleCpu {
				return p.Runtime, p.RunCount
			}
		}
		t.Fatal("no sample_cpu statistics")
		return 0, 0
	}
	st0, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	var on, off [2]float64 // run time, runs
	for round := 0; round < 16; round++ {
		walk := round%2 == 0
		if walk {
			err = s.Interpreters().LoadProcess(uint32(pid), image, proc.State())
		} else {
			err = s.Interpreters().UnloadProcess(uint32(pid))
		}
		if err != nil {
			t.Fatal(err)
		}
		d0, n0 := runTime()
		time.Sleep(300 * time.Millisecond)
		d1, n1 := runTime()
		acc := &off
		if walk {
			acc = &on
		}
		acc[0] += float64(d1 - d0)
		acc[1] += float64(n1 - n0)
	}
	if on[1] == 0 || off[1] == 0 {
		t.Fatalf("no samples: %v runs with the walker, %v without (bpf_stats off?)", on[1], off[1])
	}
	st1, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	// The walk's own time, timed in BPF around it (the counter of
	// cgscope_interpreter_walk_seconds_total), over the walks.
	var walks uint64
	for end, n := range st1.InterpStacks["ruby"] {
		walks += n - st0.InterpStacks["ruby"][end]
	}
	walkTime := st1.InterpWalkTime["ruby"] - st0.InterpWalkTime["ruby"]
	if walks == 0 || st1.InterpStacks["ruby"]["complete"] == st0.InterpStacks["ruby"]["complete"] {
		t.Fatalf("no complete Ruby walks counted: %v", st1.InterpStacks["ruby"])
	}
	perWalk := float64(walkTime.Nanoseconds()) / float64(walks) / 1e3
	perOn, perOff := on[0]/on[1]/1e3, off[0]/off[1]/1e3
	t.Logf("sample_cpu on Ruby's threads: %.2f µs a sample with the Ruby walker (%.0f samples), %.2f µs without (%.0f), difference %.2f µs; the walk alone, timed in BPF: %.2f µs (%d walks: %v)",
		perOn, on[1], perOff, off[1], perOn-perOff, perWalk, walks, st1.InterpStacks["ruby"])
	if perWalk > 15 {
		t.Errorf("the Ruby walk costs %.2f µs a sample, target <= 15", perWalk)
	}

	// What the walker recorded, named.
	if err := s.Interpreters().LoadProcess(uint32(pid), image, proc.State()); err != nil {
		t.Fatal(err)
	}
	s.Drain()
	time.Sleep(2 * time.Second)
	batch, err := s.Drain()
	if err != nil {
		t.Fatal(err)
	}
	var mainN, mainChain, otherN, otherSpin, deepN, deepTruncated uint64
	for _, smp := range batch.Samples {
		if smp.PID != uint32(pid) {
			continue
		}
		var names []string
		if smp.InterpKind == uint8(interp.KindRuby) && smp.InterpEnd == InterpComplete {
			for _, f := range proc.Frames(smp.Interp) {
				names = append(names, f.Function)
			}
		}
		joined := strings.Join(names, " < ")
		if smp.InterpLost {
			t.Logf("%d samples whose Ruby words could not be stored (counted by the sampler)", smp.Count)
			continue
		}
		if smp.InterpKind == uint8(interp.KindRuby) && smp.InterpEnd == InterpDepth {
			// A stack deeper than the words hold: its innermost frames
			// (two words a frame of the recursion, whose method is the
			// previous frame's: about 60), and the walk's end says it was
			// cut.
			deepN += smp.Count
			frames := proc.Frames(smp.Interp)
			if len(frames) >= 55 && frames[len(frames)-1].Function == "Object#deep" {
				deepTruncated += smp.Count
			} else {
				t.Logf("deep stack, %d samples, %d frames: %v", smp.Count, len(frames), frames)
			}
			continue
		}
		if smp.TID == uint32(pid) {
			mainN += smp.Count
			if strings.HasPrefix(joined, "Work#fid_leaf < Work#fid_middle < block in Work#fid_outer < Kernel#loop < Work#fid_outer < <main>") {
				mainChain += smp.Count
			} else {
				t.Logf("main thread, %d samples, walk %v: %s", smp.Count, smp.InterpEnd, joined)
			}
		} else {
			otherN += smp.Count
			if strings.Contains(joined, "Background.spin_other") && !strings.Contains(joined, "Work#") || strings.Contains(joined, "Object#deep") {
				otherSpin += smp.Count
			} else {
				t.Logf("other Thread, %d samples, walk %v: %s", smp.Count, smp.InterpEnd, joined)
			}
		}
	}
	t.Logf("main thread: %d of %d samples walked to the chain; other Threads: %d of %d in Background.spin_other or deep; %d of %d cut at the words' limit", mainChain, mainN, otherSpin, otherN, deepTruncated, deepN)
	if deepN == 0 || deepTruncated != deepN {
		t.Errorf("the 60-deep recursion: %d of %d samples cut at the limit with their innermost frames", deepTruncated, deepN)
	}
	if mainN == 0 || otherN == 0 || float64(mainChain) < 0.95*float64(mainN) || float64(otherSpin) < 0.95*float64(otherN) {
		t.Errorf("walks: main %d/%d, other %d/%d; want >= 95%% each", mainChain, mainN, otherSpin, otherN)
	}
}
