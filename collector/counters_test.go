package collector

import (
	"bufio"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/cgscope/cgscope/bpf"
	"github.com/cgscope/cgscope/cgroup"
	"github.com/cgscope/cgscope/internal/kerneltest"
	"github.com/cgscope/cgscope/internal/kerneltest/held"
)

var (
	countersOnce sync.Once
	counters     *Counters
	countersErr  error
)

// sharedCounters attaches every collector once for all tests of this file.
func sharedCounters(t *testing.T) *Counters {
	t.Helper()
	kerneltest.RequireRoot(t)
	countersOnce.Do(func() {
		root, err := cgroup.V2Mount()
		if err != nil {
			countersErr = err
			return
		}
		all := map[string]bool{}
		for _, c := range bpfCollectors() {
			all[c] = true
		}
		counters, countersErr = NewCounters(CountersConfig{
			MaxCgroups: 4096, MaxTasks: 65536, MaxSockets: 65536, Collectors: all, CgroupRoot: root,
		})
	})
	if countersErr != nil {
		t.Fatal(countersErr)
	}
	for _, st := range counters.Collectors() {
		if !st.Enabled {
			t.Fatalf("collector %s not running on this kernel: %s", st.Name, st.Reason)
		}
	}
	return counters
}

func usageOf(t *testing.T, c *Counters, cg *kerneltest.Cgroup) *Usage {
	t.Helper()
	all, err := c.Read()
	if err != nil {
		t.Fatal(err)
	}
	if u := all[cg.ID]; u != nil {
		return u
	}
	return &Usage{}
}

// settledUsageOf returns the counters of a cgroup whose threads all
// ended, once the kernel has freed them: a thread that no collection saw
// is charged then, a grace period after it was reaped.
func settledUsageOf(t *testing.T, c *Counters, cg *kerneltest.Cgroup) *Usage {
	t.Helper()
	prev := usageOf(t, c, cg)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		u := usageOf(t, c, cg)
		if reflect.DeepEqual(u, prev) {
			return u
		}
		prev = u
	}
	t.Fatalf("the counters of %s still change 5 s after its threads ended", cg.Rel)
	return nil
}

func within(got, want, frac float64) bool { return math.Abs(got-want) <= frac*want }

// CPU time from the threads' figures matches the kernel's own cpu.stat
// usage_usec.
func TestCounterCPUTime(t *testing.T) {
	c := sharedCounters(t)
	cg := kerneltest.NewCgroup(t, "cpu")
	cg.Run(t, "burn", "1", "2s")
	got := settledUsageOf(t, c, cg).CPUSeconds
	want := cg.CPUStatUsage(t)
	t.Logf("BPF %.3f s, cpu.stat %.3f s", got, want)
	if !within(got, want, 0.05) {
		t.Errorf("cpu seconds %.3f, want %.3f ± 5%%", got, want)
	}
}

// Four busy threads on two CPUs wait in the run queue; the sum matches
// what the threads' own schedstat says they waited.
func TestCounterRunQueueWait(t *testing.T) {
	c := sharedCounters(t)
	cg := kerneltest.NewCgroup(t, "runq")
	out := cg.Run(t, "burn", "4", "3s")
	waitNs, err := strconv.ParseFloat(strings.TrimSpace(out), 64)
	if err != nil {
		t.Fatalf("workload output %q", out)
	}
	u := settledUsageOf(t, c, cg)
	want := waitNs / 1e9
	t.Logf("BPF wait %.3f s, schedstat %.3f s; switches vol %d invol %d",
		u.RunqWaitSeconds, want, u.SwitchesVoluntary, u.SwitchesInvoluntary)
	// The workload read its schedstat just before it ended: its last
	// moments come on top.
	if u.RunqWaitSeconds < want || u.RunqWaitSeconds > want*1.05+0.01 {
		t.Errorf("run-queue wait %.3f s, want %.3f s .. +5%%", u.RunqWaitSeconds, want)
	}
	if u.SwitchesInvoluntary == 0 {
		t.Errorf("no involuntary switches counted for 4 busy threads on %d CPUs", runtime.NumCPU())
	}
}

