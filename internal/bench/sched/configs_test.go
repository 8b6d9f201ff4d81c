package main

import (
	"slices"
	"strings"
	"testing"
)

// help is the shape of kingpin's --help-long, abridged.
const help = `usage: cgscope [<flags>] <command> [<args> ...]

Flags:
  -h, --[no-]help               Show context-sensitive help.
      --profiling.frequency=19  CPU samples per second on each CPU (1..1000).
      --[no-]profiling.bpf-stats  
                                Enable the kernel's BPF run-time statistics
Commands:
  serve* [<flags>]
    --[no-]collector.sched         CPU time, context switches and run-queue
    --[no-]collector.faults        User page faults per cgroup
    --[no-]collector.oom           OOM kills per cgroup (tp_btf/mark_victim).
    --[no-]collector.network       Bytes and packets per cgroup (cgroup_skb
    --[no-]collector.tcp           TCP connections opened, failed, closed,
    --[no-]collector.cgroupfs      Memory, CPU throttling, page faults and PSI
    --collector.cgroupfs.interval=10s  
`

func byName(cfgs []*config, name string) *config {
	for _, c := range cfgs {
		if c.name == name {
			return c
		}
	}
	return nil
}

func TestConfigsWithoutOffCPUFlag(t *testing.T) {
	f := parseFlags(help)
	if !f.bools["help"] || !f.bools["profiling.bpf-stats"] || !f.others["profiling.frequency"] || !f.others["collector.cgroupfs.interval"] {
		t.Fatalf("flags not read: %+v", f)
	}
	cfgs, warnings := makeConfigs(f)
	if len(warnings) > 0 {
		t.Errorf("warnings for the source tree's own collectors: %q", warnings)
	}
	if got := strings.Join(byName(cfgs, cfgProfilingOnly).args, " "); got !=
		"--no-collector.sched --no-collector.faults --no-collector.oom --no-collector.network --no-collector.tcp --no-collector.cgroupfs" {
		t.Errorf("profiling only: %s", got)
	}
	off := byName(cfgs, cfgOffCPU)
	if off.unavailable == "" || !slices.Equal(off.args, []string{"--profiling.off-cpu"}) {
		t.Errorf("off-CPU on must be named and not run: %+v", off)
	}
	if only := byName(cfgs, cfgProfilingOnly); only.wantOffCPU != nil || len(only.notes) == 0 {
		t.Errorf("profiling only must say it could not turn off-CPU off: %+v", only)
	}
	if d := byName(cfgs, cfgDefaults); len(d.args) != 0 || d.unavailable != "" {
		t.Errorf("defaults: %+v", d)
	}
	if b := byName(cfgs, cfgBaseline); b.cgscope {
		t.Errorf("the baseline runs cgscope")
	}
}

func TestConfigsWithOffCPUFlag(t *testing.T) {
	cfgs, _ := makeConfigs(parseFlags(help + "    --[no-]profiling.off-cpu       Off-CPU profiles.\n    --profiling.off-cpu.per-thread=50\n"))
	off := byName(cfgs, cfgOffCPU)
	if off.unavailable != "" || off.wantOffCPU == nil || !*off.wantOffCPU {
		t.Errorf("off-CPU on: %+v", off)
	}
	only := byName(cfgs, cfgProfilingOnly)
	if only.args[len(only.args)-1] != "--no-profiling.off-cpu" || only.wantOffCPU == nil || *only.wantOffCPU {
		t.Errorf("profiling only: %+v", only)
	}
}

func TestConfigsOffCPUNotASwitch(t *testing.T) {
	cfgs, _ := makeConfigs(parseFlags(help + "    --profiling.off-cpu=auto       Off-CPU profiles.\n"))
	if off := byName(cfgs, cfgOffCPU); off.unavailable == "" {
		t.Errorf("off-CPU on ran with a flag that is not a switch: %+v", off)
	}
}

func TestCollectorsMismatchWarns(t *testing.T) {
	_, warnings := makeConfigs(parseFlags(strings.Replace(help, "collector.tcp ", "collector.udp ", 1)))
	if len(warnings) != 1 || !strings.Contains(warnings[0], "udp") {
		t.Errorf("warnings: %q", warnings)
	}
}

func TestSpreadAndThousands(t *testing.T) {
	ms := []*measurement{{events: 3}, {events: 1}, {events: 2}, {events: 10}}
	s := spreadOf(ms, func(m *measurement) float64 { return float64(m.events) })
	if s.med != 2.5 || s.lo != 1 || s.hi != 10 || s.n != 4 {
		t.Errorf("spread: %+v", s)
	}
	for v, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 152300.4: "152,300", 1234567: "1,234,567"} {
		if got := thousands(v); got != want {
			t.Errorf("thousands(%v) = %s, want %s", v, got, want)
		}
	}
}
