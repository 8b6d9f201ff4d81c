package collector

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/cgscope/cgscope/bpf"
	"github.com/cgscope/cgscope/cgroup"
)

// Every program of the counter object belongs to a BPF collector (the
// thread-figure programs to both sched and faults, the sampled one to
// sched alone), and every collector has a unique name, a source that fits
// its programs, and series to emit.
func TestTableCoversEveryProgram(t *testing.T) {
	spec, err := bpf.LoadCgroupStats()
	if err != nil {
		t.Fatal(err)
	}
	owner := map[string]string{}
	names := map[string]bool{}
	for _, c := range Table {
		if names[c.Name] {
			t.Errorf("collector %s listed twice", c.Name)
		}
		names[c.Name] = true
		if len(c.Metrics) == 0 || c.Help == "" || c.emit == nil {
			t.Errorf("collector %s: no series, help or emitter", c.Name)
		}
		if (c.Source == BPF) != (len(c.Programs) > 0) {
			t.Errorf("collector %s: source %d with %d programs", c.Name, c.Source, len(c.Programs))
		}
		progs := c.Programs
		if c.Sampled != "" {
			progs = append(slices.Clone(progs), c.Sampled)
		}
		for _, p := range progs {
			if spec.Programs[p] == nil {
				t.Errorf("collector %s: no program %s in the object", c.Name, p)
			}
			if o, ok := owner[p]; ok && !slices.Contains(taskPrograms, p) {
				t.Errorf("program %s belongs to %s and %s", p, o, c.Name)
			}
			owner[p] = c.Name
		}
	}
	for p := range spec.Programs {
		if owner[p] == "" {
			t.Errorf("program %s belongs to no collector: it would never be loaded", p)
		}
	}
}

// A collector is called unsupported only for what the kernel lacks; a
// verifier rejection, missing privileges or an unmounted tracefs are named
// as what they are.
func TestUnsupported(t *testing.T) {
	notFound := &os.PathError{Op: "open", Path: "/sys/kernel/tracing/events/x/y/id", Err: os.ErrNotExist}
	for err, want := range map[error]bool{
		fmt.Errorf("loading: %w", ebpf.ErrNotSupported):                              true,
		fmt.Errorf("attaching page_fault_user: %w", notFound):                        true,
		fmt.Errorf("attaching x: %w", fmt.Errorf("%w (%w)", notFound, errNoTracefs)): false,
		fmt.Errorf("loading: %w", &ebpf.VerifierError{}):                             false,
		fmt.Errorf("loading: %w", os.ErrPermission):                                  false,
		errors.New("no cgroup2 hierarchy mounted"):                                   false,
	} {
		if got := Unsupported(err); got != want {
			t.Errorf("Unsupported(%v) = %v, want %v", err, got, want)
		}
	}
}

// recordingSink keeps what a collector emits, by family and labels.
type recordingSink struct {
	values     map[string]float64
	histograms map[string][]uint64
	sums       map[string]float64
}

func newRecordingSink() *recordingSink {
	return &recordingSink{values: map[string]float64{}, histograms: map[string][]uint64{}, sums: map[string]float64{}}
}

func (s *recordingSink) Add(m *Metric, v float64, labelValues ...string) {
	s.values[m.Name+fmt.Sprint(labelValues)] = v
}

func (s *recordingSink) Histogram(m *Metric, counts []uint64, sum float64) {
	s.histograms[m.Name] = slices.Clone(counts)
	s.sums[m.Name] = sum
}

// Page faults come from the source picked for the cgroup, both kinds, and
// from one collector only; the histogram only where its program is loaded,
// with its own (sampled) sum.
func TestEmitSourcesOfFaultsAndHistogram(t *testing.T) {
	u := &Usage{PageFaultsMinor: 7, PageFaultsMajor: 2, RunqSampled: true, RunqWaitSeconds: 3, RunqHistogramSumSeconds: 2.5}
	u.RunqHistogram[3] = 5
	files := &cgroup.FileStats{PageFaultsMinor: cgroup.Value{V: 70, Known: true}, PageFaultsMajor: cgroup.Value{V: 20, Known: true}}
	const minor, major = "cgscope_cgroup_page_faults_total[minor]", "cgscope_cgroup_page_faults_total[major]"
	for _, c := range []struct {
		source       FaultSource
		minor, major float64 // 0: no series
	}{
		{FaultsFromThreads, 7, 2},
		{FaultsFromFiles, 70, 20},
		{FaultsUndecided, 0, 0},
	} {
		out := newRecordingSink()
		in := &Input{Usage: u, Files: files, Faults: c.source}
		Lookup(Faults).Emit(in, out)
		Lookup(CgroupFS).Emit(in, out)
		if out.values[minor] != c.minor || out.values[major] != c.major {
			t.Errorf("source %d: faults minor %v, major %v; want %v, %v", c.source, out.values[minor], out.values[major], c.minor, c.major)
		}
	}

	out := newRecordingSink()
	Lookup(Sched).Emit(&Input{Usage: u}, out)
	if got := out.histograms["cgscope_cgroup_cpu_runqueue_latency_seconds"]; len(got) != RunqBuckets || got[3] != 5 {
		t.Errorf("histogram %v, want %d buckets with 5 in bucket 3", got, RunqBuckets)
	}
	if got := out.sums["cgscope_cgroup_cpu_runqueue_latency_seconds"]; got != 2.5 {
		t.Errorf("histogram sum %v, want the sampled waits' 2.5, not the exact total", got)
	}
	out = newRecordingSink()
	u.RunqSampled = false
	Lookup(Sched).Emit(&Input{Usage: u}, out)
	if len(out.histograms) != 0 || len(out.values) == 0 {
		t.Errorf("histogram program not loaded: histograms %v, values %v; want only the values", out.histograms, out.values)
	}
}

// A cgroup's fault source is picked once: from its files when first read
// (memory.stat if it has faults, else the threads), the threads' where
// files are not read, and then kept whatever the files say.
func TestPickFaultSource(t *testing.T) {
	known := &cgroup.FileStats{PageFaultsMinor: cgroup.Value{V: 1, Known: true}}
	unknown := &cgroup.FileStats{}
	for _, c := range []struct {
		cur       FaultSource
		files     *cgroup.FileStats
		filesRead bool
		want      FaultSource
	}{
		{FaultsUndecided, nil, false, FaultsFromThreads},
		{FaultsUndecided, nil, true, FaultsUndecided},
		{FaultsUndecided, known, true, FaultsFromFiles},
		{FaultsUndecided, unknown, true, FaultsFromThreads},
		{FaultsFromFiles, nil, true, FaultsFromFiles},
		{FaultsFromFiles, unknown, true, FaultsFromFiles},
		{FaultsFromThreads, known, true, FaultsFromThreads},
	} {
		if got := PickFaultSource(c.cur, c.files, c.filesRead); got != c.want {
			t.Errorf("PickFaultSource(%d, %+v, %v) = %d, want %d", c.cur, c.files, c.filesRead, got, c.want)
		}
	}
}
