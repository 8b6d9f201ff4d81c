package pprof

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/cgscope/cgscope/internal/pipeline"
)

func TestSelectorMatch(t *testing.T) {
	s := &pipeline.Sample{PID: 7, Cgroup: "/a/b"}
	for f, want := range map[Selector]bool{
		{}:                true,
		{PID: 7}:          true,
		{PID: 8}:          false,
		{Cgroup: "/"}:     true,
		{Cgroup: "/a"}:    true,
		{Cgroup: "/a/"}:   true,
		{Cgroup: "/a/b"}:  true,
		{Cgroup: "/a/bc"}: false,
		{Cgroup: "/ab"}:   false,
	} {
		if got := f.Match(s); got != want {
			t.Errorf("%+v.Match(%s) = %v, want %v", f, s.Cgroup, got, want)
		}
	}
}

// comm= selects by process name, live as in the history.
func TestSelectorComm(t *testing.T) {
	s := &pipeline.Sample{PID: 7, Comm: "cwork", Cgroup: "/a"}
	for sel, want := range map[Selector]bool{
		{Comm: "cwork"}:         true,
		{Comm: "cwor"}:          false,
		{Comm: "cwork", PID: 8}: false,
	} {
		if got := sel.Match(s); got != want {
			t.Errorf("%+v.Match(comm %s) = %v, want %v", sel, s.Comm, got, want)
		}
	}
	q, _ := url.ParseQuery("comm=cwork&pid=7")
	sel, err := ParseParams(q)
	if err != nil || sel != (Selector{PID: 7, Comm: "cwork"}) {
		t.Errorf("ParseParams(%v) = %+v, %v", q, sel, err)
	}
	for _, bad := range []string{"comm=", "comm=" + strings.Repeat("x", 65), "comm=a&comm=b"} {
		q, _ := url.ParseQuery(bad)
		if _, err := ParseParams(q); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// The caller's own parameters are parsed by their setters; their errors and
// unknown parameters are the client's fault, and the message lists what is
// known.
func TestParseParamsOwn(t *testing.T) {
	var seconds string
	own := Param{Name: "seconds", Set: func(v string) error {
		if v == "x" {
			return errors.New("seconds=x: want a number")
		}
		seconds = v
		return nil
	}}
	q, _ := url.ParseQuery("seconds=5&namespace=shop")
	sel, err := ParseParams(q, own)
	if err != nil || seconds != "5" || sel.Workload.Namespace != "shop" {
		t.Errorf("got %+v, seconds %q, %v", sel, seconds, err)
	}
	for query, want := range map[string]string{
		"seconds=x": "seconds=x",
		"bogus=1":   "known: seconds, type, pid, comm, cgroup, container_id, pod_uid, namespace, pod, container",
	} {
		q, _ := url.ParseQuery(query)
		_, err := ParseParams(q, own)
		var pe *ParamError
		if !errors.As(err, &pe) || !pe.BadRequest() || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want a ParamError saying %q", query, err, want)
		}
	}
}

// type= picks the profile kind, CPU when absent; an unknown type is the
// client's fault and the message lists the types there are.
func TestParseParamsType(t *testing.T) {
	for query, want := range map[string]Kind{"": CPU, "type=cpu": CPU, "type=off_cpu&pid=3": OffCPU} {
		q, _ := url.ParseQuery(query)
		sel, err := ParseParams(q)
		if err != nil || sel.Kind != want {
			t.Errorf("%q: kind %v, %v; want %v", query, sel.Kind, err, want)
		}
	}
	for _, query := range []string{"type=bogus", "type=", "type=CPU", "type=cpu&type=off_cpu"} {
		q, _ := url.ParseQuery(query)
		_, err := ParseParams(q)
		var pe *ParamError
		if !errors.As(err, &pe) {
			t.Errorf("%q: %v, want a ParamError", query, err)
		}
	}
	q, _ := url.ParseQuery("type=bogus")
	if _, err := ParseParams(q); err == nil || err.Error() != `type="bogus": want one of cpu, off_cpu` {
		t.Errorf("type=bogus: %v", err)
	}
}

// A Kind is a flag value: Set parses what String prints, and refuses
// anything else without changing the kind.
func TestKindSet(t *testing.T) {
	for _, k := range Kinds() {
		var got Kind
		if err := got.Set(k.String()); err != nil || got != k {
			t.Errorf("Set(%q) = %v, %v", k, got, err)
		}
	}
	k := OffCPU
	if err := k.Set("offcpu"); err == nil || k != OffCPU {
		t.Errorf("Set(offcpu): %v, kind now %v", err, k)
	}
	if OffCPU.FileName() != "off_cpu.pb.gz" || CPU.FileName() != "cpu.pb.gz" {
		t.Errorf("file names %s, %s", CPU.FileName(), OffCPU.FileName())
	}
}
