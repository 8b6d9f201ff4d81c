package e2e

import (
	"bytes"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"

	"github.com/cgscope/cgscope/profiler"
)

// Without the capabilities, cgscope exits non-zero with one error naming
// what is missing, and attaches nothing.
func TestUnprivilegedRunNamesMissingCapabilities(t *testing.T) {
	bin := filepath.Join(artifacts(t), "cgscope")
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
		bin, "--web.listen-address="+freeAddr(t))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	exit, ok := err.(*exec.ExitError)
	if !ok || exit.ExitCode() == 0 {
		t.Fatalf("unprivileged run: err=%v, want a non-zero exit\n%s", err, stderr.String())
	}
	msg := stderr.String()
	for _, want := range []string{"CAP_BPF", "CAP_PERFMON"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not name %s:\n%s", want, msg)
		}
	}
	if n := strings.Count(msg, "level=ERROR"); n != 1 {
		t.Errorf("want exactly one error line, got %d:\n%s", n, msg)
	}
}

// Bad flags are rejected with a clear message naming the flag, before
// anything is loaded; values that do not parse too (kingpin alone would
// print the parser's error without the flag).
func TestBadFlags(t *testing.T) {
	bin := filepath.Join(artifacts(t), "cgscope")
	for _, c := range []struct {
		args []string
		flag string
	}{
		{[]string{"--profiling.frequency=0"}, "--profiling.frequency"},
		{[]string{"--profiling.frequency=5000"}, "--profiling.frequency"},
		{[]string{"--profiling.frequency=often"}, "--profiling.frequency"},
		{[]string{"--profiling.interval=1ms"}, "--profiling.interval"},
		{[]string{"--profiling.interval=10"}, "--profiling.interval"},
		{[]string{"--profiling.max-stacks=1"}, "--profiling.max-stacks"},
		{[]string{"--storage.memory-limit=lots"}, "--storage.memory-limit"},
		{[]string{"--runtime.gc-percent=5"}, "--runtime.gc-percent"},
		{[]string{"--runtime.memory-limit=-1"}, "--runtime.memory-limit"},
		{[]string{"--runtime.gomaxprocs=0"}, "--runtime.gomaxprocs"},
		{[]string{"--no-such-flag"}, "--no-such-flag"},
		{[]string{"record", "--duration=0s"}, "--duration"},
		{[]string{"record", "--output=/no/such/dir/cpu.pb.gz"}, "--output"},
		{[]string{"record", "--cgroup=relative"}, "--cgroup"},
	} {
		out, err := exec.Command(bin, c.args...).CombinedOutput()
		exit, ok := err.(*exec.ExitError)
		if !ok || exit.ExitCode() == 0 {
			t.Errorf("%v: err=%v, want non-zero exit", c.args, err)
			continue
		}
		if !strings.Contains(string(out), c.flag) {
			t.Errorf("%v: message does not name %s: %s", c.args, c.flag, out)
		}
	}
}

// The Go runtime runs the daemon on one P unless told otherwise: by the
// flag, or by GOMAXPROCS when the flag is not given.
func TestGomaxprocs(t *testing.T) {
	procs := func(d *daemon) float64 {
		body, _ := httpGet(t, d.url("/metrics"))
		return metricValue(t, body, "go_sched_gomaxprocs_threads")
	}
	if n := procs(sharedCgscope(t)); n != 1 {
		t.Errorf("default: GOMAXPROCS %v, want 1", n)
	}
	if n := procs(startCgscope(t, t.Cleanup, "--runtime.gomaxprocs=2")); n != 2 {
		t.Errorf("--runtime.gomaxprocs=2: GOMAXPROCS %v, want 2", n)
	}
	t.Setenv("GOMAXPROCS", "2")
	if n := procs(startCgscope(t, t.Cleanup)); n != 2 {
		t.Errorf("GOMAXPROCS=2 in the environment: GOMAXPROCS %v, want 2", n)
	}
}

// `cgscope record` captures once to a file that pprof reads.
func TestRecordToFile(t *testing.T) {
	dir := artifacts(t)
	w := workload(t, filepath.Join(dir, "gosplit"))
	out := filepath.Join(t.TempDir(), "cpu.pb.gz")
	cmd := exec.Command(filepath.Join(dir, "cgscope"), "--profiling.frequency=199", "record", "--duration=2s",
		"--pid="+itoa(w.Process.Pid), "-o", out)
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("record: %v\n%s", err, stdout)
	}
	if !strings.Contains(string(stdout), "wrote "+out) {
		t.Errorf("record printed %q", stdout)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p, err := profile.Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	if n := samplesWhere(p, func(s *profile.Sample) bool { return leafName(s) == "main.hotSeventyFive" }); n == 0 {
		t.Errorf("recorded profile lacks main.hotSeventyFive:\n%s", topLeaves(p))
	}
	if n := samplesWhere(p, func(s *profile.Sample) bool { return !pidIs(w.Process.Pid)(s) }); n != 0 {
		t.Errorf("--pid recorded %d samples of other processes", n)
	}
}

