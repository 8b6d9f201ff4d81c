package collector

import (
	"bufio"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
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

func within(got, want, frac float64) bool { return math.Abs(got-want) <= frac*want }

// CPU time from sched_switch matches the kernel's own cpu.stat usage_usec.
func TestCounterCPUTime(t *testing.T) {
	c := sharedCounters(t)
	cg := kerneltest.NewCgroup(t, "cpu")
	cg.Run(t, "burn", "1", "2s")
	got := usageOf(t, c, cg).CPUSeconds
	want := cg.CPUStatUsage(t)
	t.Logf("BPF %.3f s, cpu.stat %.3f s", got, want)
	if !within(got, want, 0.05) {
		t.Errorf("cpu seconds %.3f, want %.3f ± 5%%", got, want)
	}
}

// Four busy threads on two CPUs wait in the run queue; the BPF sum matches
// what the threads' own schedstat says they waited.
func TestCounterRunQueueWait(t *testing.T) {
	c := sharedCounters(t)
	cg := kerneltest.NewCgroup(t, "runq")
	out := cg.Run(t, "burn", "4", "3s")
	waitNs, err := strconv.ParseFloat(strings.TrimSpace(out), 64)
	if err != nil {
		t.Fatalf("workload output %q", out)
	}
	u := usageOf(t, c, cg)
	want := waitNs / 1e9
	var inHist uint64
	for _, n := range u.RunqHistogram {
		inHist += n
	}
	t.Logf("BPF wait %.3f s in %d waits, schedstat %.3f s; switches vol %d invol %d",
		u.RunqWaitSeconds, inHist, want, u.SwitchesVoluntary, u.SwitchesInvoluntary)
	if u.RunqWaitSeconds <= 0 || !within(u.RunqWaitSeconds, want, 0.20) {
		t.Errorf("run-queue wait %.3f s, want %.3f ± 20%%", u.RunqWaitSeconds, want)
	}
	if inHist == 0 || u.SwitchesInvoluntary == 0 {
		t.Errorf("histogram %d entries, involuntary switches %d: want both > 0", inHist, u.SwitchesInvoluntary)
	}
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

// Touching 256 MiB of fresh memory faults every page in.
func TestCounterPageFaults(t *testing.T) {
	c := sharedCounters(t)
	cg := kerneltest.NewCgroup(t, "faults")
	cg.Run(t, "touch", "256")
	if got := usageOf(t, c, cg).PageFaults; got < 65536 {
		t.Errorf("page faults %d, want at least 65536", got)
	}
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
	if err := os.WriteFile(filepath.Join(cg.Abs, "memory.max"), []byte(strconv.FormatInt(bytes, 10)), 0); err == nil {
		os.WriteFile(filepath.Join(cg.Abs, "memory.swap.max"), []byte("0"), 0)
		return nil
	}
	v1 := filepath.Join("/sys/fs/cgroup/memory", cg.Rel)
	if err := os.Mkdir(v1, 0o755); err != nil {
		t.Fatalf("neither cgroup2 memory.max nor a v1 memory hierarchy: %v", err)
	}
	t.Cleanup(func() { kerneltest.RemoveCgroupDir(t, v1, "/sys/fs/cgroup/memory/cgroup.procs") })
	for file, v := range map[string]string{"memory.limit_in_bytes": strconv.FormatInt(bytes, 10), "memory.swappiness": "0"} {
		if err := os.WriteFile(filepath.Join(v1, file), []byte(v), 0); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
	}
	// v1 has no CLONE_INTO_CGROUP: the workload moves itself in first.
	return []string{"CGSCOPE_JOIN_V1=" + v1}
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
// reason, and the others keep running.
func TestCounterCollectorDegrades(t *testing.T) {
	kerneltest.RequireRoot(t)
	spec, err := bpf.LoadCgroupStats()
	if err != nil {
		t.Fatal(err)
	}
	// A tracepoint this kernel does not have, as on an older kernel.
	spec.Programs["page_fault_user"].SectionName = "tracepoint/exceptions/no_such_tracepoint"
	root, err := cgroup.V2Mount()
	if err != nil {
		t.Fatal(err)
	}
	c, err := newCounters(CountersConfig{
		MaxCgroups: 64, MaxTasks: 1024, MaxSockets: 64, CgroupRoot: root,
		Collectors: map[string]bool{"faults": true, "sched": true, "tcp": false},
	}, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := map[string]Status{}
	for _, st := range c.Collectors() {
		got[st.Name] = st
	}
	if st := got["faults"]; st.Enabled || !strings.Contains(st.Reason, "no_such_tracepoint") {
		t.Errorf("faults: %+v, want disabled naming the missing tracepoint", st)
	}
	if st := got["sched"]; !st.Enabled {
		t.Errorf("sched stopped with faults: %+v", st)
	}
	if st := got["tcp"]; st.Enabled || st.Reason != "disabled by flag" {
		t.Errorf("tcp: %+v, want disabled by flag", st)
	}
	time.Sleep(100 * time.Millisecond)
	usage, err := c.Read()
	if err != nil {
		t.Fatal(err)
	}
	var cpu float64
	for _, u := range usage {
		cpu += u.CPUSeconds
	}
	if cpu == 0 {
		t.Error("sched collector counted no CPU time")
	}
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
