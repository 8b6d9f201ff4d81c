package pprof

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/cgscope/cgscope/internal/pipeline"
	"github.com/cgscope/cgscope/symbolizer"
)

var testApp = &symbolizer.Mapping{Path: "/usr/bin/db", BuildID: "abcd"}

// stack is a leaf-first stack: a kernel leaf, then user frames of testApp.
func stack(kernelLeaf string, user ...string) []symbolizer.Frame {
	frames := []symbolizer.Frame{{Address: 0xffffffff81000000, ObjAddress: 0xffffffff81000000, Function: kernelLeaf, Kernel: true}}
	for i, fn := range user {
		a := uint64(0x401000 + 0x100*len(fn) + i)
		frames = append(frames, symbolizer.Frame{Address: a, ObjAddress: a, Function: fn, Mapping: testApp})
	}
	return frames
}

func offCPUSample(pid uint32, reason string, count uint64, away time.Duration, frames []symbolizer.Frame) pipeline.Sample {
	return pipeline.Sample{PID: pid, TID: pid + 1, Comm: fmt.Sprintf("comm%d", pid), Cgroup: "/svc", Frames: frames,
		Count: count, OffCPU: away, Reason: reason}
}

// offCPUWindows are two windows whose off-CPU samples repeat one (thread,
// stack, reason), so a profile must merge them, next to CPU samples that an
// off-CPU profile must leave out.
func offCPUWindows() []*pipeline.Window {
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	read := stack("io_schedule", "readBlock", "main")
	sleep := stack("schedule", "sleepLoop", "main")
	return []*pipeline.Window{{
		Start: start, End: start.Add(10 * time.Second), Period: 10 * time.Millisecond,
		Samples: []pipeline.Sample{{PID: 100, TID: 101, Comm: "comm100", Cgroup: "/svc", Frames: stack("do_syscall", "compute", "main"), Count: 7}},
		OffCPU: []pipeline.Sample{
			offCPUSample(100, "io_wait", 3, 1500*time.Millisecond, read),
			offCPUSample(100, "sleeping", 2, 250*time.Millisecond, read),
			offCPUSample(200, "runnable", 5, 40*time.Millisecond, sleep),
		},
	}, {
		Start: start.Add(10 * time.Second), End: start.Add(20 * time.Second), Period: 10 * time.Millisecond,
		OffCPU: []pipeline.Sample{offCPUSample(100, "io_wait", 1, 500*time.Millisecond, read)},
	}}
}

// roundTrip writes p as gzip pprof and parses it back, as a client would.
func roundTrip(t *testing.T, p *profile.Profile) *profile.Profile {
	t.Helper()
	var buf bytes.Buffer
	if err := p.Write(&buf); err != nil {
		t.Fatal(err)
	}
	got, err := profile.Parse(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if err := got.CheckValid(); err != nil {
		t.Fatal(err)
	}
	return got
}

// sampleLines renders each sample as "pid reason leaf-function count
// nanos", sorted.
func sampleLines(p *profile.Profile) []string {
	var lines []string
	for _, s := range p.Sample {
		lines = append(lines, fmt.Sprintf("%d %s %s %d %d", s.NumLabel["pid"][0], strings.Join(s.Label[ReasonLabel], ","),
			s.Location[1].Line[0].Function.Name, s.Value[0], s.Value[1]))
	}
	sort.Strings(lines)
	return lines
}

func TestBuildOffCPU(t *testing.T) {
	p := roundTrip(t, Build(offCPUWindows(), Selector{Kind: OffCPU}))
	vt := func(v *profile.ValueType) string { return v.Type + "/" + v.Unit }
	if got := strings.Join([]string{vt(p.SampleType[0]), vt(p.SampleType[1]), vt(p.PeriodType), p.DefaultSampleType}, " "); got != "samples/count off_cpu/nanoseconds off_cpu/nanoseconds off_cpu" {
		t.Errorf("types %s", got)
	}
	if p.Period != 0 {
		t.Errorf("period %d: off-CPU samples are weighted each on its own, there is no period", p.Period)
	}
	want := []string{
		"100 io_wait readBlock 4 2000000000", // two windows merged
		"100 sleeping readBlock 2 250000000", // same stack, another reason: its own sample
		"200 runnable sleepLoop 5 40000000",
	}
	if got := sampleLines(p); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("samples\n got %q\nwant %q", got, want)
	}
	for _, s := range p.Sample {
		if s.Label["comm"] == nil || s.Label["cgroup"][0] != "/svc" || s.NumLabel["tid"][0] != s.NumLabel["pid"][0]+1 {
			t.Errorf("labels %v %v", s.Label, s.NumLabel)
		}
	}
	if d := p.DurationNanos; d != int64(20*time.Second) {
		t.Errorf("duration %d, want the two windows' 20 s", d)
	}
}

