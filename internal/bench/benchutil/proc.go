package benchutil

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Child is a long-running process (cgscope, a tool, a workload) whose exit
// is awaited exactly once, by its own goroutine.
type Child struct {
	Name    string
	Cmd     *exec.Cmd
	LogPath string    // "" when its output is discarded
	Started time.Time // just before exec
	Ended   time.Time // set once it exited
	WaitErr error     // set once it exited
	done    chan struct{}
}

var (
	childMu  sync.Mutex
	children = map[*Child]bool{}
	groups   = map[int]bool{} // process groups of running short commands
	stopping bool             // set by Cleanup: nothing new starts
	tmpDir   string           // removed by Cleanup
	hooks    []func()         // run by Cleanup
)

// sysProcAttr puts a child in its own process group (so that it and its own
// children can be killed at once, and a terminal's Ctrl-C reaches only us)
// and kills it if we die without cleaning up.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// Start starts argv with stdout and stderr to logPath (discarded when
// logPath is empty).
func Start(name, logPath string, argv ...string) (*Child, error) {
	childMu.Lock()
	defer childMu.Unlock()
	if stopping {
		return nil, errors.New("shutting down")
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = sysProcAttr()
	var logFile *os.File
	if logPath != "" {
		f, err := os.Create(logPath)
		if err != nil {
			return nil, err
		}
		logFile = f
		cmd.Stdout, cmd.Stderr = f, f
	}
	c := &Child{Name: name, Cmd: cmd, LogPath: logPath, done: make(chan struct{})}
	c.Started = time.Now()
	if err := cmd.Start(); err != nil {
		if logFile != nil {
			logFile.Close()
		}
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	children[c] = true
	go func() {
		c.WaitErr = cmd.Wait()
		c.Ended = time.Now()
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

// PID is the child's process id.
func (c *Child) PID() int { return c.Cmd.Process.Pid }

// Exited reports whether the child has exited (WaitErr and Ended are then
// set).
func (c *Child) Exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// Stop sends sig, waits up to grace, then SIGKILLs the process group and
// waits again (bounded). It reports whether the child exited on sig within
// grace; false also when it had already exited.
func (c *Child) Stop(sig syscall.Signal, grace time.Duration) bool {
	if c.Exited() {
		return false
	}
	_ = c.Cmd.Process.Signal(sig)
	select {
	case <-c.done:
		return true
	case <-time.After(grace):
	}
	Logf("%s did not exit %v after %v: killing it", c.Name, grace, sig)
	_ = syscall.Kill(-c.PID(), syscall.SIGKILL)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		Logf("%s (pid %d) not reaped 10 s after SIGKILL", c.Name, c.PID())
	}
	return false
}

// Usage is what rusage says about an exited child.
type Usage struct {
	User, Sys time.Duration
	MaxRSS    int64 // bytes
	Wall      time.Duration
}

// Usage returns the rusage of an exited child.
func (c *Child) Usage() (Usage, error) {
	if !c.Exited() {
		return Usage{}, errors.New("still running")
	}
	ps := c.Cmd.ProcessState
	if ps == nil {
		return Usage{}, errors.New("no process state")
	}
	ru, ok := ps.SysUsage().(*syscall.Rusage)
	if !ok || ru == nil {
		return Usage{}, errors.New("no rusage")
	}
	return Usage{
		User:   time.Duration(ru.Utime.Nano()),
		Sys:    time.Duration(ru.Stime.Nano()),
		MaxRSS: ru.Maxrss * 1024, // KiB on Linux
		Wall:   c.Ended.Sub(c.Started),
	}, nil
}

// LogTail is the end of the child's log, for error messages.
func (c *Child) LogTail(n int) string {
	if c.LogPath == "" {
		return ""
	}
	b, err := os.ReadFile(c.LogPath)
	if err != nil {
		return ""
	}
	return LastLines(string(b), n)
}

// LastLines is the last n lines of s, joined by " | ".
func LastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// SetTempDir names a directory that Cleanup removes.
func SetTempDir(dir string) {
	childMu.Lock()
	tmpDir = dir
	childMu.Unlock()
}

// OnCleanup adds f to what Cleanup does after killing the children and
// before removing the temporary directory (restoring a sysctl, say). f
// must be safe to call more than once.
func OnCleanup(f func()) {
	childMu.Lock()
	hooks = append(hooks, f)
	childMu.Unlock()
}

// Cleanup kills every child and short command, runs the OnCleanup hooks
// and removes the temporary directory; safe to call many times, from any
// goroutine. Nothing can be started after it.
func Cleanup() {
	childMu.Lock()
	stopping = true
	list := make([]*Child, 0, len(children))
	for c := range children {
		list = append(list, c)
		_ = syscall.Kill(-c.PID(), syscall.SIGKILL)
		_ = c.Cmd.Process.Kill()
	}
	for pgid := range groups {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
	dir := tmpDir
	tmpDir = ""
	hs := append([]func(){}, hooks...)
	childMu.Unlock()
	deadline := time.After(5 * time.Second)
	for _, c := range list {
		select {
		case <-c.done:
		case <-deadline:
		}
	}
	for _, h := range hs {
		h()
	}
	if dir != "" {
		os.RemoveAll(dir)
	}
}

// RunShort runs a command to its end (or timeout) in dir and returns its
// stdout (or its stderr when stdout is empty) and rusage. On failure the
// output is stdout and stderr, and the error holds the end of them.
func RunShort(timeout time.Duration, dir string, argv ...string) (string, *syscall.Rusage, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.SysProcAttr = sysProcAttr()
	// On timeout, kill the whole group: `go test` and the compilers have
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
		return stdout.String() + stderr.String(), nil, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, LastLines(msg, 8))
	}
	ru, _ := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if stdout.Len() == 0 {
		return stderr.String(), ru, nil // some tools print their version on stderr
	}
	return stdout.String(), ru, nil
}

// benchLock is held for the life of the process; the kernel drops it at
// exit however the process ends.
var benchLock *os.File

// LockBench takes the host-wide lock of cgscope's benchmarks, so that two
// of them never disturb each other's figures (or fight over a sysctl). It
// waits at most maxWait.
func LockBench(maxWait time.Duration) error {
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
			Logf("another cgscope benchmark holds %s: waiting up to %v", path, maxWait)
		}
		time.Sleep(2 * time.Second)
	}
}

