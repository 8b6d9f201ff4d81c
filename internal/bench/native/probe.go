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
// timeout passes.
func waitHealthy(c *child, port int, timeout time.Duration) error {
	url := fmt.Sprintf("http://127.0.0.1:%d/healthz", port)
	client := &http.Client{Timeout: 500 * time.Millisecond}
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if c.exited() {
			return fmt.Errorf("cgscope exited before becoming healthy: %v: %s", c.waitErr, c.logTail(5))
		}
		resp, err := client.Get(url)
		if err != nil {
			continue
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
	}
	return fmt.Errorf("cgscope not healthy after %v: %s", timeout, c.logTail(5))
}

// metrics is one scrape of cgscope's /metrics: every sample by its series
// as written (`name` or `name{labels}`).
type metrics struct {
	at     time.Time
	series map[string]float64
}

var scrapeClient = &http.Client{Timeout: 10 * time.Second}

func scrape(port int) (metrics, error) {
	m := metrics{at: time.Now(), series: map[string]float64{}}
	resp, err := scrapeClient.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		return m, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return m, fmt.Errorf("/metrics: HTTP %d", resp.StatusCode)
	}
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 64<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		// Label values may hold spaces: a series with labels ends at its
		// last brace.
		end := strings.LastIndexByte(line, '}') + 1
		if end == 0 {
			end = strings.IndexByte(line, ' ')
		}
		if end <= 0 {
			continue
		}
		fields := strings.Fields(line[end:])
		if len(fields) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(fields[0], 64); err == nil {
			m.series[line[:end]] = v
		}
	}
	return m, sc.Err()
}

// get returns one series, or 0 when it is absent.
func (m metrics) get(series string) float64 { return m.series[series] }

// has reports whether the series is present.
func (m metrics) has(series string) bool {
	_, ok := m.series[series]
	return ok
}

// sum adds up every series of the metric family name.
func (m metrics) sum(name string) float64 {
	var s float64
	for k, v := range m.series {
		if k == name || strings.HasPrefix(k, name+"{") {
			s += v
		}
	}
	return s
}

// bpfMap is one entry of `bpftool map show -j`.
type bpfMap struct {
	ID      int    `json:"id"`
	Name    string `json:"name"`
	Type    string `json:"type"`
	Memlock int64  `json:"bytes_memlock"`
}

// heldMaps returns the BPF maps the process holds: those it has a file
// descriptor to, and those its programs use (a program keeps its .rodata
// and .bss maps alive without any descriptor of the process).
func heldMaps(pid int) ([]bpfMap, error) {
	mapIDs, progIDs := map[int]bool{}, map[int]bool{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil, err
	}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err != nil || !strings.HasPrefix(link, "anon_inode:bpf") {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name()))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, _ := strings.Cut(line, ":")
			id, err := strconv.Atoi(strings.TrimSpace(v))
			switch {
			case err != nil:
			case k == "map_id":
				mapIDs[id] = true
			case k == "prog_id": // program and link descriptors
				progIDs[id] = true
			}
		}
	}
	out, _, err := runShort(30*time.Second, "", "bpftool", "prog", "show", "-j")
	if err != nil {
		return nil, err
	}
	var progs []struct {
		ID     int   `json:"id"`
		MapIDs []int `json:"map_ids"`
	}
	if err := json.Unmarshal([]byte(out), &progs); err != nil {
		return nil, fmt.Errorf("parsing `bpftool prog show -j`: %w", err)
	}
	for _, p := range progs {
		if progIDs[p.ID] {
			for _, id := range p.MapIDs {
				mapIDs[id] = true
			}
		}
	}
	out, _, err = runShort(30*time.Second, "", "bpftool", "map", "show", "-j")
	if err != nil {
		return nil, err
	}
	var all []bpfMap
	if err := json.Unmarshal([]byte(out), &all); err != nil {
		return nil, fmt.Errorf("parsing `bpftool map show -j`: %w", err)
	}
	var held []bpfMap
	for _, m := range all {
		if mapIDs[m.ID] {
			held = append(held, m)
		}
	}
	if len(held) == 0 {
		return nil, fmt.Errorf("process %d holds no BPF map that bpftool lists", pid)
	}
	return held, nil
}

// vmHWM returns the process's peak resident set size in bytes.
func vmHWM(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmHWM", pid)
}

// procCPU returns the CPU time of a single-threaded process: the first
// field of /proc/PID/schedstat, in nanoseconds (the workloads are all
// single-threaded, so the process's main thread is all of it).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", pid))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, fmt.Errorf("/proc/%d/schedstat: empty", pid)
	}
	ns, err := strconv.ParseInt(f[0], 10, 64)
	return time.Duration(ns), err
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}

// quietBusy is the share of all CPUs in use below which the host is idle.
const quietBusy = 0.10

// waitQuiet waits, at most maxWait, until the host's CPUs are less than
// quietBusy in use over 3 s (other work on the host would otherwise crowd
// out the workloads and sample its own stacks into the figures), and
// describes the outcome.
func waitQuiet(maxWait time.Duration) (desc string, quiet bool) {
	deadline := time.Now().Add(maxWait)
	for i := 0; ; i++ {
		busy, err := hostBusy(3 * time.Second)
		if err != nil {
			return "unknown (" + err.Error() + ")", false
		}
		if busy < quietBusy {
			return fmt.Sprintf("%.0f%% of the CPUs in use before it", 100*busy), true
		}
		if !time.Now().Before(deadline) {
			return fmt.Sprintf("%.0f%% of the CPUs in use by other work before it, after waiting %v for less than %.0f%%",
				100*busy, maxWait, 100*quietBusy), false
		}
		if i == 0 {
			logf("the host is busy (%.0f%% of the CPUs): waiting up to %v for it to become idle", 100*busy, maxWait)
		}
		time.Sleep(2 * time.Second)
	}
}

// hostBusy returns the share of all CPUs that was not idle over the
// interval, from the first line of /proc/stat.
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
		// user nice system idle iowait irq softirq steal (guest and
		// guest_nice are already counted in user and nice).
		for i, v := range f[1:min(len(f), 9)] {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return 0, 0, err
			}
			total += n
			if i != 3 && i != 4 {
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
