package pprof

import (
	"fmt"
	"strings"
	"time"

	"github.com/google/pprof/profile"

	"github.com/cgscope/cgscope/internal/pipeline"
)

// Kind is what a profile measures: where threads ran (CPU) or where they
// waited off the CPU (OffCPU). Its zero value is CPU, so a Selector that
// does not say is the CPU profile it always was.
type Kind uint8

const (
	CPU    Kind = iota // "cpu": on-CPU samples, cpu/nanoseconds
	OffCPU             // "off_cpu": off-CPU samples, off_cpu/nanoseconds
)

// ReasonLabel is the string label of an off-CPU sample saying why the
// thread left the CPU ("runnable" when preempted, "sleeping", "io_wait",
// "uninterruptible", "other").
const ReasonLabel = "off_cpu_reason"

// kindSpec is everything that differs between the kinds: their names in
// URLs and flags, pprof's value types, and which samples of a window they
// take and what time each stands for. Builder and the history use one code
// path for every kind, reading it from here.
type kindSpec struct {
	name string
	// valueType is the sample type after samples/count: pprof's default
	// (what a flame graph shows) and the period type.
	valueType profile.ValueType
	samples   func(*pipeline.Window) []pipeline.Sample
	nanos     func(s *pipeline.Sample, period time.Duration) int64
	hasPeriod bool // a fixed sampling period: what one sample stands for
}

var kinds = [...]kindSpec{
	CPU: {
		name:      "cpu",
		valueType: profile.ValueType{Type: "cpu", Unit: "nanoseconds"},
		samples:   func(w *pipeline.Window) []pipeline.Sample { return w.Samples },
		nanos:     func(s *pipeline.Sample, period time.Duration) int64 { return int64(s.Count) * int64(period) },
		hasPeriod: true,
	},
	OffCPU: {
		name:      "off_cpu",
		valueType: profile.ValueType{Type: "off_cpu", Unit: "nanoseconds"},
		samples:   func(w *pipeline.Window) []pipeline.Sample { return w.OffCPU },
		// Each off-CPU sample carries its own estimated time away: switches
		// are sampled with weights, so there is no period to multiply by.
		nanos: func(s *pipeline.Sample, _ time.Duration) int64 { return int64(s.OffCPU) },
	},
}

// Kinds are all the kinds, in the order messages list them.
func Kinds() []Kind { return []Kind{CPU, OffCPU} }

func (k Kind) spec() *kindSpec {
	if int(k) >= len(kinds) {
		panic(fmt.Sprintf("pprof: unknown profile kind %d", k))
	}
	return &kinds[k]
}

// String is the kind's name in type= and --type: "cpu", "off_cpu".
func (k Kind) String() string { return k.spec().name }

// Set parses a kind's name, so a Kind serves as a flag value.
func (k *Kind) Set(name string) error {
	for _, c := range Kinds() {
		if c.String() == name {
			*k = c
			return nil
		}
	}
	return fmt.Errorf("unknown profile type %q: want one of %s", name, strings.Join(kindNames(), ", "))
}

// ParseKind returns the kind named name ("cpu", "off_cpu").
func ParseKind(name string) (Kind, error) {
	var k Kind
	err := k.Set(name)
	return k, err
}

func kindNames() []string {
	names := make([]string, 0, len(kinds))
	for _, k := range Kinds() {
		names = append(names, k.String())
	}
	return names
}

// FileName is the default name of a kind's gzip pprof file: cpu.pb.gz,
// off_cpu.pb.gz.
func (k Kind) FileName() string { return k.String() + ".pb.gz" }

// WindowSamples returns the samples of w that a profile of kind k is made
// of.
func (k Kind) WindowSamples(w *pipeline.Window) []pipeline.Sample { return k.spec().samples(w) }

// nanos is the time sample s stands for in a profile of kind k: CPU time
// (its count times the sampling period), or time off the CPU.
func (k Kind) nanos(s *pipeline.Sample, period time.Duration) int64 { return k.spec().nanos(s, period) }

// hasPeriod reports whether the kind's samples stand for a fixed sampling
// period (CPU) rather than each for its own estimated time (off-CPU).
func (k Kind) hasPeriod() bool { return k.spec().hasPeriod }