// Version names the measured cgscope: its --version and the commit of
// the repository it was presumably built from.
func Version(cgscope, repo string) string {
	v := "unknown version"
	if out, _, err := RunShort(10*time.Second, "", cgscope, "--version"); err == nil {
		v = strings.TrimSpace(LastLines(out, 1))
	}
	if out, _, err := RunShort(10*time.Second, repo, "git", "rev-parse", "--short", "HEAD"); err == nil {
		v += ", repository at " + strings.TrimSpace(out)
		if st, _, err := RunShort(10*time.Second, repo, "git", "status", "--porcelain", "--untracked-files=no"); err == nil && strings.TrimSpace(st) != "" {
			v += " with uncommitted changes"
		}
	}
	return v
}

// Executable returns the absolute path of the cgscope binary given by the
// -cgscope flag, or why it cannot be run.
func Executable(path string) (string, error) {
	bin, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	if st, err := os.Stat(bin); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("-cgscope %s: not an executable file (run `make build` first)", path)
	}
	return bin, nil
}

// WriteReport writes a Markdown section to stdout when path is empty, or
// into the file at path: in place of its previous version (from the line
// title to the next section of the same level), or at the end.
func WriteReport(path, title, section string) error {
	if path == "" {
		_, err := os.Stdout.WriteString(section)
		return err
	}
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	before, after := string(old), ""
	if i := strings.Index(before, "\n"+title+"\n"); i >= 0 {
		rest := before[i+1+len(title):]
		before = before[:i]
		level := title[:strings.IndexByte(title+" ", ' ')+1] // "## "
		if j := strings.Index(rest, "\n"+level); j >= 0 {
			after = rest[j+1:]
		}
	}
	text := strings.TrimRight(before, "\n") + "\n\n" + strings.Trim(section, "\n") + "\n"
	if strings.TrimSpace(before) == "" {
		text = strings.Trim(section, "\n") + "\n"
	}
	if after != "" {
		text += "\n" + after
	}
	return os.WriteFile(path, []byte(text), 0o644)
}
