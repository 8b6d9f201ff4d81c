package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cgscope/cgscope/internal/bench/benchutil"
)

// busySrc is the Go program the churn runs for its busy processes (relative to the
// repository): it burns CPU in named functions for -duration.
const busySrc = "internal/e2e/testdata/gosplit"

// reading is one look at the agent.
type reading struct {
	at                    time.Duration // since the churn started
	rss, heap             float64       // MiB
	fds                   int
	cpu                   float64 // % of one core since the previous reading
	cached, mapped, open  float64 // symbolizer: processes held, objects they map, files open
	running, exited       float64 // pipeline: announced processes
	execs                 uint64  // processes the churn started so far
	cpuTotal              time.Duration
	released, evictedProc float64
}

func run(opt options) error {
	tmp, err := benchutil.Prepare("cgscope-churn-")
	if err != nil {
		return err
	}
	busy := filepath.Join(tmp, "busy")
	if out, _, err := benchutil.RunShort(5*time.Minute, opt.Repo, "go", "build", "-o", busy, "./"+busySrc); err != nil {
		return fmt.Errorf("building %s: %v: %s", busySrc, err, out)
	}
	busyQuiet, quiet, err := benchutil.WaitQuiet(2 * time.Minute)
	if err != nil {
		return err
	}
	load := benchutil.Loadavg()
	port, err := benchutil.FreePort()
	if err != nil {
		return err
	}
	hist := filepath.Join(tmp, "history")
	argv := append([]string{opt.Cgscope, "serve",
		fmt.Sprintf("--web.listen-address=127.0.0.1:%d", port),
		fmt.Sprintf("--profiling.frequency=%d", opt.hz), "--storage.path=" + hist}, strings.Fields(opt.extra)...)
	agent, err := benchutil.Start("cgscope", filepath.Join(tmp, "cgscope.log"), argv...)
	if err != nil {
		return err
	}
	defer agent.Stop(syscall.SIGTERM, 15*time.Second)
	if _, err := benchutil.WaitHealthy(agent, port, time.Minute); err != nil {
		return err
	}
	benchutil.Logf("cgscope up (pid %d); churning for %v, a reading every %v", agent.PID(), opt.duration, opt.every)

	ctx, cancel := context.WithCancel(context.Background())
	var counts benchutil.ChurnCounts
	churnDone := make(chan struct{})
	go func() {
		defer close(churnDone)
		benchutil.Churn(ctx, []string{busy, "-duration=" + benchutil.ChurnBusyFor.String()}, &counts)
	}()
	defer func() { cancel(); <-churnDone }()

	start := time.Now()
	var rs []reading
	prevCPU, err := benchutil.StatCPU(agent.PID())
	if err != nil {
		return err
	}
	prevAt := start
	for next := start.Add(opt.every); next.Sub(start) <= opt.duration; next = next.Add(opt.every) {
		time.Sleep(time.Until(next))
		if agent.Exited() {
			return fmt.Errorf("cgscope exited during the churn: %v: %s", agent.WaitErr, agent.LogTail(10))
		}
		r, err := read(agent.PID(), port)
		if err != nil {
			return err
		}
		now := time.Now()
		r.at = now.Sub(start)
		r.execs = counts.Started.Load()
		r.cpu = 100 * float64(r.cpuTotal-prevCPU) / float64(now.Sub(prevAt))
		prevCPU, prevAt = r.cpuTotal, now
		rs = append(rs, r)
		benchutil.Logf("%3.0fs rss %.1f MiB heap %.1f MiB fds %d cpu %.2f%% held %.0f procs, %.0f objects, %.0f open",
			r.at.Seconds(), r.rss, r.heap, r.fds, r.cpu, r.cached, r.mapped, r.open)
	}
	cancel()
	<-churnDone
	host, _ := benchutil.HostBusy(time.Second)
	section := report(opt, rs, counts.Failed.Load(), benchutil.Version(opt.Cgscope, opt.Repo), load, busyQuiet, quiet, host, dirBytes(hist))
	return benchutil.WriteReport(opt.Out, sectionTitle(opt), section)
}

// read takes one reading of the agent.
func read(pid, port int) (reading, error) {
	var r reading
	rss, err := benchutil.StatusBytes(pid, "VmRSS")
	if err != nil {
		return r, err
	}
	r.rss = float64(rss) / (1 << 20)
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return r, err
	}
	r.fds = len(fds)
	if r.cpuTotal, err = benchutil.StatCPU(pid); err != nil {
		return r, err
	}
	m, err := benchutil.Scrape(port)
	if err != nil {
		return r, err
	}
	r.heap = m.Get("go_memstats_heap_inuse_bytes") / (1 << 20)
	r.cached = m.Get("cgscope_symbolizer_cached_processes")
	r.mapped = m.Get("cgscope_symbolizer_mapped_objects")
	r.open = m.Get("cgscope_symbolizer_open_files")
	r.running = m.Get(`cgscope_profile_processes{state="running"}`)
	r.exited = m.Get(`cgscope_profile_processes{state="exited"}`)
	r.released = m.Get(`cgscope_symbolizer_process_releases_total{reason="exited"}`)
	r.evictedProc = m.Get(`cgscope_symbolizer_process_releases_total{reason="evicted"}`)
	return r, nil
}

// dirBytes is the size of the files under dir.
func dirBytes(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += fi.Size()
		}
		return nil
	})
	return n
}