// The thread figures of a process that is still there lie between what
// its threads' /proc files said just before and just after the counters
// were read: exactly the kernel's figures, summed.
func TestCounterThreadFiguresMatchProc(t *testing.T) {
	c := sharedCounters(t)
	cg := kerneltest.NewCgroup(t, "procfigures")
	w := startHeld(t, cg, "mix", "50000", "64", "300ms")
	w.WaitFor(t, "ready")
	before := threadFigures(t, w.Pid())
	u := usageOf(t, c, cg)
	after := threadFigures(t, w.Pid())
	w.Finish(t)
	got := procFigures{
		cpuNs: uint64(math.Round(u.CPUSeconds * 1e9)), runqNs: uint64(math.Round(u.RunqWaitSeconds * 1e9)),
		voluntary: u.SwitchesVoluntary, involuntary: u.SwitchesInvoluntary,
		minor: u.PageFaultsMinor, major: u.PageFaultsMajor,
	}
	t.Logf("before %+v\ncounted %+v\nafter  %+v", before, got, after)
	if before.voluntary < 50000 || before.minor < 16384 || before.involuntary == 0 {
		t.Fatalf("the workload did not do its work: %+v", before)
	}
	for _, f := range []struct {
		name               string
		before, got, after uint64
		roundingSlack      uint64
	}{
		{"cpu ns", before.cpuNs, got.cpuNs, after.cpuNs, 1000},
		{"run-queue wait ns", before.runqNs, got.runqNs, after.runqNs, 1000},
		{"voluntary switches", before.voluntary, got.voluntary, after.voluntary, 0},
		{"involuntary switches", before.involuntary, got.involuntary, after.involuntary, 0},
		{"minor faults", before.minor, got.minor, after.minor, 0},
		{"major faults", before.major, got.major, after.major, 0},
	} {
		if f.got+f.roundingSlack < f.before || f.got > f.after+f.roundingSlack {
			t.Errorf("%s: counted %d, /proc said %d before and %d after", f.name, f.got, f.before, f.after)
		}
	}
}

// procFigures are a process's figures summed over its threads' /proc files.
type procFigures struct {
	cpuNs, runqNs          uint64 // schedstat
	switchIns              uint64 // schedstat: times switched in
	voluntary, involuntary uint64 // status
	minor, major           uint64 // stat
}

func threadFigures(t *testing.T, pid int) procFigures {
	t.Helper()
	dirs, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
	if err != nil || len(dirs) == 0 {
		t.Fatalf("threads of %d: %v", pid, err)
	}
	var f procFigures
	for _, dir := range dirs {
		sched := strings.Fields(readProc(t, dir, "schedstat"))
		f.cpuNs += parseU(t, sched[0])
		f.runqNs += parseU(t, sched[1])
		f.switchIns += parseU(t, sched[2])
		for _, line := range strings.Split(readProc(t, dir, "status"), "\n") {
			if v, ok := strings.CutPrefix(line, "voluntary_ctxt_switches:"); ok {
				f.voluntary += parseU(t, strings.TrimSpace(v))
			} else if v, ok := strings.CutPrefix(line, "nonvoluntary_ctxt_switches:"); ok {
				f.involuntary += parseU(t, strings.TrimSpace(v))
			}
		}
		// stat: fields after the command, which is in parentheses.
		stat := readProc(t, dir, "stat")
		rest := strings.Fields(stat[strings.LastIndexByte(stat, ')')+2:])
		f.minor += parseU(t, rest[7]) // field 10: minflt
		f.major += parseU(t, rest[9]) // field 12: majflt
	}
	return f
}

