package otlp

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/cgscope/cgscope/internal/pipeline"
	"github.com/cgscope/cgscope/symbolizer"
)

// realCaptureFile is real data for the benchmarks: the samples of the
// first 5,000 unique stacks (location-id lists, in sample order) of a
// whole-host cgscope capture (pprof with pid, tid, comm and cgroup labels,
// 499 Hz for 25 s while `go build -a std` ran: 652 processes, about
// 19,000 unique stacks and 22,800 locations in all), with the locations,
// functions and mappings they use. It is made from the full capture with
//
//	go test ./exporter/otlp -run TestRealCaptureTestdata -trim-capture=/path/to/capture.pb.gz
const realCaptureFile = "testdata/real-capture-5000-stacks.pb.gz"

const realCaptureStacks = 5000

var trimCapture = flag.String("trim-capture", "", "write "+realCaptureFile+" from this full pprof capture")

// The committed capture is what the benchmarks expect: 5,000 unique
// stacks, each sample with its process, thread, name and cgroup, kernel
// and user frames.
func TestRealCaptureTestdata(t *testing.T) {
	if *trimCapture != "" {
		if err := writeTrimmedCapture(*trimCapture, realCaptureFile, realCaptureStacks); err != nil {
			t.Fatal(err)
		}
	}
	p := readCapture(t, realCaptureFile)
	if n := len(stackKeys(p)); n != realCaptureStacks {
		t.Errorf("%s: %d unique stacks, want %d", realCaptureFile, n, realCaptureStacks)
	}
	w := captureWindow(t, p)
	var want, got uint64
	for _, s := range p.Sample {
		want += uint64(s.Value[0])
	}
	kernel, user, pids := 0, 0, map[uint32]bool{}
	for _, s := range w.Samples {
		got += s.Count
		pids[s.PID] = true
		if s.TID == 0 || s.Comm == "" || s.Cgroup == "" {
			t.Fatalf("sample without its labels: %+v", s)
		}
		for _, f := range s.Frames {
			if f.Kernel {
				kernel++
			} else if f.Mapping != nil && f.Function != "" {
				user++
			}
		}
	}
	if got != want || kernel == 0 || user == 0 || len(pids) < 100 {
		t.Errorf("window: %d samples of %d, %d kernel and %d named user frames, %d processes", got, want, kernel, user, len(pids))
	}
}

// writeTrimmedCapture keeps the samples of the first stacks unique stacks
// of the capture in from, and what they reference, and writes them to to.
func writeTrimmedCapture(from, to string, stacks int) error {
	f, err := os.Open(from)
	if err != nil {
		return err
	}
	defer f.Close()
	p, err := profile.Parse(f)
	if err != nil {
		return fmt.Errorf("%s: %w", from, err)
	}
	seen := map[string]bool{}
	var kept []*profile.Sample
	for _, s := range p.Sample {
		k := pprofStackKey(s)
		if !seen[k] && len(seen) == stacks {
			continue
		}
		seen[k] = true
		kept = append(kept, s)
	}
	if len(seen) < stacks {
		return fmt.Errorf("%s: %d unique stacks, want at least %d", from, len(seen), stacks)
	}
	p.Sample = kept
	pruneUnused(p)
	if err := p.CheckValid(); err != nil {
		return err
	}
	out, err := os.Create(to)
	if err != nil {
		return err
	}
	if err := p.Write(out); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// pruneUnused drops the locations, functions and mappings no sample uses.
func pruneUnused(p *profile.Profile) {
	locs, fns, maps := map[*profile.Location]bool{}, map[*profile.Function]bool{}, map[*profile.Mapping]bool{}
	for _, s := range p.Sample {
		for _, l := range s.Location {
			locs[l] = true
			maps[l.Mapping] = true
			for _, ln := range l.Line {
				fns[ln.Function] = true
			}
		}
	}
	p.Location = keep(p.Location, locs)
	p.Function = keep(p.Function, fns)
	p.Mapping = keep(p.Mapping, maps)
}

func keep[T comparable](all []T, used map[T]bool) []T {
	var out []T
	for _, x := range all {
		if used[x] {
			out = append(out, x)
		}
	}
	return out
}

func pprofStackKey(s *profile.Sample) string {
	var b strings.Builder
	for _, l := range s.Location {
		fmt.Fprintf(&b, "%d,", l.ID)
	}
	return b.String()
}

func stackKeys(p *profile.Profile) map[string]bool {
	keys := map[string]bool{}
	for _, s := range p.Sample {
		keys[pprofStackKey(s)] = true
	}
	return keys
}

func readCapture(tb testing.TB, path string) *profile.Profile {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	p, err := profile.Parse(f)
	if err != nil {
		tb.Fatalf("%s: %v", path, err)
	}
	return p
}

// loadRealCapture is the committed capture as one pipeline window.
func loadRealCapture(tb testing.TB) *pipeline.Window {
	return captureWindow(tb, readCapture(tb, realCaptureFile))
}

// captureWindow turns a cgscope pprof capture back into the window it was
// written from: one Mapping per pprof mapping (kernel frames have none),
// each location's first line as its frame's function.
func captureWindow(tb testing.TB, p *profile.Profile) *pipeline.Window {
	tb.Helper()
	start := time.Unix(0, p.TimeNanos)
	w := &pipeline.Window{Start: start, End: start.Add(time.Duration(p.DurationNanos)), Period: time.Duration(p.Period)}
	maps := map[*profile.Mapping]*symbolizer.Mapping{}
	for _, m := range p.Mapping {
		maps[m] = &symbolizer.Mapping{Path: m.File, BuildID: m.BuildID, Start: m.Start, Limit: m.Limit, Offset: m.Offset}
	}
	frames := map[*profile.Location]symbolizer.Frame{}
	for _, l := range p.Location {
		f := symbolizer.Frame{Address: l.Address, ObjAddress: l.Address}
		if l.Mapping != nil && l.Mapping.File == kernelMappingName {
			f.Kernel = true
		} else if l.Mapping != nil {
			f.Mapping = maps[l.Mapping]
		}
		if len(l.Line) > 0 && l.Line[0].Function != nil {
			f.Function, f.File, f.Line = l.Line[0].Function.Name, l.Line[0].Function.Filename, int(l.Line[0].Line)
		}
		frames[l] = f
	}
	for _, s := range p.Sample {
		if len(s.NumLabel["pid"]) != 1 || len(s.NumLabel["tid"]) != 1 {
			tb.Fatalf("sample without pid and tid: %v", s.NumLabel)
		}
		ws := pipeline.Sample{PID: uint32(s.NumLabel["pid"][0]), TID: uint32(s.NumLabel["tid"][0]), Count: uint64(s.Value[0])}
		if v := s.Label["comm"]; len(v) > 0 {
			ws.Comm = v[0]
		}
		if v := s.Label["cgroup"]; len(v) > 0 {
			ws.Cgroup = v[0]
		}
		for _, l := range s.Location {
			ws.Frames = append(ws.Frames, frames[l])
		}
		w.Samples = append(w.Samples, ws)
	}
	return w
}
