package collector

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/cgscope/cgscope/bpf"
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