func readProc(t *testing.T, dir, file string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func parseU(t *testing.T, s string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// startHeld starts a workload of main_test.go in a cgroup: it says
// "ready" when its work is done and ends when its stdin does.
func startHeld(t *testing.T, cg *kerneltest.Cgroup, workload ...string) *held.Process {
	t.Helper()
	return held.Start(t, cg.Command(t, nil, workload...))
}

// 64 MiB over loopback TCP from cgroup A to cgroup B.
func TestCounterNetworkAndTCP(t *testing.T) {
	c := sharedCounters(t)
	a, b := kerneltest.NewCgroup(t, "net-a"), kerneltest.NewCgroup(t, "net-b")
	addr := freeLoopbackAddr(t)

	server := b.Command(t, nil, "serve", addr)
	stdout, err := server.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() || lines.Text() != "listening" {
		t.Fatalf("server did not start: %q", lines.Text())
	}
	a.Run(t, "send", addr, "64")
	lines.Scan()
	server.Wait()
	if lines.Text() != strconv.Itoa(64<<20) {
		t.Fatalf("server received %s bytes", lines.Text())
	}

	ua, ub := usageOf(t, c, a), usageOf(t, c, b)
	const mib64 = 64 << 20
	t.Logf("A tx %d bytes %d packets, B rx %d bytes %d packets", ua.TxBytes, ua.TxPackets, ub.RxBytes, ub.RxPackets)
	if ua.TxBytes < mib64 || ua.TxBytes > mib64*11/10 {
		t.Errorf("A transmit bytes %d, want 64 MiB .. +10%%", ua.TxBytes)
	}
	if ub.RxBytes < mib64 || ub.RxBytes > mib64*11/10 {
		t.Errorf("B receive bytes %d, want 64 MiB .. +10%%", ub.RxBytes)
	}
	if ua.TxPackets == 0 || ub.RxPackets == 0 {
		t.Errorf("packets: A tx %d, B rx %d", ua.TxPackets, ub.RxPackets)
	}
	if ua.TCPOpenedOutbound != 1 || ua.TCPOpenedInbound != 0 {
		t.Errorf("A opened outbound %d inbound %d, want 1 and 0", ua.TCPOpenedOutbound, ua.TCPOpenedInbound)
	}
	if ub.TCPOpenedInbound != 1 || ub.TCPOpenedOutbound != 0 {
		t.Errorf("B opened inbound %d outbound %d, want 1 and 0", ub.TCPOpenedInbound, ub.TCPOpenedOutbound)
	}
}

// A connect to a closed port counts exactly one failure.
func TestCounterConnectFailure(t *testing.T) {
	c := sharedCounters(t)
	cg := kerneltest.NewCgroup(t, "connfail")
	cg.Run(t, "dial", freeLoopbackAddr(t)) // nothing listens there
	if got := usageOf(t, c, cg).TCPConnectFailures; got != 1 {
		t.Errorf("connect failures %d, want 1", got)
	}
}

// Active connections rise while connections are open and fall back to 0.
func TestCounterActiveConnections(t *testing.T) {
	c := sharedCounters(t)
	cg := kerneltest.NewCgroup(t, "active")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() { buf := make([]byte, 1); conn.Read(buf); conn.Close() }()
		}
	}()
	client := cg.Command(t, nil, "hold", l.Addr().String(), "5", "2s")
	stdout, _ := client.StdoutPipe()
	if err := client.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	lines.Scan()
	during := usageOf(t, c, cg).TCPActive
	client.Wait()
	time.Sleep(200 * time.Millisecond) // FIN handshake
	after := usageOf(t, c, cg)
	t.Logf("active: %d while open, %d after; closed %d", during, after.TCPActive, after.TCPClosed)
	if during != 5 {
		t.Errorf("active while holding 5 connections: %d", during)
	}
	if after.TCPActive != 0 || after.TCPClosed != 5 {
		t.Errorf("after closing: active %d closed %d, want 0 and 5", after.TCPActive, after.TCPClosed)
	}
}

// Touching 256 MiB of fresh memory faults every page in: the threads'
// figures count the faults, and agree with memory.stat where a memory
// controller covers the cgroup (cgroup2's, or on hybrid hosts a v1 memory
// cgroup at the same path, which the workload joins), as the file reader
// reads it.
func TestCounterPageFaults(t *testing.T) {
	c := sharedCounters(t)
	cg := kerneltest.NewCgroup(t, "faults")
	cmd := cg.Command(t, nil, "touch", "256")
	cmd.Env = append(cmd.Env, memoryController(t, cg)...)
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	u := settledUsageOf(t, c, cg)
	counted := float64(u.PageFaultsMinor + u.PageFaultsMajor)
	r, err := cgroup.NewFileReader()
	if err != nil {
		t.Fatal(err)
	}
	st, err := r.Read(cg.Rel)
	if err != nil {
		t.Fatal(err)
	}
	if !st.PageFaultsMinor.Known || !st.PageFaultsMajor.Known {
		t.Fatalf("memory.stat of %s not read: %+v", cg.Rel, st)
	}
	files := st.PageFaultsMinor.V + st.PageFaultsMajor.V
	t.Logf("threads' figures: %d minor %d major; memory.stat: %.0f minor %.0f major",
		u.PageFaultsMinor, u.PageFaultsMajor, st.PageFaultsMinor.V, st.PageFaultsMajor.V)
	if counted < 65536 {
		t.Errorf("%.0f faults counted for 65536 pages touched", counted)
	}
	// The workload joins a v1 memory cgroup only once it runs: the faults
	// of its start are charged elsewhere.
	if !within(counted, files, 0.02) {
		t.Errorf("%.0f faults counted, memory.stat says %.0f: want within 2%%", counted, files)
	}
}