// The daemon serves within a second of starting, and a SIGTERM stops it
// cleanly with exit code 0.
func TestStartupAndShutdown(t *testing.T) {
	bin := filepath.Join(artifacts(t), "cgscope")
	addr := freeAddr(t)
	start := time.Now()
	cmd := exec.Command(bin, "--web.listen-address="+addr)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var ready time.Duration
	for time.Since(start) < 10*time.Second {
		if resp, err := http.Get("http://" + addr + "/healthz"); err == nil {
			resp.Body.Close()
			ready = time.Since(start)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if ready == 0 {
		t.Fatalf("not ready after 10 s:\n%s", stderr.String())
	}
	t.Logf("ready in %s", ready)
	body, status := httpGet(t, "http://"+addr+"/")
	if status != 200 || !strings.Contains(string(body), "/debug/pprof/profile") || !strings.Contains(string(body), "/metrics") {
		t.Errorf("index page: %d %s", status, body)
	}
	cmd.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("exit after SIGINT: %v\n%s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("did not stop within 10 s of SIGINT")
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// /metrics reports the agent's own work, with the kernel's bpf_stats.
func TestSelfMetrics(t *testing.T) {
	d := sharedCgscope(t)
	workload(t, filepath.Join(artifacts(t), "gosplit"))
	d.capture(t, "seconds=1") // forces a drain and symbolization
	body, status := httpGet(t, d.url("/metrics"))
	if status != 200 {
		t.Fatalf("/metrics: %d", status)
	}
	values := parseMetrics(t, string(body))
	for _, positive := range []string{
		`cgscope_samples_total`,
		`cgscope_bpf_program_runs_total{program="sample_cpu"}`,
		`cgscope_bpf_program_run_seconds_total{program="sample_cpu"}`,
		`cgscope_symbolizer_frames_total{result="hit"}`,
		`cgscope_profile_drains_total`,
		`cgscope_symbolizer_cached_objects`,
	} {
		if values[positive] <= 0 {
			t.Errorf("%s = %v, want > 0", positive, values[positive])
		}
	}
	for _, reason := range []string{"counts_map_full", "stacks_map_full", "stack_hash_collision", "process_events_full"} {
		key := `cgscope_samples_dropped_total{reason="` + reason + `"}`
		if _, ok := values[key]; !ok {
			t.Errorf("missing %s", key)
		}
	}
}

// parseMetrics maps "name{labels}" to value for the text exposition format.
func parseMetrics(t *testing.T, text string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, line := range strings.Split(text, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad metrics line %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

// leastCaps is the documented capability set (README, Privileges), as
// setpriv takes it: "+bpf,+perfmon,...".
var leastCaps = "+" + strings.ToLower(strings.Join(profiler.LeastCapabilities, ",+"))

// As an unprivileged user holding only the documented capabilities,
// cgscope profiles with symbols and runs every collector.
func TestLeastPrivilege(t *testing.T) {
	dir := artifacts(t)
	addr := freeAddr(t)
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"--inh-caps=-all,"+leastCaps, "--ambient-caps=-all,"+leastCaps, "--bounding-set=-all,"+leastCaps,
		filepath.Join(dir, "cgscope"), "--web.listen-address="+addr, "--profiling.frequency=199")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemon{cmd: cmd, addr: addr, stderr: &stderr}
	defer d.stop()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if resp, err := http.Get(d.url("/healthz")); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not serving with the documented capabilities:\n%s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	w := workload(t, filepath.Join(dir, "gosplit"))
	time.Sleep(200 * time.Millisecond)
	p := d.capture(t, "seconds=2&pid="+itoa(w.Process.Pid))
	if n := samplesWhere(p, func(s *profile.Sample) bool { return leafName(s) == "main.hotSeventyFive" }); n == 0 {
		t.Errorf("a root process's frames are not named with the documented capabilities:\n%s", topLeaves(p))
	}
	body, _ := httpGet(t, d.url("/metrics"))
	values := parseMetrics(t, string(body))
	for _, c := range []string{"sched", "faults", "oom", "network", "tcp"} {
		if values[`cgscope_collector_enabled{collector="`+c+`"}`] != 1 {
			t.Errorf("collector %s not running with the documented capabilities", c)
		}
	}
	if strings.Contains(stderr.String(), "level=ERROR") {
		t.Errorf("errors logged:\n%s", stderr.String())
	}
}
