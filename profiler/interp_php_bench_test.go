package profiler

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/cgscope/cgscope/internal/kerneltest"
	"github.com/cgscope/cgscope/interp"
	"github.com/cgscope/cgscope/interp/php"
)

// phpDepth is how deep the PHP benchmark's stack is, as pyDepth.
const phpDepth = 40

// BenchmarkPHPSampleCost is BenchmarkInterpreterSampleCost for Debian's
// php8.2 (PHP 8.2 CLI) burning CPU phpDepth PHP frames deep: the walker's
// own time per walk (walk-ns/walk, timed in BPF), and the sampling
// program's cost per run with and without the process loaded for the
// walker, alternating each second.
func BenchmarkPHPSampleCost(b *testing.B) {
	const php82 = "/usr/bin/php8.2"
	if _, err := os.Stat(php82); err != nil {
		b.Fatalf("%s missing (scripts/install-deps.sh installs php8.2-cli): %v", php82, err)
	}
	kerneltest.WithBPFStats(b)
	cfg := DefaultConfig()
	cfg.Frequency = 999
	s, err := NewSampler(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()

	script := filepath.Join(b.TempDir(), "deep.php")
	src := fmt.Sprintf("<?php\nfunction fid_deep($n) {\n    if ($n) { return fid_deep($n - 1); }\n    $x = 0;\n    while (true) { $x = ($x * 31 + 7) %% 1000003; }\n}\nfid_deep(%d);\n", phpDepth-2)
	if err := os.WriteFile(script, []byte(src), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(php82, "-n", script)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pid := uint32(cmd.Process.Pid)

	var image uint64
	for deadline := time.Now().Add(5 * time.Second); image == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("the php process was never sampled")
		}
		s.objs.KnownProcs.Lookup(pid, &image)
	}
	time.Sleep(200 * time.Millisecond) // into the loop, phpDepth deep
	st := attachRuntime(b, php.New(), pid)
	measureWalkerCost(b, s, pid, image, st, "php")
}

// attachRuntime finds rt's interpreter in pid as the registry does,
// reading its files through /proc/PID/root.
func attachRuntime(b *testing.B, rt interp.Runtime, pid uint32) *interp.State {
	targets, err := interp.ProcTargets(pid, interp.NewCache(1<<20), rt.Candidate)
	if err != nil {
		b.Fatal(err)
	}
	for _, tg := range targets {
		p, err := rt.Attach(tg)
		if err != nil {
			b.Fatalf("%s in pid %d: %v", rt.Name(), pid, err)
		}
		return p.State()
	}
	b.Fatalf("no %s candidate in pid %d", rt.Name(), pid)
	return nil
}
