package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cgscope/cgscope/internal/bench/benchutil"
)

// bpfProg is one entry of `bpftool prog show -j`.
type bpfProg struct {
	ID        int    `json:"id"`
	Type      string `json:"type"`
	Name      string `json:"name"`
	RunTimeNs uint64 `json:"run_time_ns"`
	RunCnt    uint64 `json:"run_cnt"`
}

// bpfProgs lists the loaded BPF programs with their bpf_stats.
func bpfProgs() ([]bpfProg, error) {
	out, err := output(20*time.Second, "", "bpftool", "prog", "show", "-j")
	if err != nil {
		return nil, err
	}
	var progs []bpfProg
	if err := json.Unmarshal([]byte(out), &progs); err != nil {
		return nil, fmt.Errorf("parsing bpftool output: %w", err)
	}
	return progs, nil
}

// newPerfEventProgs returns the perf_event programs loaded since the
// snapshot before, leaving out cgscope's sample_cpu.
func newPerfEventProgs(before map[int]bool, now []bpfProg) []bpfProg {
	var out []bpfProg
	for _, p := range now {
		if p.Type == "perf_event" && !before[p.ID] && p.Name != "sample_cpu" {
			out = append(out, p)
		}
	}
	return out
}

func progIDs(progs []bpfProg) map[int]bool {
	m := make(map[int]bool, len(progs))
	for _, p := range progs {
		m[p.ID] = true
	}
	return m
}

// cgMetrics is what the benchmark reads from cgscope's /metrics.
type cgMetrics struct {
	at          time.Time
	progSeconds map[string]float64 // cgscope_bpf_program_run_seconds_total by program
	progRuns    map[string]float64 // cgscope_bpf_program_runs_total by program
	samples     float64            // cgscope_samples_total
	other       map[string]float64
}

// contextSeries are read for the notes under the table.
var contextSeries = []string{
	"process_resident_memory_bytes",
	"cgscope_symbolizer_cached_objects",
	"cgscope_symbolizer_cached_processes",
}

// scrape reads cgscope's /metrics and picks the series the benchmark
// needs.
func scrape(port int) (cgMetrics, error) {
	all, err := benchutil.Scrape(port)
	m := cgMetrics{at: all.At, other: map[string]float64{},
		progSeconds: all.ByLabel("cgscope_bpf_program_run_seconds_total", "program"),
		progRuns:    all.ByLabel("cgscope_bpf_program_runs_total", "program")}
	if err != nil {
		return m, err
	}
	m.samples = all.Get("cgscope_samples_total")
	for _, name := range contextSeries {
		if all.Has(name) {
			m.other[name] = all.Get(name)
		}
	}
	_, haveTime := m.progSeconds[sampleProg]
	_, haveRuns := m.progRuns[sampleProg]
	if !all.Has("cgscope_samples_total") || !haveTime || !haveRuns {
		return m, fmt.Errorf("/metrics lacks %s run time or runs, or cgscope_samples_total", sampleProg)
	}
	return m, nil
}

// sampleProg is cgscope's perf_event sampling program.
const sampleProg = "sample_cpu"

// machineInfo describes the host for the report.
type machineInfo struct {
	kernel, cpuModel, memory string
	cpus                     int
	tools                    []string
}

func readMachine(cgscope string) machineInfo {
	m := machineInfo{kernel: "unknown", cpuModel: "unknown", memory: "unknown"}
	if out, err := output(10*time.Second, "", "uname", "-r"); err == nil {
		m.kernel = strings.TrimSpace(out)
	}
	if out, err := output(10*time.Second, "", "nproc"); err == nil {
		m.cpus, _ = strconv.Atoi(strings.TrimSpace(out))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.cpuModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "MemTotal:") {
				f := strings.Fields(line)
				if len(f) >= 2 {
					if kb, err := strconv.ParseFloat(f[1], 64); err == nil {
						m.memory = fmt.Sprintf("%.1f GiB", kb/1024/1024)
					}
				}
			}
		}
	}
	for _, argv := range [][]string{
		{cgscope, "--version"},
		{"perf", "version"},
		{"bpftrace", "--version"},
		{"bpftool", "version"},
		{"go", "version"},
	} {
		out, err := output(10*time.Second, "", argv...)
		if err != nil && strings.TrimSpace(out) == "" {
			continue
		}
		first, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
		if argv[0] == cgscope {
			first = "cgscope " + first
		}
		m.tools = append(m.tools, first)
	}
	return m
}

// heldProgIDs returns the ids of the BPF programs that a live process holds
// a file descriptor to (a program fd or a link fd), from /proc/*/fdinfo.
func heldProgIDs() map[int]bool {
	held := map[int]bool{}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return held
	}
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		progs, _, err := benchutil.HeldBPF(pid)
		if err != nil {
			continue // gone, or not readable
		}
		for id := range progs {
			held[id] = true
		}
	}
	return held
}
