#!/usr/bin/env bash
# The BPF cost of interpreter stacks, as a section of docs/benchmarks.md on
# stdout (scripts/bench.sh appends it): BenchmarkInterpreterSampleCost samples
# Debian's python3.11 40 Python frames deep at 999 Hz, alternating seconds
# with and without its interpreter loaded for the walker. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${INTERP_BENCH_RUNS:-10}
out=$(go test ./profiler -run '^$' -bench 'InterpreterSampleCost' -benchtime "${runs}x" 2>&1 | grep -E '^(Benchmark|ok|FAIL)')
echo
echo "## Interpreted stacks (CPython)"
echo
echo "Run by \`scripts/bench-interp.sh\` (\`scripts/bench.sh\` runs it), $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg), cgscope $(git describe --always --dirty 2>/dev/null || echo unknown)."
echo
echo "\`BenchmarkInterpreterSampleCost\` samples Debian's \`/usr/bin/python3.11\` burning CPU 40 Python frames deep at 999 Hz for ${runs} pairs of 1 s phases, one with its interpreter loaded for the BPF walker and one without."
echo "walk-ns/walk is the walk's own time per sample of the process, timed in BPF (\`bpf_ktime_get_ns\` around it; the same counter as \`cgscope_interpreter_walk_seconds_total\`);"
echo "ns/sample-walker and ns/sample-native are the sampling program's bpf_stats run time per run in the two phases (every sample of the host, not only Python's), and extra-ns/walk their difference over the walks: the walk plus storing its stack in the stack map (noisy: other processes' samples vary from phase to phase)."
echo "Target: at most 15 µs of BPF per interpreter sample (OpenTelemetry's eBPF profiler: about 26 µs)."
echo
echo '```'
echo "$out"
echo '```'
echo
echo "$out" | awk '
	function val(name,   i) { for (i = 2; i < NF; i++) if ($(i+1) == name) return $i }
	/^BenchmarkInterpreterSampleCost/ { walk = val("walk-ns/walk"); extra = val("extra-ns/walk"); frames = val("frames/walk"); native = val("ns/sample-native"); withw = val("ns/sample-walker") }
	END {
		if (walk == "") { print "No result: the benchmark failed."; exit }
		worst = (extra > walk ? extra : walk) / 1000
		printf "A %.0f-frame Python stack: %.1f µs of walk per sample, %.1f µs with storing it (from bpf_stats), against the 15 µs target (%s); the sampling program per run, all samples of the host: %.1f µs with the walker, %.1f µs without.\n", frames, walk / 1000, extra / 1000, (worst <= 15 ? "met" : "**not met**"), withw / 1000, native / 1000
	}'
