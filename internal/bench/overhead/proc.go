package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// child is one started process whose exit is awaited exactly once.
type child struct {
	name    string
	cmd     *exec.Cmd
	started time.Time
	done    chan struct{} // closed once Wait returned
	waitErr error
	ended   time.Time
	logPath string
}

var (
	childMu  sync.Mutex
	children = map[*child]bool{}
	groups   = map[int]bool{} // process groups of running short commands

	sysctlMu       sync.Mutex
	sysctlRestore  func() error // nil when nothing to restore
	cleanupStarted bool
)

const bpfStatsSysctl = "/proc/sys/kernel/bpf_stats_enabled"

// startChild starts argv with its own process group and a parent-death
// SIGKILL; stdout and stderr go to logPath (or are discarded when empty).
func startChild(name string, logPath string, argv ...string) (*child, error) {
	childMu.Lock()
	defer childMu.Unlock()
	if cleanupStarted {
		return nil, errors.New("shutting down")
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var logFile *os.File
	if logPath != "" {
		f, err := os.Create(logPath)
		if err != nil {
			return nil, err
		}
		logFile = f
		cmd.Stdout, cmd.Stderr = f, f
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{}), logPath: logPath}
	c.started = time.Now()
	if err := cmd.Start(); err != nil {
		if logFile != nil {
			logFile.Close()
		}
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	children[c] = true
	go func() {
		c.waitErr = cmd.Wait()
		c.ended = time.Now()
		if logFile != nil {
			logFile.Close()
		}
		childMu.Lock()
		delete(children, c)
		childMu.Unlock()
		close(c.done)
	}()
	return c, nil
}

// exited reports whether the child has already exited.
func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop sends sig, waits up to grace for the exit, then SIGKILLs the process
// group and waits again (bounded). It reports whether the child exited on sig.
func (c *child) stop(sig syscall.Signal, grace time.Duration) (clean bool) {
	if c.exited() {
		return false
	}
	_ = c.cmd.Process.Signal(sig)
	select {
	case <-c.done:
		return true
	case <-time.After(grace):
	}
	logf("%s did not exit %s after %v: killing it", c.name, grace, sig)
	_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		logf("%s (pid %d) still not reaped after SIGKILL", c.name, c.cmd.Process.Pid)
	}
	return false
}

// usage is what rusage says about an exited child.
type usage struct {
	user, sys time.Duration
	maxRSS    int64 // bytes
	wall      time.Duration
}

func (c *child) usage() (usage, error) {
	if !c.exited() {
		return usage{}, errors.New("still running")
	}
	ps := c.cmd.ProcessState
	if ps == nil {
		return usage{}, errors.New("no process state")
	}
	ru, ok := ps.SysUsage().(*syscall.Rusage)
	if !ok || ru == nil {
		return usage{}, errors.New("no rusage")
	}
	return usage{
		user:   time.Duration(ru.Utime.Nano()),
		sys:    time.Duration(ru.Stime.Nano()),
		maxRSS: ru.Maxrss * 1024, // KiB on Linux
		wall:   c.ended.Sub(c.started),
	}, nil
}