// memoryController puts a memory controller over the cgroup: cgroup2's
// when it is enabled there, else (hybrid hosts) a v1 memory cgroup of the
// same path, which the workload joins first: it returns the environment
// that makes it.
func memoryController(t *testing.T, cg *kerneltest.Cgroup) (env []string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(cg.Abs, "memory.stat")); err == nil {
		return nil
	}
	v1 := filepath.Join("/sys/fs/cgroup/memory", cg.Rel)
	if err := os.Mkdir(v1, 0o755); err != nil {
		t.Fatalf("neither cgroup2's memory controller nor a v1 memory hierarchy: %v", err)
	}
	t.Cleanup(func() { kerneltest.RemoveCgroupDir(t, v1, "/sys/fs/cgroup/memory/cgroup.procs") })
	return []string{"CGSCOPE_JOIN_V1=" + v1}
}

// A process over its cgroup's memory limit is OOM-killed, counted once.
func TestCounterOOMKill(t *testing.T) {
	c := sharedCounters(t)
	cg := kerneltest.NewCgroup(t, "oom")
	joinV1 := limitMemory(t, cg, 64<<20)
	cmd := cg.Command(t, nil, "touch", "512")
	cmd.Env = append(cmd.Env, joinV1...)
	cmd.Stderr = nil
	err := cmd.Run()
	if err == nil {
		t.Fatal("512 MiB fit in a 64 MiB limit: no OOM")
	}
	time.Sleep(100 * time.Millisecond)
	if got := usageOf(t, c, cg).OOMKills; got != 1 {
		t.Errorf("OOM kills %d, want 1 (workload ended with %v)", got, err)
	}
}

// limitMemory caps the cgroup's memory: with cgroup2's memory controller when
// it is enabled, else (hybrid hosts) in a v1 memory cgroup of the same name
// that the workload joins first: it returns the environment that makes it.
func limitMemory(t *testing.T, cg *kerneltest.Cgroup, bytes int64) (env []string) {
	t.Helper()
	env = memoryController(t, cg)
	files := map[string]string{"memory.max": strconv.FormatInt(bytes, 10), "memory.swap.max": "0"}
	dir := cg.Abs
	if env != nil {
		files = map[string]string{"memory.limit_in_bytes": strconv.FormatInt(bytes, 10), "memory.swappiness": "0"}
		dir = filepath.Join("/sys/fs/cgroup/memory", cg.Rel)
	}
	for file, v := range files {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(v), 0); err != nil && file != "memory.swap.max" {
			t.Fatalf("%s: %v", file, err)
		}
	}
	return env
}

// Retransmits are induced on a veth pair between two network namespaces
// with a netem qdisc that drops packets, and counted for the sender.
func TestCounterRetransmits(t *testing.T) {
	c := sharedCounters(t)
	cg := kerneltest.NewCgroup(t, "retrans")
	ns := setupLossyNetns(t)
	server := exec.Command("ip", "netns", "exec", ns.server, os.Args[0])
	server.Env = append(os.Environ(), kerneltest.EnvWorkload+"=serve "+ns.serverAddr)
	stdout, _ := server.StdoutPipe()
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	defer server.Process.Kill()
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() {
		t.Fatal("server did not start")
	}
	sender := cg.Command(t, []string{"ip", "netns", "exec", ns.client}, "send", ns.serverAddr, "4")
	if err := sender.Run(); err != nil {
		t.Fatal(err)
	}
	server.Wait()
	if got := usageOf(t, c, cg).TCPRetransmits; got == 0 {
		t.Errorf("no retransmits counted for the sender through a 10%% lossy link")
	} else {
		t.Logf("%d retransmits", got)
	}
}

