package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/alecthomas/kingpin/v2"
	"github.com/google/pprof/profile"

	"github.com/cgscope/cgscope/exporter/pprof"
)

// parseRecord parses `cgscope record args...` as main does.
func parseRecord(args ...string) (*recordCommand, error) {
	app := kingpin.New("cgscope", "")
	c := newRecordCommand(app, addProfilingFlags(app))
	_, err := app.Parse(append([]string{"record"}, args...))
	return c, err
}

// --type picks the profile; without --output the file is named after it,
// cpu.pb.gz as before for the default type.
func TestRecordTypeFlag(t *testing.T) {
	for _, c := range []struct {
		args []string
		kind pprof.Kind
		out  string
	}{
		{nil, pprof.CPU, "cpu.pb.gz"},
		{[]string{"--type=cpu"}, pprof.CPU, "cpu.pb.gz"},
		{[]string{"--type=off_cpu"}, pprof.OffCPU, "off_cpu.pb.gz"},
		{[]string{"--type=off_cpu", "-o", "/tmp/waits.pb.gz"}, pprof.OffCPU, "/tmp/waits.pb.gz"},
	} {
		rc, err := parseRecord(c.args...)
		if err != nil || rc.kind != c.kind || rc.outputPath() != c.out {
			t.Errorf("%q: type %v, output %q, %v; want %v, %q", c.args, rc.kind, rc.outputPath(), err, c.kind, c.out)
		}
	}
	if _, err := parseRecord("--type=offcpu"); err == nil || !strings.Contains(err.Error(), "want one of cpu, off_cpu") {
		t.Errorf("--type=offcpu: %v, want an error listing the types", err)
	}
	rc, err := parseRecord("-o", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.validate(); err == nil || !strings.Contains(err.Error(), "--output") {
		t.Errorf("-o '': %v, want an error naming --output", err)
	}
}

// record, run for real on this kernel, writes each type's profile under
// its own default name in the working directory, of its own sample types.
func TestRecordWritesTypedProfile(t *testing.T) {
	t.Chdir(t.TempDir())
	// A process on the CPU while it records: an idle host gives a second at
	// 19 Hz no sample.
	spin := exec.Command("sh", "-c", "while :; do :; done")
	if err := spin.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { spin.Process.Kill(); spin.Wait() })
	for _, kind := range pprof.Kinds() {
		if code := run([]string{"record", "--duration=1s", "--type=" + kind.String()}); code != 0 {
			t.Fatalf("record --type=%s exited %d", kind, code)
		}
		f, err := os.Open(filepath.Join(".", kind.FileName()))
		if err != nil {
			t.Fatal(err)
		}
		p, err := profile.Parse(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if p.DefaultSampleType != kind.String() || p.SampleType[1].Type != kind.String() || p.SampleType[1].Unit != "nanoseconds" {
			t.Errorf("%s: default sample type %q, types %s/%s", kind, p.DefaultSampleType, p.SampleType[1].Type, p.SampleType[1].Unit)
		}
		for _, s := range p.Sample {
			if hasReason := s.Label[pprof.ReasonLabel] != nil; hasReason != (kind == pprof.OffCPU) {
				t.Fatalf("%s sample with labels %v", kind, s.Label)
			}
		}
		if kind == pprof.CPU && len(p.Sample) == 0 {
			t.Errorf("a second of the whole host gave no CPU sample")
		}
	}
}
