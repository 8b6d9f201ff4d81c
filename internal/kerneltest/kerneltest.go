// Package kerneltest helps tests that run on the real kernel: it checks for
// root, keeps the kernel's BPF statistics on, gives a test a cgroup2
// directory of its own and runs workloads inside it. The test binary
// doubles as the workload: a package's TestMain calls Main, and a
// re-executed binary with CGSCOPE_WORKLOAD set runs that workload instead of
// the tests, started directly inside the cgroup (CLONE_INTO_CGROUP). Only
// test binaries import it.
package kerneltest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cgscope/cgscope/cgroup"
	"github.com/cgscope/cgscope/internal/bpfstats"
)

// EnvWorkload names the workload a re-executed test binary runs: its value
// is the workload and its arguments, separated by spaces.
const EnvWorkload = "CGSCOPE_WORKLOAD"

// A workload runs on the process's main thread (the thread group leader):
// locking the main goroutine in an init function keeps it there, so what a
// workload does (exec, exit) is the leader's doing.
func init() {
	if os.Getenv(EnvWorkload) != "" {
		runtime.LockOSThread()
	}
}

// Main is a TestMain: it runs the workload CGSCOPE_WORKLOAD names, if any,
// else the tests.
func Main(m *testing.M) {
	if w := os.Getenv(EnvWorkload); w != "" {
		os.Exit(runWorkload(strings.Fields(w)))
	}
	os.Exit(m.Run())
}

// WithBPFStats skips the benchmark without root, and keeps the kernel's BPF
// run-time statistics on while it runs.
func WithBPFStats(b testing.TB) {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Skip("SKIPPED: not root; the benchmark loads eBPF")
	}
	stats, err := bpfstats.Enable()
	if err != nil && !bpfstats.Enabled() {
		b.Fatal(err)
	}
	if stats != nil {
		b.Cleanup(func() { stats.Close() })
	}
}

// RequireRoot skips a test that loads eBPF or creates cgroups when not
// root, and fails it in CI, which must run as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI must run the tests as root")
		}
		t.Skip("SKIPPED: not root; loading eBPF needs CAP_BPF and CAP_PERFMON")
	}
}

