#!/bin/bash
# Agent CPU with 50 Python processes: cgscope with its interpreters on (default) and off, alternated.
cd "$(dirname "$0")/.."
pids=()
for i in $(seq 50); do /usr/bin/python3.11 internal/e2e/testdata/python/chain.py 400 & pids+=($!); done
sleep 3
run() { # $1 label, rest flags
  label=$1; shift
  bin/cgscope serve --web.listen-address=127.0.0.1:19861 "$@" >"${TMPDIR:-/tmp}/cgscope-interp-agent.log" 2>&1 & p=$!
  sleep 10  # start-up and first look at every process
  t0=$(awk '{print $14+$15}' /proc/$p/stat); s0=$(date +%s.%N)
  sleep 50
  t1=$(awk '{print $14+$15}' /proc/$p/stat); s1=$(date +%s.%N)
  w=$(curl -s 127.0.0.1:19861/metrics | awk '/^cgscope_interpreter_processes\{/ {s+=$2} END {print s+0}')
  kill $p; wait $p 2>/dev/null
  echo "$label: $(echo "($t1-$t0)/100/($s1-$s0)*100" | bc -l | cut -c1-5)% of a core over 50 s (interpreters walked: $w)"
}
for r in 1 2; do
  run "interpreters on (default)"
  run "--profiling.interpreters=none" --profiling.interpreters=none
done
kill ${pids[@]} 2>/dev/null
