package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
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

var httpClient = &http.Client{Timeout: 3 * time.Second}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitHealthy polls /healthz until it answers 200, the child exits, or the
// timeout passes. It returns the time of the first 200.
func waitHealthy(c *child, port int, timeout time.Duration) (time.Time, error) {
	url := fmt.Sprintf("http://127.0.0.1:%d/healthz", port)
	client := &http.Client{Timeout: 500 * time.Millisecond}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if c.exited() {
			return time.Time{}, fmt.Errorf("cgscope exited before becoming healthy: %v: %s", c.waitErr, c.logTail(5))
		}
		resp, err := client.Get(url)
		if err == nil {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Now(), nil
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Time{}, fmt.Errorf("cgscope not healthy after %v: %s", timeout, c.logTail(5))
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

// scrape reads cgscope's /metrics text exposition and picks the series the
// benchmark needs.
func scrape(port int) (cgMetrics, error) {
	m := cgMetrics{at: time.Now(), other: map[string]float64{}, progSeconds: map[string]float64{}, progRuns: map[string]float64{}}
	resp, err := httpClient.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		return m, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return m, fmt.Errorf("/metrics: HTTP %d", resp.StatusCode)
	}
	found := 0
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 16<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		series, value, ok := splitSample(line)
		if !ok {
			continue
		}
		if prog, ok := programLabel(series, "cgscope_bpf_program_run_seconds_total"); ok {
			m.progSeconds[prog] = value
			continue
		}
		if prog, ok := programLabel(series, "cgscope_bpf_program_runs_total"); ok {
			m.progRuns[prog] = value
			continue
		}
		switch series {
		case `cgscope_samples_total`:
			m.samples, found = value, found+1
		default:
			for _, name := range contextSeries {
				if series == name {
					m.other[name] = value
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return m, err
	}
	_, haveTime := m.progSeconds[sampleProg]
	_, haveRuns := m.progRuns[sampleProg]
	if found < 1 || !haveTime || !haveRuns {
		return m, fmt.Errorf("/metrics lacks %s run time or runs, or cgscope_samples_total", sampleProg)
	}
	return m, nil
}

// sampleProg is cgscope's perf_event sampling program.
const sampleProg = "sample_cpu"

// programLabel returns P from `name{program="P"}`.
func programLabel(series, name string) (string, bool) {
	rest, ok := strings.CutPrefix(series, name+`{program="`)
	if !ok {
		return "", false
	}
	prog, ok := strings.CutSuffix(rest, `"}`)
	return prog, ok && !strings.ContainsAny(prog, `"{}`)
}

// splitSample splits `name{labels} value [timestamp]` into series and value.
func splitSample(line string) (string, float64, bool) {
	// Label values may hold spaces; the series ends at the closing brace.
	end := strings.LastIndexByte(line, '}')
	if end < 0 {
		end = strings.IndexByte(line, ' ')
		if end < 0 {
			return "", 0, false
		}
		end-- // so that series = line[:end+1]
	}
	series := line[:end+1]
	fields := strings.Fields(line[end+1:])
	if len(fields) == 0 {
		return "", 0, false
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return "", 0, false
	}
	return series, v, true
}

// procCPU returns a live process's CPU time: the sum of its threads'
// run time in /proc/PID/task/TID/schedstat (nanoseconds; threads that
// exited are not counted), or user+sys from /proc/PID/stat (10 ms ticks)
// when schedstat is not available.
func procCPU(pid int) (time.Duration, string, error) {
	if d, err := schedstatCPU(pid); err == nil {
		return d, "schedstat", nil
	}
	d, err := statCPU(pid)
	return d, "stat", err
}

func schedstatCPU(pid int) (time.Duration, error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, err
	}
	var sum uint64
	n := 0
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if err != nil {
			continue // the thread exited meanwhile
		}
		f := strings.Fields(string(b))
		if len(f) < 3 {
			continue
		}
		v, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			continue
		}
		sum += v
		n++
	}
	if n == 0 || sum == 0 {
		return 0, fmt.Errorf("/proc/%d/task/*/schedstat: nothing usable", pid)
	}
	return time.Duration(sum), nil
}

func statCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	// comm may contain spaces and parentheses: fields start after the last ')'.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(s[i+1:])
	// After comm: state(3) ... utime is field 14, stime 15 (1-based) => f[11], f[12].
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime", pid)
	}
	const userHZ = 100 // USER_HZ is 100 on every Linux architecture Go runs cgscope on
	return time.Duration(ut+st) * time.Second / userHZ, nil
}

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

// hostBusy returns the share of all CPUs that was busy (not idle or iowait)
// over the interval, from /proc/stat.
func hostBusy(interval time.Duration) (float64, error) {
	read := func() (busy, total uint64, err error) {
		b, err := os.ReadFile("/proc/stat")
		if err != nil {
			return 0, 0, err
		}
		line, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(line)
		if len(f) < 6 || f[0] != "cpu" {
			return 0, 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
		}
		for i, v := range f[1:] {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return 0, 0, err
			}
			if i >= 8 { // guest and guest_nice are already in user and nice
				break
			}
			total += n
			if i != 3 && i != 4 { // idle, iowait
				busy += n
			}
		}
		return busy, total, nil
	}
	b0, t0, err := read()
	if err != nil {
		return 0, err
	}
	time.Sleep(interval)
	b1, t1, err := read()
	if err != nil {
		return 0, err
	}
	if t1 <= t0 {
		return 0, fmt.Errorf("/proc/stat did not advance")
	}
	return float64(b1-b0) / float64(t1-t0), nil
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
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue
		}
		dir := "/proc/" + p.Name() + "/fdinfo"
		fds, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			link, err := os.Readlink("/proc/" + p.Name() + "/fd/" + fd.Name())
			if err != nil || !strings.HasPrefix(link, "anon_inode:bpf") {
				continue
			}
			b, err := os.ReadFile(dir + "/" + fd.Name())
			if err != nil {
				continue
			}
			for _, line := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(line, "prog_id:"); ok {
					if id, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
						held[id] = true
					}
				}
			}
		}
	}
	return held
}