// logTail returns the last lines of the child's log, for error messages.
func (c *child) logTail(n int) string {
	if c.logPath == "" {
		return ""
	}
	b, err := os.ReadFile(c.logPath)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// killAllChildren SIGKILLs every child's process group and waits briefly.
func killAllChildren() {
	childMu.Lock()
	cleanupStarted = true
	list := make([]*child, 0, len(children))
	for c := range children {
		list = append(list, c)
	}
	for pgid := range groups {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
	childMu.Unlock()
	for _, c := range list {
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		_ = c.cmd.Process.Kill()
	}
	deadline := time.After(5 * time.Second)
	for _, c := range list {
		select {
		case <-c.done:
		case <-deadline:
			return
		}
	}
}

// cleanup kills the children and restores the sysctl; safe to call many
// times and from any goroutine.
func cleanup() {
	killAllChildren()
	restoreBPFStats()
	removeTempDir()
}

var (
	tmpMu  sync.Mutex
	tmpDir string // removed by cleanup
)

func setTempDir(dir string) {
	tmpMu.Lock()
	tmpDir = dir
	tmpMu.Unlock()
}

func removeTempDir() {
	tmpMu.Lock()
	defer tmpMu.Unlock()
	if tmpDir != "" {
		os.RemoveAll(tmpDir)
		tmpDir = ""
	}
}

// enableBPFStats sets kernel.bpf_stats_enabled=1 and arranges for the old
// value to be written back by restoreBPFStats.
func enableBPFStats() error {
	sysctlMu.Lock()
	defer sysctlMu.Unlock()
	old, err := os.ReadFile(bpfStatsSysctl)
	if err != nil {
		return fmt.Errorf("reading %s: %w", bpfStatsSysctl, err)
	}
	oldVal := strings.TrimSpace(string(old))
	if _, err := strconv.Atoi(oldVal); err != nil {
		return fmt.Errorf("%s holds %q, not a number", bpfStatsSysctl, oldVal)
	}
	if oldVal == "1" {
		return nil // already on: nothing to change, nothing to restore
	}
	// A watchdog outside this process writes the old value back if this
	// process dies without restoring it (SIGKILL, a runtime crash); it is
	// stopped once the restore has been done here.
	guard := exec.Command("sh", "-c", fmt.Sprintf(
		"while kill -0 %d 2>/dev/null; do sleep 1; done; echo %s > %s", os.Getpid(), oldVal, bpfStatsSysctl))
	guard.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := guard.Start(); err != nil {
		return fmt.Errorf("starting the sysctl watchdog: %w", err)
	}
	go guard.Wait() // reap it when it ends
	// Arm the restore before writing, so that a failure between the two
	// still leads to the old value being written back.
	sysctlRestore = func() error {
		if err := os.WriteFile(bpfStatsSysctl, []byte(oldVal+"\n"), 0o644); err != nil {
			return err
		}
		_ = guard.Process.Kill()
		return nil
	}
	if err := os.WriteFile(bpfStatsSysctl, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("setting %s=1: %w", bpfStatsSysctl, err)
	}
	logf("kernel.bpf_stats_enabled: %s -> 1 (restored at exit)", oldVal)
	return nil
}

func restoreBPFStats() {
	sysctlMu.Lock()
	defer sysctlMu.Unlock()
	if sysctlRestore == nil {
		return
	}
	if err := sysctlRestore(); err != nil {
		fmt.Fprintf(os.Stderr, "overhead: RESTORING kernel.bpf_stats_enabled FAILED: %v\n", err)
		return
	}
	sysctlRestore = nil
	if b, err := os.ReadFile(bpfStatsSysctl); err == nil {
		logf("kernel.bpf_stats_enabled restored to %s", strings.TrimSpace(string(b)))
	}
}

// output runs a short command with a timeout and returns its stdout.
func output(timeout time.Duration, dir string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// Kill the whole group on timeout (go test runs a child test binary).
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	childMu.Lock()
	if cleanupStarted {
		childMu.Unlock()
		return "", errors.New("shutting down")
	}
	err := cmd.Start()
	if err == nil {
		groups[cmd.Process.Pid] = true
	}
	childMu.Unlock()
	if err == nil {
		err = cmd.Wait()
		childMu.Lock()
		delete(groups, cmd.Process.Pid)
		childMu.Unlock()
	}
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v", timeout)
	}
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		return stdout.String() + stderr.String(), fmt.Errorf("%s: %w: %s", argv[0], err, lastLines(msg, 8))
	}
	if stdout.Len() == 0 {
		return stderr.String(), nil // some tools print their version on stderr
	}
	return stdout.String(), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// benchLock is held for the life of the process (the kernel drops it at
// exit, however the process ends).
var benchLock *os.File

// lockBench takes an exclusive lock shared by all runs of this tool on the
// host, waiting at most maxWait for another run to finish.
func lockBench(maxWait time.Duration) error {
	dir := "/run/lock"
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		dir = os.TempDir()
	}
	path := dir + "/cgscope-bench.lock"
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("opening %s: %w", path, err)
	}
	deadline := time.Now().Add(maxWait)
	for i := 0; ; i++ {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			benchLock = f
			return nil
		}
		if err != syscall.EWOULDBLOCK && err != syscall.EINTR {
			f.Close()
			return fmt.Errorf("locking %s: %w", path, err)
		}
		if !time.Now().Before(deadline) {
			f.Close()
			return fmt.Errorf("another overhead benchmark still holds %s after %v", path, maxWait)
		}
		if i == 0 {
			logf("another overhead benchmark is running (%s): waiting up to %v", path, maxWait)
		}
		time.Sleep(2 * time.Second)
	}
}