type lossyNetns struct{ client, server, serverAddr string }

func setupLossyNetns(t *testing.T) lossyNetns {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatal("iproute2 (ip, tc) is needed; make test installs it")
	}
	id := os.Getpid() % 10000
	ns := lossyNetns{client: fmt.Sprintf("cgs-c-%d", id), server: fmt.Sprintf("cgs-s-%d", id), serverAddr: "10.251.0.2:5001"}
	vc, vs := fmt.Sprintf("cgsc%d", id), fmt.Sprintf("cgss%d", id)
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", ns.client).Run()
		exec.Command("ip", "netns", "del", ns.server).Run()
	})
	for _, args := range [][]string{
		{"netns", "add", ns.client},
		{"netns", "add", ns.server},
		{"link", "add", vc, "netns", ns.client, "type", "veth", "peer", "name", vs, "netns", ns.server},
		{"-n", ns.client, "addr", "add", "10.251.0.1/24", "dev", vc},
		{"-n", ns.server, "addr", "add", "10.251.0.2/24", "dev", vs},
		{"-n", ns.client, "link", "set", vc, "up"},
		{"-n", ns.server, "link", "set", vs, "up"},
		{"-n", ns.client, "link", "set", "lo", "up"},
		{"-n", ns.server, "link", "set", "lo", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	dropRandomly(t, ns.server, vs)
	return ns
}

// dropRandomly attaches an XDP program that drops 10% of the packets
// arriving on iface in network namespace netns (netem is not available on
// every kernel; XDP is wherever BPF is).
func dropRandomly(t *testing.T, netns, iface string) {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.XDP,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.FnGetPrandomU32.Call(),
			asm.JLT.Imm(asm.R0, math.MaxUint32/10, "drop"),
			asm.Mov.Imm(asm.R0, 2), // XDP_PASS
			asm.Return(),
			asm.Mov.Imm(asm.R0, 1).WithSymbol("drop"), // XDP_DROP
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })

	// Attach from inside the namespace: interface indexes are per namespace.
	errc := make(chan error)
	go func() {
		runtime.LockOSThread() // the thread is discarded, never unlocked
		target, err := os.Open("/var/run/netns/" + netns)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		ifc, err := net.InterfaceByName(iface)
		if err != nil {
			errc <- err
			return
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifc.Index})
		if err == nil {
			t.Cleanup(func() { l.Close() })
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("attaching the packet-dropping XDP program: %v", err)
	}
}

