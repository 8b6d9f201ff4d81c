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
}

func newRecordingSink() *recordingSink {
	return &recordingSink{values: map[string]float64{}, histograms: map[string][]uint64{}}
}

func (s *recordingSink) Add(m *Metric, v float64, labelValues ...string) {
	s.values[m.Name+fmt.Sprint(labelValues)] = v
}

func (s *recordingSink) Histogram(m *Metric, counts []uint64, sum float64) {
	s.histograms[m.Name] = slices.Clone(counts)
}

// The threads' faults are exported, both kinds, only where memory.stat
// says nothing; the histogram only where its program is loaded.
func TestEmitSourcesOfFaultsAndHistogram(t *testing.T) {
	u := &Usage{PageFaultsMinor: 7, PageFaultsMajor: 2, RunqSampled: true}
	u.RunqHistogram[3] = 5

	out := newRecordingSink()
	Lookup(Faults).Emit(&Input{Usage: u}, out)
	if out.values["cgscope_cgroup_page_faults_total[minor]"] != 7 || out.values["cgscope_cgroup_page_faults_total[major]"] != 2 {
		t.Errorf("no memory.stat: faults %v, want the threads' 7 minor and 2 major", out.values)
	}
	out = newRecordingSink()
	files := &cgroup.FileStats{PageFaultsMinor: cgroup.Value{V: 70, Known: true}, PageFaultsMajor: cgroup.Value{V: 20, Known: true}}
	Lookup(Faults).Emit(&Input{Usage: u, Files: files}, out)
	if len(out.values) != 0 {
		t.Errorf("memory.stat known: the faults collector still emits %v", out.values)
	}

	out = newRecordingSink()
	Lookup(Sched).Emit(&Input{Usage: u}, out)
	if got := out.histograms["cgscope_cgroup_cpu_runqueue_latency_seconds"]; len(got) != RunqBuckets || got[3] != 5 {
		t.Errorf("histogram %v, want %d buckets with 5 in bucket 3", got, RunqBuckets)
	}
	out = newRecordingSink()
	u.RunqSampled = false
	Lookup(Sched).Emit(&Input{Usage: u}, out)
	if len(out.histograms) != 0 || len(out.values) == 0 {
		t.Errorf("histogram program not loaded: histograms %v, values %v; want only the values", out.histograms, out.values)
	}
}
