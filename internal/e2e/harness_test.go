// Package e2e holds cgscope's end-to-end tests: they build the real binary,
// run it as root against the real kernel, run real workloads, and read what
// it serves. There are no mocks of the kernel here.
package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/pprof/profile"
)

// testFrequency is high enough that a 5 s capture holds thousands of samples,
// so shares can be checked within a few points.
const testFrequency = 499

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

func TestMain(m *testing.M) {
	if sink := os.Getenv("CGSCOPE_PUSH_HELPER_SINK"); sink != "" {
		os.Exit(runPushWorkload(sink))
	}
	if os.Geteuid() != 0 {
		// Loud on purpose: these tests are the point of the suite. CI runs as root.
		fmt.Fprintln(os.Stderr, "e2e: SKIPPING ALL END-TO-END TESTS: not root (eBPF needs CAP_BPF and CAP_PERFMON)")
		if os.Getenv("CI") != "" {
			fmt.Fprintln(os.Stderr, "e2e: CI must run as root")
			os.Exit(1)
		}
		os.Exit(0)
	}
	code := m.Run()
	if sharedDaemon != nil {
		sharedDaemon.stop()
	}
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// artifacts builds the cgscope binary and the workloads once per test run.
func artifacts(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "cgscope-e2e-")
		if buildErr != nil {
			return
		}
		os.Chmod(buildDir, 0o755)
		steps := [][]string{
			{"go", "build", "-o", filepath.Join(buildDir, "cgscope"), "github.com/cgscope/cgscope/cmd/cgscope"},
			{"go", "build", "-o", filepath.Join(buildDir, "gosplit"), "./testdata/gosplit"},
			{"go", "build", "-ldflags=-s -w", "-o", filepath.Join(buildDir, "gosplit-stripped"), "./testdata/gosplit"},
			{"gcc", "-O2", "-fno-omit-frame-pointer", "-fPIE", "-pie", "-rdynamic", "-o", filepath.Join(buildDir, "cwork"), "./testdata/cwork/cwork.c"},
			{"gcc", "-O2", "-fno-omit-frame-pointer", "-fPIE", "-pie", "-rdynamic", "-DVARIANT=3", "-o", filepath.Join(buildDir, "cwork-stripped"), "./testdata/cwork/cwork.c"},
			{"strip", "--strip-all", filepath.Join(buildDir, "cwork-stripped")},
		}
		for _, s := range steps {
			out, err := exec.Command(s[0], s[1:]...).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("%s: %v\n%s", strings.Join(s, " "), err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildDir
}

// daemon is a running `cgscope serve`.
type daemon struct {
	cmd    *exec.Cmd
	addr   string
	stderr *bytes.Buffer
}

var (
	sharedOnce   sync.Once
	sharedDaemon *daemon
)

// sharedCgscope returns one daemon shared by the tests that only read from it.
func sharedCgscope(t *testing.T) *daemon {
	t.Helper()
	sharedOnce.Do(func() {
		sharedDaemon = startCgscope(t, nil, fmt.Sprintf("--profiling.frequency=%d", testFrequency), "--profiling.interval=2s")
	})
	if sharedDaemon == nil {
		t.Fatal("shared daemon failed to start")
	}
	return sharedDaemon
}

// startCgscope starts the daemon on a free loopback port and waits until it
// answers /healthz. With t == nil the daemon outlives the test (shared).
func startCgscope(t *testing.T, cleanup func(func()), args ...string) *daemon {
	dir := artifacts(t)
	addr := freeAddr(t)
	d := &daemon{addr: addr, stderr: &bytes.Buffer{}}
	d.cmd = exec.Command(filepath.Join(dir, "cgscope"), append([]string{"--web.listen-address=" + addr}, args...)...)
	d.cmd.Stderr = &lockedWriter{w: d.stderr}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if cleanup != nil {
		cleanup(d.stop)
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return d
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.stop()
	t.Fatalf("cgscope did not become healthy:\n%s", d.stderr)
	return nil
}

func (d *daemon) stop() {
	if d.cmd.Process != nil {
		d.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { d.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			d.cmd.Process.Kill()
		}
	}
}

func (d *daemon) url(path string) string { return "http://" + d.addr + path }

// capture fetches a profile from /debug/pprof/profile with the given query.
func (d *daemon) capture(t *testing.T, query string) *profile.Profile {
	t.Helper()
	body, status := httpGet(t, d.url("/debug/pprof/profile?"+query))
	if status != 200 {
		t.Fatalf("GET profile?%s: %d %s", query, status, body)
	}
	p, err := profile.ParseData(body)
	if err != nil {
		t.Fatalf("parsing profile: %v", err)
	}
	if err := p.CheckValid(); err != nil {
		t.Fatalf("invalid profile: %v", err)
	}
	return p
}

// metricLines returns the daemon's /metrics lines whose names start with
// prefix, for failure messages that explain themselves.
func (d *daemon) metricLines(t *testing.T, prefix string) string {
	t.Helper()
	body, _ := httpGet(t, d.url("/metrics"))
	var sb strings.Builder
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, prefix) {
			sb.WriteString("  " + l + "\n")
		}
	}
	return sb.String()
}

func httpGet(t *testing.T, url string) ([]byte, int) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return body, resp.StatusCode
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// workload runs a command for the test's lifetime.
func workload(t *testing.T, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(name, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd
}

// cgroup2 creates a cgroup for the test under the cgroup2 mount and removes
// it afterwards. It returns the path relative to the cgroup2 root.
func cgroup2(t *testing.T) (rel, abs string) {
	t.Helper()
	root := "/sys/fs/cgroup/unified"
	if _, err := os.Stat(filepath.Join(root, "cgroup.procs")); err != nil {
		root = "/sys/fs/cgroup"
	}
	rel = fmt.Sprintf("/cgscope-e2e-%d-%d", os.Getpid(), time.Now().UnixNano())
	abs = filepath.Join(root, rel)
	if err := os.Mkdir(abs, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Members must leave before rmdir: move stragglers to the root.
		if procs, err := os.ReadFile(filepath.Join(abs, "cgroup.procs")); err == nil {
			for _, pid := range strings.Fields(string(procs)) {
				os.WriteFile(filepath.Join(root, "cgroup.procs"), []byte(pid), 0)
			}
		}
		for i := 0; i < 50; i++ {
			if err := os.Remove(abs); err == nil || os.IsNotExist(err) {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("could not remove test cgroup %s", abs)
	})
	return rel, abs
}

// startHeld starts cmd, which waits for a line on its stdin before doing
// anything, lets join move it (into its cgroups), then releases it: all it
// does is charged there. It is killed when the test ends.
func startHeld(t *testing.T, cmd *exec.Cmd, join func(pid int)) {
	t.Helper()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	join(cmd.Process.Pid)
	stdin.Write([]byte("go\n"))
}

// workloadIn starts a workload already in the cgroup at abs (clone3 with
// CLONE_INTO_CGROUP), so that all of its CPU time is the cgroup's: one
// moved there after it started ran its start-up elsewhere, which the
// cgroup's cpu.stat does not count and the per-thread figures do.
func workloadIn(t *testing.T, abs, name string, args ...string) *exec.Cmd {
	t.Helper()
	dir, err := os.Open(abs)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd
}

func joinCgroup(t *testing.T, abs string, pid int) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(abs, "cgroup.procs"), []byte(fmt.Sprint(pid)), 0); err != nil {
		t.Fatal(err)
	}
}

// leafName is the function of a sample's innermost frame, "" if unnamed.
func leafName(s *profile.Sample) string {
	if len(s.Location) == 0 || len(s.Location[0].Line) == 0 {
		return ""
	}
	return s.Location[0].Line[0].Function.Name
}

func stackHas(s *profile.Sample, fn string) bool {
	for _, l := range s.Location {
		for _, ln := range l.Line {
			if ln.Function.Name == fn {
				return true
			}
		}
	}
	return false
}

// samplesWhere sums samples/count over samples that satisfy keep.
func samplesWhere(p *profile.Profile, keep func(*profile.Sample) bool) int64 {
	var n int64
	for _, s := range p.Sample {
		if keep(s) {
			n += s.Value[0]
		}
	}
	return n
}

func pidIs(pid int) func(*profile.Sample) bool {
	return func(s *profile.Sample) bool {
		v := s.NumLabel["pid"]
		return len(v) == 1 && v[0] == int64(pid)
	}
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
