// Package collector is cgscope's per-cgroup collectors: one table of them
// (name, flag help, default, source, BPF programs, the series each emits),
// the loading and attaching of each BPF collector's counter programs on its
// own, the collection of the kernel's per-thread figures with a task
// iterator, the run-queue latency program a duty-cycle controller attaches
// part of the time (SwitchPrograms), and the background cache of cgroup
// files. The flags, the programs loaded, the series exported and the
// collectors' own metrics all come from Table. It produces figures;
// exporter/cgroupmetrics turns them into Prometheus series.
package collector

import (
	"math"

	"github.com/cgscope/cgscope/bpf"
	"github.com/cgscope/cgscope/cgroup"
)

// Collector names, as the --collector.<name> flags and the collector label
// spell them.
const (
	Sched    = "sched"
	Faults   = "faults"
	OOM      = "oom"
	Network  = "network"
	TCP      = "tcp"
	CgroupFS = "cgroupfs"
)

// Source says where a collector's figures come from.
type Source uint8

const (
	// BPF collectors count in the programs of bpf/cgroups.bpf.c, per cgroup
	// in one shared per-CPU map (Counters).
	BPF Source = iota
	// Files collectors read cgroup files in the background (FileCache).
	Files
)

// Info describes one collector.
type Info struct {
	Name    string
	Help    string // the --collector.<name> flag's help
	Default bool
	Source  Source
	// Programs are the BPF programs it loads and attaches, by the names
	// bpf2go generated for them. Collectors may share programs, which are
	// then loaded once.
	Programs []string
	// Sampled is a program it loads but does not attach: the duty-cycle
	// controller attaches it part of the time (Counters.SwitchPrograms).
	Sampled string
	// Metrics are the per-cgroup families it emits.
	Metrics []*Metric
	emit    func(in *Input, out Sink)
}

// Table is every collector, in the order of their flags.
var Table = []*Info{
	{Name: Sched, Default: true, Source: BPF,
		Help:     "CPU time, run-queue wait and context switches per cgroup from the kernel's per-thread figures, read with a task iterator when scraped (no cost per switch); a run-queue latency histogram sampled at sched_switch part of the time.",
		Programs: taskPrograms, Sampled: bpf.CgroupStatsProgRunqLatency,
		Metrics: []*Metric{cpuSeconds, runqWait, runqLatency, contextSwitches},
		emit:    emitSched},
	{Name: Faults, Default: true, Source: BPF,
		Help:     "Page faults per cgroup that memory.stat does not report (no memory controller for it), from the kernel's per-thread min_flt/maj_flt read with a task iterator when scraped (no cost per fault).",
		Programs: taskPrograms,
		Metrics:  []*Metric{pageFaults},
		emit:     emitFaults},
	{Name: OOM, Default: true, Source: BPF,
		Help:     "OOM kills per cgroup (tp_btf/mark_victim).",
		Programs: []string{bpf.CgroupStatsProgOomMarkVictim},
		Metrics:  []*Metric{oomKills},
		emit:     emitOOM},
	{Name: Network, Default: true, Source: BPF,
		Help:     "Bytes and packets per cgroup (cgroup_skb at the cgroup2 root).",
		Programs: []string{bpf.CgroupStatsProgSkbIngress, bpf.CgroupStatsProgSkbEgress},
		Metrics:  []*Metric{rxBytes, txBytes, rxPackets, txPackets},
		emit:     emitNetwork},
	{Name: TCP, Default: true, Source: BPF,
		Help:     "TCP connections opened, failed, closed, active, and retransmits per cgroup (sock and tcp tracepoints).",
		Programs: []string{bpf.CgroupStatsProgInetSockSetState, bpf.CgroupStatsProgTcpRetransmitSkb},
		Metrics:  []*Metric{tcpOpened, tcpFailures, tcpClosed, tcpRetransmits, tcpActive},
		emit:     emitTCP},
	{Name: CgroupFS, Default: true, Source: Files,
		Help: "Memory, CPU throttling, page faults and PSI per cgroup from cgroup files.",
		Metrics: []*Metric{cpuThrottled, memUsage, memWorkingSet, memRSS, memCache, memLimit, pageFaults,
			pressure},
		emit: emitFiles},
}

// taskPrograms read the kernel's per-thread figures: the task iterator
// that charges them to cgroups at each collection, and the hook that
// charges a thread's last figures when it ends. The sched and faults
// collectors share them.
var taskPrograms = []string{bpf.CgroupStatsProgTaskFree, bpf.CgroupStatsProgTaskExit, bpf.CgroupStatsProgCountTasks}