func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// A collector whose attach point the kernel lacks is disabled with its
// reason, collectors sharing its programs with it too, and the others keep
// running; a histogram program the kernel cannot load costs the histogram
// only.
func TestCounterCollectorDegrades(t *testing.T) {
	kerneltest.RequireRoot(t)
	root, err := cgroup.V2Mount()
	if err != nil {
		t.Fatal(err)
	}
	load := func(t *testing.T, breakIt func(*ebpf.CollectionSpec), collectors map[string]bool) *Counters {
		spec, err := bpf.LoadCgroupStats()
		if err != nil {
			t.Fatal(err)
		}
		breakIt(spec)
		c, err := newCounters(CountersConfig{
			MaxCgroups: 64, MaxTasks: 1024, MaxSockets: 64, CgroupRoot: root, Collectors: collectors,
		}, spec)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	statuses := func(c *Counters) map[string]Status {
		got := map[string]Status{}
		for _, st := range c.Collectors() {
			got[st.Name] = st
		}
		return got
	}

	t.Run("thread figures", func(t *testing.T) {
		// A tracepoint this kernel does not have, as on an older kernel.
		c := load(t, func(spec *ebpf.CollectionSpec) {
			spec.Programs[bpf.CgroupStatsProgTaskExit].AttachTo = "no_such_tracepoint"
		},
			map[string]bool{Sched: true, Faults: true, OOM: true, TCP: false})
		got := statuses(c)
		for _, name := range []string{Sched, Faults} {
			if st := got[name]; st.Enabled || !strings.Contains(st.Reason, "no_such_tracepoint") {
				t.Errorf("%s: %+v, want disabled naming the missing tracepoint", name, st)
			}
		}
		if st := got[OOM]; !st.Enabled {
			t.Errorf("oom stopped with sched: %+v", st)
		}
		if st := got[TCP]; st.Enabled || st.Reason != disabledByFlag {
			t.Errorf("tcp: %+v, want disabled by flag", st)
		}
		if c.SwitchPrograms() != nil {
			t.Error("the histogram's program is offered without its collector")
		}
	})

	t.Run("histogram", func(t *testing.T) {
		c := load(t, func(spec *ebpf.CollectionSpec) {
			spec.Programs[bpf.CgroupStatsProgRunqLatency].AttachTo = "no_such_tracepoint"
		},
			map[string]bool{Sched: true})
		if st := statuses(c)[Sched]; !st.Enabled {
			t.Fatalf("sched stopped with its histogram: %+v", st)
		}
		if c.SwitchPrograms() != nil {
			t.Error("a histogram program that did not load is offered to the duty-cycle controller")
		}
		// Counters start at 0 when they load: run a while, to be counted.
		for end := time.Now().Add(100 * time.Millisecond); time.Now().Before(end); {
		}
		usage, err := c.Read()
		if err != nil {
			t.Fatal(err)
		}
		var cpu float64
		for _, u := range usage {
			cpu += u.CPUSeconds
			if u.RunqSampled {
				t.Fatal("usage claims a sampled histogram")
			}
		}
		if cpu == 0 {
			t.Error("sched collector counted no CPU time")
		}
	})
}

// bpfCollectors names every BPF collector of the table.
func bpfCollectors() []string {
	var names []string
	for _, c := range Table {
		if c.Source == BPF {
			names = append(names, c.Name)
		}
	}
	return names
}

// Counters start near 0 whenever cgscope starts: a thread that was busy
// before is charged only what it does after the first collection, so a
// restart does not put its whole life into rate(); a process that begins
// after the counters is charged whole, though no collection saw it before
// it ended.
func TestCountersStartNearZero(t *testing.T) {
	kerneltest.RequireRoot(t)
	old := kerneltest.NewCgroup(t, "baseline-old")
	w := startHeld(t, old, "steps")
	w.WaitFor(t, "ready")
	w.Step(t, "spin 1s")
	before := old.CPUStatUsage(t)

	c, err := NewCounters(CountersConfig{MaxCgroups: 4096, MaxTasks: 65536, MaxSockets: 64,
		Collectors: map[string]bool{Sched: true, Faults: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	first := usageOf(t, c, old)
	w.Step(t, "spin 300ms")
	later := usageOf(t, c, old)
	w.Finish(t)
	ended := settledUsageOf(t, c, old)
	t.Logf("old process: %.3f s before the counters; counted %.3f s at first, %.3f s after 300 ms more, %.3f s after it ended",
		before, first.CPUSeconds, later.CPUSeconds, ended.CPUSeconds)
	if before < 0.9 {
		t.Fatalf("the workload had %.3f s of CPU before the counters began, want 1 s", before)
	}
	if first.CPUSeconds > 0.05 {
		t.Errorf("first value %.3f s: the threads' %.3f s from before the counters began were charged", first.CPUSeconds, before)
	}
	if d := later.CPUSeconds - first.CPUSeconds; d < 0.29 || d > 0.4 {
		t.Errorf("300 ms spun after the counters began counted as %.3f s", d)
	}
	if ended.CPUSeconds > later.CPUSeconds+0.05 {
		t.Errorf("the process's end charged %.3f s more: its life before the counters", ended.CPUSeconds-later.CPUSeconds)
	}

	born := kerneltest.NewCgroup(t, "baseline-new")
	born.Run(t, "burn", "2", "300ms")
	got, want := settledUsageOf(t, c, born).CPUSeconds, born.CPUStatUsage(t)
	t.Logf("new process: counted %.3f s, cpu.stat %.3f s", got, want)
	if !within(got, want, 0.05) {
		t.Errorf("a process born after the counters began: %.3f s counted, cpu.stat %.3f s", got, want)
	}
}
