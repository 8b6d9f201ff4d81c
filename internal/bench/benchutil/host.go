package benchutil

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// WaitHealthy polls cgscope's /healthz until it answers 200, the child
// exits, or the timeout passes. It returns the time of the first 200.
func WaitHealthy(c *Child, port int, timeout time.Duration) (time.Time, error) {
	url := fmt.Sprintf("http://127.0.0.1:%d/healthz", port)
	client := &http.Client{Timeout: 500 * time.Millisecond}
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if c.Exited() {
			return time.Time{}, fmt.Errorf("cgscope exited before becoming healthy: %v: %s", c.WaitErr, c.LogTail(5))
		}
		resp, err := client.Get(url)
		if err != nil {
			continue
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return time.Now(), nil
		}
	}
	return time.Time{}, fmt.Errorf("cgscope not healthy after %v: %s", timeout, c.LogTail(5))
}

// QuietBusy is the share of all CPUs in use below which the host is idle.
const QuietBusy = 0.10

// WaitQuiet waits, at most maxWait, until the host's CPUs are less than
// QuietBusy in use over 3 s (other work would crowd out the workloads and
// put its own samples and events into the figures). It returns the last
// share of the CPUs in use and whether that was quiet.
func WaitQuiet(maxWait time.Duration) (busy float64, quiet bool, err error) {
	deadline := time.Now().Add(maxWait)
	for i := 0; ; i++ {
		busy, err := HostBusy(3 * time.Second)
		if err != nil {
			return 0, false, err
		}
		if busy < QuietBusy {
			return busy, true, nil
		}
		if !time.Now().Before(deadline) {
			return busy, false, nil
		}
		if i == 0 {
			Logf("the host is busy (%.0f%% of the CPUs): waiting up to %v for it to become idle", 100*busy, maxWait)
		}
		time.Sleep(2 * time.Second)
	}
}

// HostBusy returns the share of all CPUs that was not idle over the
// interval, from the first line of /proc/stat.
func HostBusy(interval time.Duration) (float64, error) {
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

// Loadavg is the three load averages of /proc/loadavg, or "unknown".
func Loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}

// ProcCPU returns a live process's CPU time: the sum of its threads' run
// time in /proc/PID/task/TID/schedstat (nanoseconds; threads that exited
// are not counted), or user+sys from /proc/PID/stat (10 ms ticks) when
// schedstat is not available. The second result names the source.
func ProcCPU(pid int) (time.Duration, string, error) {
	if d, err := ThreadsCPU(pid); err == nil {
		return d, "schedstat", nil
	}
	d, err := StatCPU(pid)
	return d, "stat", err
}

// ThreadsCPU sums the run time of the process's live threads from their
// schedstat.
func ThreadsCPU(pid int) (time.Duration, error) {
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

// StatCPU returns the process's user+sys time from /proc/PID/stat (all its
// threads, the exited ones included; 10 ms ticks).
func StatCPU(pid int) (time.Duration, error) {
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
	return time.Duration(ut+st) * StatTick, nil
}

// StatTick is the unit of /proc/PID/stat's times: USER_HZ is 100 on every
// Linux architecture Go runs cgscope on.
const StatTick = 10 * time.Millisecond

// StatusBytes returns a kB field of /proc/PID/status (VmRSS, VmHWM…) in
// bytes.
func StatusBytes(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s", pid, field)
}

// FindRepo returns the directory holding go.mod at or above the working
// directory: the benchmarks build workloads from the repository.
func FindRepo() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory: run from the cgscope repository")
		}
		dir = parent
	}
}

// Target is what every benchmark command is pointed at: the cgscope binary
// to measure, the report to write, and the repository its workloads are
// built from.
type Target struct {
	Cgscope string // absolute once checked
	Out     string
	Repo    string // set by Check
}

// Flags registers -cgscope and -out on the command line.
func (t *Target) Flags(outDefault, outHelp string) {
	flag.StringVar(&t.Cgscope, "cgscope", "bin/cgscope", "path of the cgscope binary to measure")
	flag.StringVar(&t.Out, "out", outDefault, outHelp)
}

// Check resolves the binary and finds the repository, which must hold the
// files named by need (paths relative to it).
func (t *Target) Check(need ...string) error {
	bin, err := Executable(t.Cgscope)
	if err != nil {
		return err
	}
	t.Cgscope = bin
	if t.Repo, err = FindRepo(); err != nil {
		return err
	}
	for _, n := range need {
		if _, err := os.Stat(filepath.Join(t.Repo, n)); err != nil {
			return fmt.Errorf("%s has no %s: run from the cgscope repository", t.Repo, n)
		}
	}
	return nil
}

// Prepare makes the run's temporary directory (removed by Cleanup) and
// takes the host-wide benchmark lock, waiting at most 15 minutes for it.
func Prepare(prefix string) (tmp string, err error) {
	if tmp, err = os.MkdirTemp("", prefix); err != nil {
		return "", err
	}
	SetTempDir(tmp) // removed by Cleanup, also after a signal or panic
	if err := LockBench(15 * time.Minute); err != nil {
		return "", err
	}
	return tmp, nil
}

// NeedTools returns an error naming the commands (looked up on PATH, or
// given by path) and files that are missing.
func NeedTools(commands []string, files ...string) error {
	var missing []string
	for _, c := range commands {
		if _, err := exec.LookPath(c); err != nil {
			missing = append(missing, c)
		}
	}
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s: `scripts/install-deps.sh test` (or `make test`) installs them", strings.Join(missing, ", "))
	}
	return nil
}
