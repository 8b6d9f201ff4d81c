// Package held runs a test's workload process with its stdin and stdout
// piped, so that the test can hold it at a point (the workload says a line
// and waits for one), look at the kernel's figures of a process that is
// still there, step it on and let it end. It is separate from kerneltest
// because package cgroup's own tests use it too, and kerneltest imports
// cgroup. Only test binaries import it.
package held

import (
	"bufio"
	"fmt"
	"io"
	"os/exec"
	"testing"
)

// Process is a started workload.
type Process struct {
	Cmd   *exec.Cmd
	Stdin io.WriteCloser
	out   *bufio.Scanner
}

// Start starts cmd with its stdin and stdout piped. A process still
// running when the test ends is killed then (cleanups registered before
// Start, such as removing its cgroup, run after that).
func Start(t testing.TB, cmd *exec.Cmd) *Process {
	t.Helper()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &Process{Cmd: cmd, Stdin: stdin, out: bufio.NewScanner(stdout)}
	t.Cleanup(func() {
		if p.Cmd.ProcessState == nil {
			p.Stdin.Close()
			p.Cmd.Process.Kill()
			p.Cmd.Wait()
		}
	})
	return p
}

// Pid is the process's id.
func (p *Process) Pid() int { return p.Cmd.Process.Pid }

// Line returns the workload's next line of output; the test fails if
// there is none.
func (p *Process) Line(t testing.TB) string {
	t.Helper()
	if !p.out.Scan() {
		t.Fatalf("workload ended early: %v", p.out.Err())
	}
	return p.out.Text()
}

// WaitFor fails the test unless the workload's next line is want.
func (p *Process) WaitFor(t testing.TB, want string) {
	t.Helper()
	if got := p.Line(t); got != want {
		t.Fatalf("workload said %q, want %q", got, want)
	}
}

// Send writes a line to the workload's stdin.
func (p *Process) Send(t testing.TB, line string) {
	t.Helper()
	if _, err := fmt.Fprintln(p.Stdin, line); err != nil {
		t.Fatal(err)
	}
}

// Step sends a line and waits for the workload to answer "done".
func (p *Process) Step(t testing.TB, step string) {
	t.Helper()
	p.Send(t, step)
	p.WaitFor(t, "done")
}

// Finish closes the workload's stdin, which lets it end, and waits for it;
// the test fails if it did not exit cleanly.
func (p *Process) Finish(t testing.TB) {
	t.Helper()
	p.Stdin.Close()
	if err := p.Cmd.Wait(); err != nil {
		t.Fatalf("workload: %v", err)
	}
}
