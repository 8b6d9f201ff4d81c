package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/cgscope/cgscope/internal/bench/benchutil"
)

// bpfMap is one entry of `bpftool map show -j`.
type bpfMap struct {
	ID      int    `json:"id"`
	Name    string `json:"name"`
	Type    string `json:"type"`
	Memlock int64  `json:"bytes_memlock"`
}

// heldMaps returns the BPF maps the process holds: those it has a file
// descriptor to, and those its programs use (a program keeps its .rodata
// and .bss maps alive without any descriptor of the process).
func heldMaps(pid int) ([]bpfMap, error) {
	progIDs, mapIDs, err := benchutil.HeldBPF(pid)
	if err != nil {
		return nil, err
	}
	out, _, err := benchutil.RunShort(30*time.Second, "", "bpftool", "prog", "show", "-j")
	if err != nil {
		return nil, err
	}
	var progs []struct {
		ID     int   `json:"id"`
		MapIDs []int `json:"map_ids"`
	}
	if err := json.Unmarshal([]byte(out), &progs); err != nil {
		return nil, fmt.Errorf("parsing `bpftool prog show -j`: %w", err)
	}
	for _, p := range progs {
		if progIDs[p.ID] {
			for _, id := range p.MapIDs {
				mapIDs[id] = true
			}
		}
	}
	out, _, err = benchutil.RunShort(30*time.Second, "", "bpftool", "map", "show", "-j")
	if err != nil {
		return nil, err
	}
	var all []bpfMap
	if err := json.Unmarshal([]byte(out), &all); err != nil {
		return nil, fmt.Errorf("parsing `bpftool map show -j`: %w", err)
	}
	var held []bpfMap
	for _, m := range all {
		if mapIDs[m.ID] {
			held = append(held, m)
		}
	}
	if len(held) == 0 {
		return nil, fmt.Errorf("process %d holds no BPF map that bpftool lists", pid)
	}
	return held, nil
}

// waitQuiet waits, at most maxWait, until the host is idle, and describes
// the outcome.
func waitQuiet(maxWait time.Duration) (desc string, quiet bool) {
	busy, quiet, err := benchutil.WaitQuiet(maxWait)
	switch {
	case err != nil:
		return "unknown (" + err.Error() + ")", false
	case quiet:
		return fmt.Sprintf("%.0f%% of the CPUs in use before it", 100*busy), true
	}
	return fmt.Sprintf("%.0f%% of the CPUs in use by other work before it, after waiting %v for less than %.0f%%",
		100*busy, maxWait, 100*benchutil.QuietBusy), false
}
