package profiler

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	descSamples = prometheus.NewDesc("cgscope_samples_total",
		"CPU samples taken by the BPF sampler (idle CPUs are not sampled).", nil, nil)
	descDropped = prometheus.NewDesc("cgscope_samples_dropped_total",
		"Samples lost or stripped of their stack, by reason: counts_map_full (sample lost; raise --profiling.max-sample-keys), stacks_map_full (stack lost, sample kept; raise --profiling.max-stacks), stack_hash_collision (stack lost, sample kept), process_events_full (new-process notice lost; its frames may stay unsymbolized).",
		[]string{"reason"}, nil)
	descUserFrames = prometheus.NewDesc("cgscope_user_frames_total",
		"User frames the BPF stack walker found, by how it found the caller: table (an unwind table compiled from .eh_frame) or frame_pointer. Processes without tables are walked by the kernel and not counted here.",
		[]string{"method"}, nil)
	descUserStacks = prometheus.NewDesc("cgscope_user_stacks_total",
		"User stacks sampled, by how their walk ended: complete, frame_pointers (the kernel's walk, for processes without unwind tables), or truncated: depth_limit, read_failed, unsupported_rule, outside_mappings, bad_frame (these end with a [truncated: reason] frame in profiles).",
		[]string{"end"}, nil)
	descParentTableStacks = prometheus.NewDesc("cgscope_user_stacks_parent_tables_total",
		"CPU samples' user stacks walked by the unwind tables of the process's parent: a process forked without an exec, sampled before its own ranges were loaded (its notice does not wake cgscope, its mappings being its parent's).", nil, nil)
	descImagesGoneUnread = prometheus.NewDesc("cgscope_process_images_gone_unread_total",
		"Process images (a new process, or an exec) that exec'd or exited before cgscope read their new-process notice: their mappings were gone, so they were not read, and their samples' user frames stay unnamed (a process that lives a few milliseconds).", nil, nil)
	descInterpStacks = prometheus.NewDesc("cgscope_interpreter_stacks_total",
		"Interpreter stacks the samplers walked (CPU and off-CPU), by runtime and how the walk ended: complete, depth_limit and read_failed (their frames end with a [truncated: runtime reason] frame), no_thread_state (a thread of the process that is not the interpreter's), bad_thread_state (the thread's state failed its check), no_frames (the thread ran no interpreted code).",
		[]string{"runtime", "end"}, nil)
	descInterpWalkTime = prometheus.NewDesc("cgscope_interpreter_walk_seconds_total",
		"Time the samplers spent walking interpreter stacks (in BPF, at sample time), by runtime: what interpreted processes cost beyond their native stacks; over cgscope_interpreter_stacks_total, the cost of one walk.",
		[]string{"runtime"}, nil)
	descOffCPUSwitches = prometheus.NewDesc("cgscope_offcpu_switches_total",
		"Context switches the off-CPU sampler saw. On a host that switches too often for it to run all the time within --scheduler.bpf-budget it is attached part of the time (cgscope_scheduler_programs_duty_ratio) and its samples are weighted up.", nil, nil)
	descOffCPUSamples = prometheus.NewDesc("cgscope_offcpu_samples_total",
		"Switch-outs whose stacks the off-CPU sampler took.", nil, nil)
	descOffCPULost = prometheus.NewDesc("cgscope_offcpu_samples_lost_total",
		"Off-CPU samples lost, by reason: switch_in_unseen (the thread came back while the sampler was detached, so its blocked time is unknown; long blocks on busy hosts), counts_map_full (raise --profiling.max-sample-keys), stack_evicted (the sample is kept without its stack; raise --profiling.off-cpu.max-stacks).",
		[]string{"reason"}, nil)
	descOffCPUCapped = prometheus.NewDesc("cgscope_offcpu_samples_capped_total",
		"Off-CPU samples whose weight hit its cap (a probability below 2^-28, all factors together): they count for less than they stand for.", nil, nil)
	descOffCPUScale = prometheus.NewDesc("cgscope_offcpu_sampling_ratio",
		"Host-wide factor on every thread's off-CPU sampling probability, lowered to keep samples near --profiling.off-cpu.max-samples a second.", nil, nil)
)

// Describe implements prometheus.Collector.
func (s *Sampler) Describe(ch chan<- *prometheus.Desc) {
	ch <- descSamples
	ch <- descDropped
	ch <- descUserFrames
	ch <- descUserStacks
	ch <- descParentTableStacks
	ch <- descImagesGoneUnread
	ch <- descInterpStacks
	ch <- descInterpWalkTime
	ch <- descOffCPUSwitches
	ch <- descOffCPUSamples
	ch <- descOffCPULost
	ch <- descOffCPUCapped
	ch <- descOffCPUScale
}

// Collect implements prometheus.Collector: the sampler's Stats.
func (s *Sampler) Collect(ch chan<- prometheus.Metric) {
	st, err := s.Stats()
	if err != nil {
		slog.Warn("reading sampler stats", "err", err)
		ch <- prometheus.NewInvalidMetric(descSamples, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(descSamples, prometheus.CounterValue, float64(st.Samples))
	for _, reason := range DropReasons {
		ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(st.Dropped[reason]), reason)
	}
	for method, n := range st.UserFrames {
		ch <- prometheus.MustNewConstMetric(descUserFrames, prometheus.CounterValue, float64(n), method)
	}
	for _, end := range StackEnds {
		ch <- prometheus.MustNewConstMetric(descUserStacks, prometheus.CounterValue, float64(st.UserStacks[end]), end)
	}
	ch <- prometheus.MustNewConstMetric(descParentTableStacks, prometheus.CounterValue, float64(st.ParentTableStacks))
	ch <- prometheus.MustNewConstMetric(descImagesGoneUnread, prometheus.CounterValue, float64(st.ImagesGoneUnread))
	for runtime, ends := range st.InterpStacks {
		for _, end := range InterpEnds {
			ch <- prometheus.MustNewConstMetric(descInterpStacks, prometheus.CounterValue, float64(ends[end]), runtime, end)
		}
	}
	for runtime, d := range st.InterpWalkTime {
		ch <- prometheus.MustNewConstMetric(descInterpWalkTime, prometheus.CounterValue, d.Seconds(), runtime)
	}
	if o := s.offCPU.Load(); o != nil {
		s.collectOffCPU(ch, o.Stats())
	}
}

func (s *Sampler) collectOffCPU(ch chan<- prometheus.Metric, st OffCPUStats) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(descOffCPUSwitches, st.Switches)
	counter(descOffCPUSamples, st.Sampled)
	counter(descOffCPULost, st.Censored, "switch_in_unseen")
	counter(descOffCPULost, st.CountsFull, "counts_map_full")
	counter(descOffCPULost, s.offCPUStacksLost.Load(), "stack_evicted")
	counter(descOffCPUCapped, st.Capped)
	ch <- prometheus.MustNewConstMetric(descOffCPUScale, prometheus.GaugeValue, st.Scale)
}