// Lookup returns the collector of that name, nil if there is none.
func Lookup(name string) *Info {
	for _, c := range Table {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// Input is what is known of one exported cgroup at a scrape.
type Input struct {
	// Usage are the BPF counters (zero for a cgroup they never saw).
	Usage *Usage
	// Files are what its cgroup files said; nil when not read (the
	// cgroupfs collector is off, or the cgroup was not read yet).
	Files *cgroup.FileStats
	// Faults is where its page-fault series come from, picked once for
	// the cgroup (PickFaultSource) and kept by the caller.
	Faults FaultSource
}

// FaultSource is where a cgroup's cgscope_cgroup_page_faults_total comes
// from. The two sources mean different things (memory.stat counts the
// cgroup's subtree since it was made, the threads' figures its own
// threads, kernel-mode faults included), so a series that switched
// between them would jump or drop: a cgroup keeps the one it got first.
type FaultSource uint8

const (
	// FaultsUndecided: no series yet; the cgroup's files were not read.
	FaultsUndecided FaultSource = iota
	// FaultsFromFiles: memory.stat pgfault/pgmajfault (cgroupfs).
	FaultsFromFiles
	// FaultsFromThreads: the threads' min_flt/maj_flt (faults collector).
	FaultsFromThreads
)

// PickFaultSource returns the fault source of a cgroup that had cur so
// far, given what its files said now (nil: not read) and whether they are
// read at all (the cgroupfs collector runs, and the series is one
// cgroup's). Once decided it stays: a failed read or a memory controller
// that comes or goes later (on hybrid hosts, with where threads are)
// leaves a gap in the series rather than a switch.
func PickFaultSource(cur FaultSource, files *cgroup.FileStats, filesRead bool) FaultSource {
	switch {
	case cur != FaultsUndecided:
		return cur
	case !filesRead:
		return FaultsFromThreads
	case files == nil:
		return FaultsUndecided // not read yet: wait for the files (one refresh)
	case files.PageFaultsMinor.Known:
		return FaultsFromFiles
	default:
		return FaultsFromThreads
	}
}

// Emit writes the collector's series of one cgroup to out.
func (c *Info) Emit(in *Input, out Sink) { c.emit(in, out) }

// Kind is a metric family's type.
type Kind uint8

const (
	Counter Kind = iota
	Gauge
	Histogram
)

// Metric describes one per-cgroup family. Its series carry the cgroup's
// labels, then Labels.
type Metric struct {
	Name, Help string
	Kind       Kind
	Labels     []string  // label names after the cgroup's, in the order values are given
	Buckets    []float64 // a histogram's upper bounds, +Inf left out
}

// Sink receives the series of one cgroup.
type Sink interface {
	// Add adds a counter or gauge sample with the values of m.Labels.
	Add(m *Metric, v float64, labelValues ...string)
	// Histogram adds a histogram from per-bucket (not cumulative) counts,
	// one per m.Buckets and a last one for +Inf.
	Histogram(m *Metric, counts []uint64, sum float64)
}

// runqBuckets are the upper bounds (s) of the BPF histogram buckets:
// bucket i holds waits under 2^i µs; the last one is +Inf.
var runqBuckets = func() []float64 {
	b := make([]float64, RunqBuckets-1)
	for i := range b {
		b[i] = math.Ldexp(1e-6, i)
	}
	return b
}()

var (
	cpuSeconds = &Metric{Kind: Counter, Name: "cgscope_cgroup_cpu_seconds_total",
		Help: "CPU time the cgroup's own threads spent on CPU (child cgroups not included): the kernel's per-thread sum_exec_runtime, which cpu.stat usage_usec also sums, read with a BPF task iterator at scrape time and when a thread ends (eBPF)."}
	runqWait = &Metric{Kind: Counter, Name: "cgscope_cgroup_cpu_runqueue_wait_seconds_total",
		Help: "Time the cgroup's threads waited in a CPU run queue, from wakeup or preemption to running: the kernel's per-thread sched_info.run_delay (/proc/PID/schedstat), read with a BPF task iterator at scrape time and when a thread ends (eBPF). A wait counts once it ends."}
	runqLatency = &Metric{Kind: Histogram, Name: "cgscope_cgroup_cpu_runqueue_latency_seconds", Buckets: runqBuckets,
		Help: "Distribution of single run-queue waits of the cgroup's threads (log2 buckets). Sampled: waits are seen at sched_switch (eBPF) only part of the time, a duty cycle that keeps the cost within budget on busy hosts, and each counts the inverse of that part, so counts are estimates; _sum is an estimate too, the same waits' lengths weighted as their counts (the exact total is cgscope_cgroup_cpu_runqueue_wait_seconds_total). A wait cut by a move to another CPU's run queue is seen from the move."}
	contextSwitches = &Metric{Kind: Counter, Name: "cgscope_cgroup_context_switches_total", Labels: []string{"kind"},
		Help: "Context switches of the cgroup's threads: voluntary (blocked) or involuntary (preempted), the kernel's per-thread nvcsw/nivcsw (/proc/PID/status), read with a BPF task iterator at scrape time and when a thread ends (eBPF)."}
	cpuThrottled = &Metric{Kind: Counter, Name: "cgscope_cgroup_cpu_throttled_seconds_total",
		Help: "Time the cgroup was throttled by its CPU quota, from cpu.stat (cgroup files)."}
	memUsage = &Metric{Kind: Gauge, Name: "cgscope_cgroup_memory_usage_bytes",
		Help: "Memory charged to the cgroup: memory.current (v2) or memory.usage_in_bytes (v1)."}
	memWorkingSet = &Metric{Kind: Gauge, Name: "cgscope_cgroup_memory_working_set_bytes",
		Help: "Memory usage minus inactive file cache, as cAdvisor and the kubelet compute it (cgroup files)."}
	memRSS = &Metric{Kind: Gauge, Name: "cgscope_cgroup_memory_rss_bytes",
		Help: "Anonymous memory of the cgroup: memory.stat anon (v2) or total_rss (v1)."}
	memCache = &Metric{Kind: Gauge, Name: "cgscope_cgroup_memory_cache_bytes",
		Help: "Page cache charged to the cgroup: memory.stat file (v2) or total_cache (v1)."}
	memLimit = &Metric{Kind: Gauge, Name: "cgscope_cgroup_memory_limit_bytes",
		Help: "Memory limit of the cgroup: memory.max (v2) or memory.limit_in_bytes (v1); absent when unlimited."}
	pageFaults = &Metric{Kind: Counter, Name: "cgscope_cgroup_page_faults_total", Labels: []string{"kind"},
		Help: "Page faults of the cgroup by kind, from one source per cgroup, picked when it is first exported and kept: memory.stat pgfault/pgmajfault (the cgroup's subtree: it and its descendants) where a memory controller covered the cgroup then; otherwise the kernel's per-thread min_flt/maj_flt of the cgroup's own threads (kernel-mode faults included), read with a BPF task iterator at scrape time and when a thread ends (eBPF)."}
	oomKills = &Metric{Kind: Counter, Name: "cgscope_cgroup_oom_kills_total",
		Help: "Processes of the cgroup killed by the OOM killer, from oom:mark_victim (eBPF)."}
	rxBytes = &Metric{Kind: Counter, Name: "cgscope_cgroup_network_receive_bytes_total",
		Help: "Bytes received by the cgroup's sockets, IP headers included, from cgroup_skb ingress at the cgroup2 root (eBPF)."}
	txBytes = &Metric{Kind: Counter, Name: "cgscope_cgroup_network_transmit_bytes_total",
		Help: "Bytes sent by the cgroup's sockets, IP headers included, from cgroup_skb egress at the cgroup2 root (eBPF)."}
	rxPackets = &Metric{Kind: Counter, Name: "cgscope_cgroup_network_receive_packets_total",
		Help: "Packets received by the cgroup's sockets, from cgroup_skb ingress (eBPF)."}
	txPackets = &Metric{Kind: Counter, Name: "cgscope_cgroup_network_transmit_packets_total",
		Help: "Packets sent by the cgroup's sockets, from cgroup_skb egress (eBPF)."}
	tcpOpened = &Metric{Kind: Counter, Name: "cgscope_cgroup_tcp_connections_opened_total", Labels: []string{"direction"},
		Help: "TCP connections established by the cgroup's sockets, outbound (connect) or inbound (accept), from sock:inet_sock_set_state (eBPF)."}
	tcpFailures = &Metric{Kind: Counter, Name: "cgscope_cgroup_tcp_connect_failures_total",
		Help: "TCP connects of the cgroup that failed (SYN_SENT to CLOSE), from sock:inet_sock_set_state (eBPF)."}
	tcpClosed = &Metric{Kind: Counter, Name: "cgscope_cgroup_tcp_connections_closed_total",
		Help: "Established TCP connections of the cgroup that closed, from sock:inet_sock_set_state (eBPF)."}
	tcpActive = &Metric{Kind: Gauge, Name: "cgscope_cgroup_tcp_active_connections",
		Help: "TCP connections of the cgroup established since cgscope started and not yet closed (eBPF)."}
	tcpRetransmits = &Metric{Kind: Counter, Name: "cgscope_cgroup_tcp_retransmits_total",
		Help: "TCP segments the cgroup's sockets retransmitted, from tcp:tcp_retransmit_skb (eBPF)."}
	pressure = &Metric{Kind: Counter, Name: "cgscope_cgroup_pressure_seconds_total", Labels: []string{"resource", "kind"},
		Help: "Time tasks of the cgroup were stalled on a resource, from PSI (*.pressure files) where enabled: some = at least one task, full = all tasks."}
)

func emitSched(in *Input, out Sink) {
	u := in.Usage
	out.Add(cpuSeconds, u.CPUSeconds)
	out.Add(runqWait, u.RunqWaitSeconds)
	if u.RunqSampled {
		out.Histogram(runqLatency, u.RunqHistogram[:], u.RunqHistogramSumSeconds)
	}
	out.Add(contextSwitches, float64(u.SwitchesVoluntary), "voluntary")
	out.Add(contextSwitches, float64(u.SwitchesInvoluntary), "involuntary")
}

// emitFaults gives the threads' faults only where memory.stat (the memory
// controller, through cgroupfs) did not give them when the cgroup's source
// was picked.
func emitFaults(in *Input, out Sink) {
	if in.Faults != FaultsFromThreads {
		return
	}
	out.Add(pageFaults, float64(in.Usage.PageFaultsMinor), "minor")
	out.Add(pageFaults, float64(in.Usage.PageFaultsMajor), "major")
}

func emitOOM(in *Input, out Sink) {
	out.Add(oomKills, float64(in.Usage.OOMKills))
}

func emitNetwork(in *Input, out Sink) {
	u := in.Usage
	out.Add(rxBytes, float64(u.RxBytes))
	out.Add(txBytes, float64(u.TxBytes))
	out.Add(rxPackets, float64(u.RxPackets))
	out.Add(txPackets, float64(u.TxPackets))
}

func emitTCP(in *Input, out Sink) {
	u := in.Usage
	out.Add(tcpOpened, float64(u.TCPOpenedOutbound), "outbound")
	out.Add(tcpOpened, float64(u.TCPOpenedInbound), "inbound")
	out.Add(tcpFailures, float64(u.TCPConnectFailures))
	out.Add(tcpClosed, float64(u.TCPClosed))
	out.Add(tcpRetransmits, float64(u.TCPRetransmits))
	out.Add(tcpActive, float64(max(u.TCPActive, 0)))
}

// emitFiles exports what the cgroup's files know; an unknown value (no
// controller, no PSI, no limit) is no series rather than a zero.
func emitFiles(in *Input, out Sink) {
	fs := in.Files
	if fs == nil {
		// Gone since the counters were read, or not read yet: the BPF
		// series are out already; files have nothing (yet) to say.
		return
	}
	emit := func(m *Metric, v cgroup.Value, labelValues ...string) {
		if v.Known {
			out.Add(m, v.V, labelValues...)
		}
	}
	emit(cpuThrottled, fs.CPUThrottledSeconds)
	emit(memUsage, fs.MemoryUsageBytes)
	emit(memWorkingSet, fs.MemoryWorkingSetBytes)
	emit(memRSS, fs.MemoryRSSBytes)
	emit(memCache, fs.MemoryCacheBytes)
	emit(memLimit, fs.MemoryLimitBytes)
	if in.Faults == FaultsFromFiles {
		emit(pageFaults, fs.PageFaultsMinor, "minor")
		emit(pageFaults, fs.PageFaultsMajor, "major")
	}
	emit(pressure, fs.PressureCPUSomeSeconds, "cpu", "some")
	emit(pressure, fs.PressureMemorySomeSeconds, "memory", "some")
	emit(pressure, fs.PressureMemoryFullSeconds, "memory", "full")
	emit(pressure, fs.PressureIOSomeSeconds, "io", "some")
	emit(pressure, fs.PressureIOFullSeconds, "io", "full")
}
