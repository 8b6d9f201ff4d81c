package main

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cgscope/cgscope/internal/bench/benchutil"
)

var (
	sysctlMu      sync.Mutex
	sysctlRestore func() error // nil when nothing to restore
)

const bpfStatsSysctl = "/proc/sys/kernel/bpf_stats_enabled"

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

// output runs a short command with a timeout and returns its stdout (its
// stderr when stdout is empty; both on failure).
func output(timeout time.Duration, dir string, argv ...string) (string, error) {
	out, _, err := benchutil.RunShort(timeout, dir, argv...)
	return out, err
}
