// Package benchutil is what cgscope's benchmark commands (internal/bench/*)
// share: starting and stopping their children so that none outlives the
// benchmark (own process groups, parent-death SIGKILL, cleanup on every
// exit path the process controls), the host-wide lock that keeps two
// benchmarks from disturbing each other, and the readings of /proc, of
// cgscope's /metrics and of the BPF objects a process holds.
package benchutil

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
)

var (
	nameMu sync.Mutex
	name   = "bench"
)

// SetName sets the command name that prefixes log lines and errors.
func SetName(n string) {
	nameMu.Lock()
	name = n
	nameMu.Unlock()
}

func cmdName() string {
	nameMu.Lock()
	defer nameMu.Unlock()
	return name
}

// Logf writes a time-stamped progress line to stderr.
func Logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s %s: %s\n", time.Now().Format("15:04:05"), cmdName(), fmt.Sprintf(format, args...))
}

// Main runs a benchmark and exits: any signal that would end the process
// first stops the children and cleans up (exit 130); an error exits 1 and
// a panic 3, both after cleanup.
func Main(run func() error) {
	// Children run in their own process groups, so a terminal's Ctrl-C
	// reaches only this process.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT,
		syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGALRM, syscall.SIGXCPU, syscall.SIGXFSZ)
	// With SIGPIPE notified, writes to a closed stdout or stderr (output
	// piped into `head`) fail with EPIPE instead of killing us before
	// cleanup.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	go func() {
		s := <-sigs
		Logf("got %v: stopping children and cleaning up", s)
		Cleanup()
		os.Exit(130)
	}()
	code := runGuarded(run)
	Cleanup()
	os.Exit(code)
}

func runGuarded(run func() error) (code int) {
	defer func() {
		if r := recover(); r != nil {
			Cleanup()
			fmt.Fprintf(os.Stderr, "%s: panic: %v\n", cmdName(), r)
			code = 3
		}
	}()
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", cmdName(), err)
		return 1
	}
	return 0
}

// MDEscape keeps free text from breaking a Markdown table or list.
func MDEscape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "\n", " "), "|", "\\|")
}