// A CPU profile of the same windows has only the CPU samples, their time
// from the period, and no off_cpu_reason label.
func TestBuildCPULeavesOffCPUOut(t *testing.T) {
	p := roundTrip(t, Build(offCPUWindows(), Selector{}))
	if p.DefaultSampleType != "cpu" || p.SampleType[1].Type != "cpu" || p.Period != int64(10*time.Millisecond) {
		t.Errorf("default %q, types %v, period %d", p.DefaultSampleType, p.SampleType, p.Period)
	}
	if got, want := sampleLines(p), []string{"100  compute 7 70000000"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("samples %q, want %q", got, want)
	}
}

// The selector filters off-CPU samples as it filters CPU samples.
func TestBuildOffCPUSelected(t *testing.T) {
	p := Build(offCPUWindows(), Selector{Kind: OffCPU, PID: 200})
	if got, want := sampleLines(p), []string{"200 runnable sleepLoop 5 40000000"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("samples %q, want %q", got, want)
	}
	if p := Build(offCPUWindows(), Selector{Kind: OffCPU, Cgroup: "/other"}); len(p.Sample) != 0 {
		t.Errorf("cgroup /other selected %d samples", len(p.Sample))
	}
}

// go tool pprof, the real one, reads an off-CPU profile: its header names
// the type, times are off-CPU time, and off_cpu_reason is a tag it filters
// on.
func TestGoToolPprofReadsOffCPU(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go tool pprof is needed: %v", err)
	}
	file := filepath.Join(t.TempDir(), OffCPU.FileName())
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := Build(offCPUWindows(), Selector{Kind: OffCPU}).Write(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	pprofTop := func(args ...string) string {
		cmd := exec.Command(goTool, append([]string{"tool", "pprof", "-top", "-symbolize=none"}, append(args, file)...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
		}
		return string(out)
	}
	top := pprofTop()
	for _, want := range []string{`(?m)^Type: off_cpu$`, `of 2290ms total`,
		`(?m)^\s+2250ms\s+98\.25%.*io_schedule$`, `(?m)^\s+0\s+0%\s+\S+\s+2250ms\s+98\.25%\s+readBlock$`,
		`(?m)^\s+0\s+0%\s+\S+\s+40ms\s+1\.75%\s+sleepLoop$`} {
		if !regexp.MustCompile(want).MatchString(top) {
			t.Errorf("go tool pprof -top: no match for %s in\n%s", want, top)
		}
	}
	ioWait := pprofTop("-tagfocus", ReasonLabel+"=io_wait", "-sample_index=samples")
	if !regexp.MustCompile(`(?m)^\s+0\s+0%\s+\S+\s+4\s+36\.36%\s+readBlock$`).MatchString(ioWait) || strings.Contains(ioWait, "sleepLoop") {
		t.Errorf("-tagfocus off_cpu_reason=io_wait: want readBlock's 4 switches of 11, nothing else\n%s", ioWait)
	}
}