func runWorkload(args []string) int {
	if os.Getenv("CGSCOPE_WORKLOAD_HOLD") != "" {
		// Started before what observes it: say so, then wait to be let go.
		// Images it execs do not wait again.
		os.Unsetenv("CGSCOPE_WORKLOAD_HOLD")
		fmt.Println("ready")
		bufio.NewReader(os.Stdin).ReadString('\n')
	}
	if v1 := os.Getenv("CGSCOPE_JOIN_V1"); v1 != "" {
		if err := os.WriteFile(filepath.Join(v1, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	switch args[0] {
	case "burn": // burn THREADS DURATION: prints the process's summed run-queue wait (ns)
		threads, _ := strconv.Atoi(args[1])
		d, _ := time.ParseDuration(args[2])
		waits := make(chan uint64)
		release := make(chan struct{})
		for i := 0; i < threads; i++ {
			go func() {
				runtime.LockOSThread()
				deadline := time.Now().Add(d)
				x := 0
				for time.Now().Before(deadline) {
					for j := 0; j < 100000; j++ {
						x += j
					}
				}
				waits <- 0
				<-release // stay alive until every thread's delay was read
			}()
		}
		for i := 0; i < threads; i++ {
			<-waits
		}
		fmt.Println(processRunDelay())
		close(release)
	case "burnexec": // burnexec DURATION: burn, let a thread exit, burn, then exec "burn 1 DURATION"
		d, _ := time.ParseDuration(args[1])
		spin(d)
		done := make(chan struct{})
		go func() {
			runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
			spin(d / 2)
			close(done)
		}()
		<-done
		spin(d)
		self, err := os.Executable()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		env := []string{EnvWorkload + "=burn 1 " + args[1]}
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, EnvWorkload+"=") {
				env = append(env, kv)
			}
		}
		err = syscall.Exec(self, []string{self}, env)
		fmt.Fprintln(os.Stderr, "exec:", err)
		return 1
	case "touch": // touch MiB: fault in fresh anonymous memory page by page
		mib, _ := strconv.Atoi(args[1])
		mem, err := syscall.Mmap(-1, 0, mib<<20, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		for i := 0; i < len(mem); i += os.Getpagesize() {
			mem[i] = 1
		}
	case "serve": // serve ADDR: accept one connection, read it to EOF, print bytes
		l, err := net.Listen("tcp", args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println("listening")
		c, err := l.Accept()
		if err != nil {
			return 1
		}
		n, _ := io.Copy(io.Discard, c)
		c.Close()
		l.Close()
		fmt.Println(n)
	case "send": // send ADDR MIB: connect, write MIB, close
		mib, _ := strconv.Atoi(args[2])
		c, err := net.Dial("tcp", args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		buf := make([]byte, 1<<20)
		for i := 0; i < mib; i++ {
			if _, err := c.Write(buf); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
		c.Close()
	case "dial": // dial ADDR: one connect attempt, expected to fail
		c, err := net.DialTimeout("tcp", args[1], 5*time.Second)
		if err == nil {
			c.Close()
			return 1
		}
	case "hold": // hold ADDR N DURATION: keep N connections open for a while
		n, _ := strconv.Atoi(args[2])
		d, _ := time.ParseDuration(args[3])
		var conns []net.Conn
		for i := 0; i < n; i++ {
			c, err := net.Dial("tcp", args[1])
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			conns = append(conns, c)
		}
		fmt.Println("connected")
		time.Sleep(d)
		for _, c := range conns {
			c.Close()
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown workload", args)
		return 2
	}
	return 0
}

// spin keeps the calling thread busy for d.
func spin(d time.Duration) {
	x := 0
	for deadline := time.Now().Add(d); time.Now().Before(deadline); {
		for j := 0; j < 100000; j++ {
			x += j
		}
	}
}

// processRunDelay sums the time every thread of this process spent waiting
// on a run queue: the second field of /proc/self/task/*/schedstat (ns).
func processRunDelay() uint64 {
	files, _ := filepath.Glob("/proc/self/task/*/schedstat")
	var total uint64
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if fields := strings.Fields(string(data)); len(fields) >= 2 {
			v, _ := strconv.ParseUint(fields[1], 10, 64)
			total += v
		}
	}
	return total
}

// Cgroup is a cgroup2 directory created for one test.
type Cgroup struct {
	Rel, Abs string // path below the cgroup2 root, and absolute
	ID       uint64 // cgroup2 id, as BPF reports it
}

// NewCgroup creates a cgroup under the cgroup2 root and removes it when the test
// ends (after moving any straggler out).
func NewCgroup(t *testing.T, name string) *Cgroup {
	t.Helper()
	root, err := cgroup.V2Mount()
	if err != nil {
		t.Fatal(err)
	}
	rel := fmt.Sprintf("/cgscope-test-%s-%d", name, os.Getpid())
	abs := filepath.Join(root, rel)
	if err := os.Mkdir(abs, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { RemoveCgroupDir(t, abs, filepath.Join(root, "cgroup.procs")) })
	var st syscall.Stat_t
	if err := syscall.Stat(abs, &st); err != nil {
		t.Fatal(err)
	}
	return &Cgroup{Rel: rel, Abs: abs, ID: st.Ino}
}

// RemoveCgroupDir removes a cgroup directory, moving the processes left in
// it to the cgroup.procs file parentProcs first.
func RemoveCgroupDir(t *testing.T, abs, parentProcs string) {
	if procs, err := os.ReadFile(filepath.Join(abs, "cgroup.procs")); err == nil {
		for _, pid := range strings.Fields(string(procs)) {
			os.WriteFile(parentProcs, []byte(pid), 0)
		}
	}
	for i := 0; i < 50; i++ {
		if err := os.Remove(abs); err == nil || os.IsNotExist(err) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("could not remove cgroup %s", abs)
}

// Command prepares the test binary as a workload that starts inside the
// cgroup (clone3 with CLONE_INTO_CGROUP), so none of its work is counted
// elsewhere. prefix is prepended (e.g. "ip netns exec X").
func (cg *Cgroup) Command(t *testing.T, prefix []string, workload ...string) *exec.Cmd {
	t.Helper()
	dir, err := os.Open(cg.Abs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dir.Close() })
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	argv := append(append([]string(nil), prefix...), self)
	cmd := exec.Command(argv[0], argv[1:]...)
	// GOMAXPROCS above the thread count: every busy thread is runnable in
	// the kernel, not parked by the Go scheduler.
	cmd.Env = append(os.Environ(), EnvWorkload+"="+strings.Join(workload, " "), "GOMAXPROCS=16")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	return cmd
}

// Run runs a workload in the cgroup to completion.
func (cg *Cgroup) Run(t *testing.T, workload ...string) string {
	t.Helper()
	out, err := cg.Command(t, nil, workload...).Output()
	if err != nil {
		t.Fatalf("workload %v: %v", workload, err)
	}
	return string(out)
}

// CPUStatUsage reads usage_usec from the cgroup's cpu.stat (cgroup2 keeps
// it for every cgroup, with or without the cpu controller).
func (cg *Cgroup) CPUStatUsage(t *testing.T) float64 {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(cg.Abs, "cpu.stat"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
			us, _ := strconv.ParseFloat(v, 64)
			return us / 1e6
		}
	}
	t.Fatal("no usage_usec in cpu.stat")
	return 0
}
