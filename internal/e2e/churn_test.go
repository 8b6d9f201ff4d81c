package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cgscope/cgscope/internal/bench/benchutil"
)

// TestProcessChurn runs the daemon for a minute under 100 execs a second (twenty
// /bin/true every 200 ms, a 200 ms busy Go program every 150 ms) and checks that what
// it holds per process is given back after the processes exit, not when a cap is
// reached: processes held and object files open stay near what the live processes
// need, the daemon's RSS stops growing after warm-up, and its descriptors other than
// object files (which follow the processes alive, on a shared host other work's too)
// return to where they were once the churn stops.
//
// The profile history is kept in memory with a 1MiB bound: its dictionary of frames
// and stacks grows over a generation (measured at about 3 MiB a minute under this
// churn with --storage.path), which is the history's to bound, not this test's.
// The daemon runs with --runtime.memory-limit: without a limit Go's heap goal is twice
// the live heap at the last collection, so RSS follows the peaks of transient work
// (other sessions' processes sampled on a shared host move it by several MiB) and a
// leak would hide in that noise; with it, growth of RSS means growth of what is kept.
//
// The daemon profiles the whole host, so it also holds what other work's processes
// need: `make test` runs this test alone, after the other packages' tests (in CI they
// added 20 mapped objects and 3 MiB of RSS in the middle of the minute).
func TestProcessChurn(t *testing.T) {
	if testing.Short() {
		t.Skip("TestProcessChurn: a minute of churn; not run with -short")
	}
	const (
		churnFor = 60 * time.Second
		warm     = 20 * time.Second
		interval = 2 * time.Second
	)
	dir := artifacts(t)
	d := startCgscope(t, t.Cleanup, "--profiling.frequency=99", "--profiling.interval="+interval.String(),
		"--storage.memory-limit=1MiB", "--runtime.memory-limit=40MiB")
	pid := d.cmd.Process.Pid
	_, portStr, _ := strings.Cut(d.addr, ":")
	port, _ := strconv.Atoi(portStr)
	before, err := benchutil.Scrape(port)
	if err != nil {
		t.Fatal(err)
	}
	// Descriptors other than the symbolizer's object files.
	otherBefore := countFDs(t, pid) - int(before.Get("cgscope_symbolizer_open_files"))

	ctx, cancel := context.WithCancel(context.Background())
	var counts benchutil.ChurnCounts
	done := make(chan struct{})
	go func() {
		defer close(done)
		benchutil.Churn(ctx, []string{filepath.Join(dir, "gosplit"), "-duration=" + benchutil.ChurnBusyFor.String()}, &counts)
	}()
	defer func() { cancel(); <-done }()

	start := time.Now()
	type rssAt struct {
		at  time.Duration
		rss int64
	}
	var rsses []rssAt
	var maxHeld, maxOpenRatio float64
	for tick := time.NewTicker(5 * time.Second); time.Since(start) < churnFor; <-tick.C {
		m, err := benchutil.Scrape(port)
		if err != nil {
			t.Fatal(err)
		}
		rss, err := benchutil.StatusBytes(pid, "VmRSS")
		if err != nil {
			t.Fatal(err)
		}
		held, open, mapped := m.Get("cgscope_symbolizer_cached_processes"), m.Get("cgscope_symbolizer_open_files"),
			m.Get("cgscope_symbolizer_mapped_objects")
		anon, _ := benchutil.StatusBytes(pid, "RssAnon")
		t.Logf("%4.0fs rss %.1f MiB (anonymous %.1f, history %.0f KiB), fds %d, processes held %.0f (running %.0f, exited %.0f), objects mapped %.0f, files open %.0f",
			time.Since(start).Seconds(), float64(rss)/(1<<20), float64(anon)/(1<<20), m.Get("cgscope_history_bytes")/1024, countFDs(t, pid), held,
			m.Get(`cgscope_profile_processes{state="running"}`), m.Get(`cgscope_profile_processes{state="exited"}`), mapped, open)
		rsses = append(rsses, rssAt{time.Since(start), rss})
		if time.Since(start) >= warm {
			maxHeld = max(maxHeld, held)
			if mapped > 0 {
				maxOpenRatio = max(maxOpenRatio, open/mapped)
			}
		}
	}
	rss, err := benchutil.StatusBytes(pid, "VmRSS")
	if err != nil {
		t.Fatal(err)
	}
	rsses = append(rsses, rssAt{time.Since(start), rss})
	// RSS at warm and at the end: the mean of the readings in the 11 s from warm and up to
	// the end (three each), so that one reading taken at a collection does not decide.
	mean := func(from, to time.Duration) int64 {
		var sum, n int64
		for _, r := range rsses {
			if r.at >= from && r.at <= to {
				sum, n = sum+r.rss, n+1
			}
		}
		if n == 0 {
			t.Fatalf("no RSS reading between %v and %v", from, to)
		}
		return sum / n
	}
	rssWarm, rssEnd := mean(warm, warm+11*time.Second), mean(churnFor-11*time.Second, churnFor+6*time.Second)
	cancel()
	<-done
	t.Logf("churn: %d processes started, %d failed", counts.Started.Load(), counts.Failed.Load())
	if counts.Started.Load() < uint64(churnFor.Seconds())*50 {
		t.Fatalf("the churn started only %d processes in %v (host too slow?)", counts.Started.Load(), churnFor)
	}

	// Once the churn stops, two drains release what it left: processes held return to
	// the live ones (the daemon's own announced processes, other work on the host).
	var m benchutil.Metrics
	deadline := time.Now().Add(5 * interval)
	for {
		time.Sleep(interval)
		if m, err = benchutil.Scrape(port); err != nil {
			t.Fatal(err)
		}
		held, running := m.Get("cgscope_symbolizer_cached_processes"), m.Get(`cgscope_profile_processes{state="running"}`)
		if held <= running+5 || time.Now().After(deadline) {
			break
		}
	}
	held, running := m.Get("cgscope_symbolizer_cached_processes"), m.Get(`cgscope_profile_processes{state="running"}`)
	released := m.Get(`cgscope_symbolizer_process_releases_total{reason="exited"}`)
	evicted := m.Get(`cgscope_symbolizer_process_releases_total{reason="evicted"}`)
	fdsAfter := countFDs(t, pid)
	openAfter, mappedAfter := m.Get("cgscope_symbolizer_open_files"), m.Get("cgscope_symbolizer_mapped_objects")
	otherAfter := fdsAfter - int(openAfter)
	t.Logf("after the churn: processes held %.0f, running %.0f, released %.0f, evicted %.0f; fds %d of which %.0f object files (%.0f objects mapped), other fds %d (before %d); RSS %.1f MiB at %v, %.1f MiB at %v; processes held at most %.0f, files open per mapped object at most %.2f",
		held, running, released, evicted, fdsAfter, openAfter, mappedAfter, otherAfter, otherBefore, float64(rssWarm)/(1<<20), warm, float64(rssEnd)/(1<<20), churnFor, maxHeld, maxOpenRatio)

	if held > running+5 {
		t.Errorf("%.0f processes held after the churn, %.0f running: exited processes not released", held, running)
	}
	if released < 100 {
		t.Errorf("only %.0f processes released after their exit", released)
	}
	if evicted != 0 {
		t.Errorf("%.0f processes evicted by the cap: the release should have come first", evicted)
	}
	if maxOpenRatio > 1.2 {
		t.Errorf("object files open up to %.2f times the objects held processes map (want ≤ 1.2)", maxOpenRatio)
	}
	if openAfter > 1.2*mappedAfter+1 {
		t.Errorf("%.0f object files open after the churn for %.0f objects mapped by the processes held", openAfter, mappedAfter)
	}
	if otherAfter > otherBefore+5 {
		t.Errorf("%d descriptors other than object files open after the churn, %d before it", otherAfter, otherBefore)
	}
	if growth := rssEnd - rssWarm; growth >= 2<<20 {
		t.Errorf("RSS grew %.1f MiB between %v and %v of churn (want < 2 MiB)", float64(growth)/(1<<20), warm, churnFor)
	}
}

func countFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
