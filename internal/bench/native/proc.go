package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// child is a long-running process (cgscope, a workload) whose exit is
// awaited exactly once, by its own goroutine.
type child struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when Wait returned
	waitErr error
}

var (
	childMu  sync.Mutex
	children = map[*child]bool{}
	groups   = map[int]bool{} // process groups of running short commands
	stopping bool             // set by cleanup: nothing new starts

	tmpDir string // removed by cleanup
)

// sysProcAttr puts a child in its own process group (so that it and its own
// children can be killed at once, and a terminal's Ctrl-C reaches only us)
// and kills it if we die without cleaning up.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// start starts argv with stdout and stderr to logPath.
func start(name, logPath string, argv ...string) (*child, error) {
	childMu.Lock()
	defer childMu.Unlock()
	if stopping {
		return nil, errors.New("shutting down")
	}
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = sysProcAttr()
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	children[c] = true
	go func() {
		c.waitErr = cmd.Wait()
		f.Close()
		childMu.Lock()
		delete(children, c)
		childMu.Unlock()
		close(c.done)
	}()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop sends sig, waits up to grace, then SIGKILLs the process group. It
// reports whether the child exited on sig within grace.
func (c *child) stop(sig syscall.Signal, grace time.Duration) bool {
	if c.exited() {
		return false
	}
	_ = c.cmd.Process.Signal(sig)
	select {
	case <-c.done:
		return true
	case <-time.After(grace):
	}
	logf("%s did not exit %v after %v: killing it", c.name, grace, sig)
	_ = syscall.Kill(-c.pid(), syscall.SIGKILL)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		logf("%s (pid %d) not reaped 10 s after SIGKILL", c.name, c.pid())
	}
	return false
}

// logTail is the end of the child's log, for error messages.
func (c *child) logTail(n int) string {
	b, err := os.ReadFile(c.logPath)
	if err != nil {
		return ""
	}
	return lastLines(string(b), n)
}

// cleanup kills every child and short command and removes the temporary
// directory; safe to call many times, from any goroutine.
func cleanup() {
	childMu.Lock()
	stopping = true
	list := make([]*child, 0, len(children))
	for c := range children {
		list = append(list, c)
		_ = syscall.Kill(-c.pid(), syscall.SIGKILL)
	}
	for pgid := range groups {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
	dir := tmpDir
	tmpDir = ""
	childMu.Unlock()
	deadline := time.After(5 * time.Second)
	for _, c := range list {
		select {
		case <-c.done:
		case <-deadline:
		}
	}
	if dir != "" {
		os.RemoveAll(dir)
	}
}

func setTempDir(dir string) {
	childMu.Lock()
	tmpDir = dir
	childMu.Unlock()
}

// runShort runs a command to its end (or timeout) in dir and returns its
// stdout (or its stderr when stdout is empty) and rusage. On failure the error holds the end of its output.
func runShort(timeout time.Duration, dir string, argv ...string) (string, *syscall.Rusage, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.SysProcAttr = sysProcAttr()
	// On timeout, kill the whole group: `go test -c` and the compilers have
	// children of their own.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	childMu.Lock()
	if stopping {
		childMu.Unlock()
		return "", nil, errors.New("shutting down")
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
		msg := strings.TrimSpace(stderr.String() + "\n" + stdout.String())
		return stdout.String(), nil, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, lastLines(msg, 8))
	}
	ru, _ := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if stdout.Len() == 0 {
		return stderr.String(), ru, nil // some print their version on stderr
	}
	return stdout.String(), ru, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// benchLock is held for the life of the process; the kernel drops it at
// exit however the process ends.
var benchLock *os.File

// lockBench takes the host-wide lock of cgscope's benchmarks (the overhead
// tool takes the same file), so that two benchmarks never disturb each
// other's figures. It waits at most maxWait.
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
			return fmt.Errorf("another cgscope benchmark still holds %s after %v", path, maxWait)
		}
		if i == 0 {
			logf("another cgscope benchmark holds %s: waiting up to %v", path, maxWait)
		}
		time.Sleep(2 * time.Second)
	}
}
