package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"
)

// A Go workload splitting its CPU 75/25 between two functions: a 5 s capture
// names both, with the split within ±5 points, and their stacks reach
// main.main even though both are frameless leaves.
func TestGoWorkloadSplitAndStacks(t *testing.T) {
	for _, bin := range []string{"gosplit", "gosplit-stripped"} {
		t.Run(bin, func(t *testing.T) {
			d := sharedCgscope(t)
			w := workload(t, filepath.Join(artifacts(t), bin))
			time.Sleep(200 * time.Millisecond)
			p := d.capture(t, fmt.Sprintf("seconds=5&pid=%d", w.Process.Pid))

			a := samplesWhere(p, func(s *profile.Sample) bool { return leafName(s) == "main.hotSeventyFive" })
			b := samplesWhere(p, func(s *profile.Sample) bool { return leafName(s) == "main.hotTwentyFive" })
			if a == 0 || b == 0 {
				t.Fatalf("hot functions not both named: hotSeventyFive=%d hotTwentyFive=%d\n%s", a, b, topLeaves(p))
			}
			share := float64(a) / float64(a+b) * 100
			t.Logf("%s: hotSeventyFive %d, hotTwentyFive %d samples: %.1f%%", bin, a, b, share)
			if share < 70 || share > 80 {
				t.Errorf("split %.1f%%, want 75 ± 5", share)
			}
			hot := func(s *profile.Sample) bool { return strings.HasPrefix(leafName(s), "main.hot") }
			reach := samplesWhere(p, func(s *profile.Sample) bool { return hot(s) && stackHas(s, "main.main") })
			if frac := float64(reach) / float64(a+b); frac < 0.97 {
				t.Errorf("only %.1f%% of hot samples reach main.main", frac*100)
			}
			for _, s := range p.Sample {
				if hot(s) && len(s.Location[0].Line) > 0 && s.Location[0].Line[0].Line == 0 {
					t.Fatalf("Go frame without a line number: %v", s.Location[0])
				}
			}
		})
	}
}

// Calls the Go compiler inlined are frames of their own, as runtime/pprof
// shows them: lines of the location they were inlined at, innermost first.
func TestGoInlinedCalls(t *testing.T) {
	for _, bin := range []string{"gosplit", "gosplit-stripped"} {
		t.Run(bin, func(t *testing.T) {
			d := sharedCgscope(t)
			w := workload(t, filepath.Join(artifacts(t), bin), "-inline")
			time.Sleep(200 * time.Millisecond)
			p := d.capture(t, fmt.Sprintf("seconds=3&pid=%d", w.Process.Pid))
			var total, inlined int64
			for _, s := range p.Sample {
				total += s.Value[0]
				if l := s.Location[0]; len(l.Line) >= 2 && l.Line[0].Function.Name == "main.mix" &&
					l.Line[len(l.Line)-1].Function.Name == "main.viaInline" {
					inlined += s.Value[0]
					if l.Line[0].Line == 0 || !strings.HasSuffix(l.Line[0].Function.Filename, "main.go") {
						t.Fatalf("inlined line without its position: %+v", l.Line[0])
					}
				}
			}
			t.Logf("%s: %d of %d samples in main.mix inlined into main.viaInline", bin, inlined, total)
			if total == 0 || float64(inlined)/float64(total) < 0.6 {
				t.Fatalf("main.mix inlined in %d of %d samples, want most:\n%s", inlined, total, topLeaves(p))
			}
			if n := samplesWhere(p, func(s *profile.Sample) bool { return stackHas(s, "main.mix") && stackHas(s, "main.main") }); n < inlined*9/10 {
				t.Errorf("only %d of the %d inlined samples reach main.main", n, inlined)
			}
		})
	}
}

// A C workload built PIE with frame pointers: its hot functions are named
// from .symtab; stripped, the exported one is named from .dynsym and the
// static one keeps its address and mapping (file and build ID).
func TestCWorkloadSymtabAndDynsym(t *testing.T) {
	d := sharedCgscope(t)
	dir := artifacts(t)

	full := workload(t, filepath.Join(dir, "cwork"), "60")
	time.Sleep(200 * time.Millisecond)
	p := d.capture(t, fmt.Sprintf("seconds=3&pid=%d", full.Process.Pid))
	for _, fn := range []string{"hot_static", "hot_exported"} {
		if n := samplesWhere(p, func(s *profile.Sample) bool { return leafName(s) == fn }); n == 0 {
			t.Errorf("%s not named from .symtab:\n%s", fn, topLeaves(p))
		}
	}
	if n := samplesWhere(p, func(s *profile.Sample) bool { return stackHas(s, "main") && strings.HasPrefix(leafName(s), "hot_") }); n == 0 {
		t.Errorf("no C stack reaches main")
	}

	stripped := workload(t, filepath.Join(dir, "cwork-stripped"), "60")
	time.Sleep(200 * time.Millisecond)
	p = d.capture(t, fmt.Sprintf("seconds=3&pid=%d", stripped.Process.Pid))
	named := samplesWhere(p, func(s *profile.Sample) bool { return leafName(s) == "hot_exported" })
	if named == 0 {
		t.Errorf("hot_exported not named from .dynsym:\n%s", topLeaves(p))
	}
	if n := samplesWhere(p, func(s *profile.Sample) bool { return leafName(s) == "hot_static" }); n != 0 {
		t.Errorf("hot_static named in a binary without .symtab (%d samples): where from?", n)
	}
	unnamed := samplesWhere(p, func(s *profile.Sample) bool {
		l := s.Location[0]
		return len(l.Line) == 0 && l.Mapping != nil && strings.HasSuffix(l.Mapping.File, "/cwork-stripped") &&
			l.Mapping.BuildID != "" && l.Address != 0
	})
	total := samplesWhere(p, func(*profile.Sample) bool { return true })
	t.Logf("stripped C: %d named hot_exported, %d unnamed in cwork-stripped, %d total\n%s", named, unnamed, total, topLeaves(p))
	if float64(unnamed) < 0.3*float64(total) {
		t.Errorf("static function's samples not kept as address+mapping: %d of %d", unnamed, total)
	}
}

// A syscall-heavy workload: its kernel frames are present, named, and whole.
// Where in a syscall the cpu-clock interrupt lands depends on the kernel: on
// paravirtualized kernels that delay it until interrupts are re-enabled, a
// large share of samples sits at that point (pvm_irq_enable under
// do_syscall_64), on others in the handlers. So the test asks what holds on
// any kernel: nearly every kernel stack reaches the syscall entry, every
// kernel frame has a name, and the samples inside a syscall handler are
// dd's reads and writes, both of them seen.
func TestKernelFrames(t *testing.T) {
	d := sharedCgscope(t)
	dd := workload(t, "dd", "if=/dev/zero", "of=/dev/null", "bs=1", "count=1000000000")
	time.Sleep(200 * time.Millisecond)
	p := d.capture(t, fmt.Sprintf("seconds=3&pid=%d", dd.Process.Pid))

	var kernel, entry, handler, reads, writes, frames, unnamed int64
	for _, s := range p.Sample {
		var names []string
		for _, l := range s.Location {
			if l.Mapping == nil || l.Mapping.File != "[kernel.kallsyms]" {
				continue
			}
			frames += s.Value[0]
			if len(l.Line) == 0 || l.Line[0].Function.Name == "" {
				unnamed += s.Value[0]
				continue
			}
			names = append(names, l.Line[0].Function.Name)
		}
		if len(names) == 0 {
			continue
		}
		kernel += s.Value[0]
		has := func(match func(string) bool) bool { return slices.ContainsFunc(names, match) }
		if has(func(n string) bool { return strings.HasPrefix(n, "entry_SYSCALL_64") || n == "do_syscall_64" }) {
			entry += s.Value[0]
		}
		if !has(func(n string) bool { return strings.HasPrefix(n, "__x64_sys_") || strings.HasPrefix(n, "ksys_") }) {
			continue
		}
		handler += s.Value[0]
		oneOf := func(fns ...string) bool { return has(func(n string) bool { return slices.Contains(fns, n) }) }
		switch {
		case oneOf("__x64_sys_read", "ksys_read", "vfs_read"):
			reads += s.Value[0]
		case oneOf("__x64_sys_write", "ksys_write", "vfs_write"):
			writes += s.Value[0]
		}
	}
	total := samplesWhere(p, func(*profile.Sample) bool { return true })
	t.Logf("dd: %d samples, %d with a kernel stack, %d reaching the syscall entry, %d in a syscall handler (%d read, %d write); %d of %d kernel frames unnamed",
		total, kernel, entry, handler, reads, writes, unnamed, frames)
	if kernel < 50 {
		t.Fatalf("only %d of %d samples of a syscall loop have a named kernel stack\n%s", kernel, total, topLeaves(p))
	}
	if unnamed*100 > frames {
		t.Errorf("%d of %d kernel frames unnamed", unnamed, frames)
	}
	if entry*100 < kernel*95 {
		t.Errorf("only %d of %d kernel stacks reach entry_SYSCALL_64/do_syscall_64: kernel stacks cut short\n%s", entry, kernel, topLeaves(p))
	}
	if reads == 0 || writes == 0 || (reads+writes)*100 < handler*90 {
		t.Errorf("of %d samples in syscall handlers, %d in read and %d in write: want both, and nearly all\n%s", handler, reads, writes, topLeaves(p))
	}
}

// Processes that live under 300 ms while busy are symbolized: their maps are
// read when their first sample arrives, not when the interval ends.
func TestShortLivedProcesses(t *testing.T) {
	d := sharedCgscope(t)
	dir := artifacts(t)
	short := filepath.Join(dir, "gosplit-short")
	if out, err := exec.Command("cp", filepath.Join(dir, "gosplit"), short).CombinedOutput(); err != nil {
		t.Fatal(err, string(out))
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(500 * time.Millisecond)
		for i := 0; i < 8; i++ {
			exec.Command(short, "-duration=250ms").Run()
		}
	}()
	p := d.capture(t, "seconds=5")
	<-done
	isShort := func(s *profile.Sample) bool {
		return len(s.Label["comm"]) == 1 && s.Label["comm"][0] == "gosplit-short"
	}
	total := samplesWhere(p, isShort)
	named := samplesWhere(p, func(s *profile.Sample) bool { return isShort(s) && leafName(s) != "" })
	hot := samplesWhere(p, func(s *profile.Sample) bool { return isShort(s) && strings.HasPrefix(leafName(s), "main.hot") })
	t.Logf("short-lived: %d of %d samples named, %d in main.hot*", named, total, hot)
	if total < 100 {
		t.Fatalf("only %d samples of the short-lived processes", total)
	}
	if float64(named) < 0.95*float64(total) || float64(hot) < 0.5*float64(total) {
		t.Errorf("short-lived processes poorly symbolized: %d named, %d in main.hot* of %d\n%s", named, hot, total, topLeaves(p))
	}
}

// The downloaded file is read by the real `go tool pprof -top`.
func TestGoToolPprofReadsProfile(t *testing.T) {
	d := sharedCgscope(t)
	w := workload(t, filepath.Join(artifacts(t), "gosplit"))
	body, status := httpGet(t, d.url(fmt.Sprintf("/debug/pprof/profile?seconds=2&pid=%d", w.Process.Pid)))
	if status != 200 {
		t.Fatalf("status %d: %s", status, body)
	}
	file := filepath.Join(t.TempDir(), "cpu.pb.gz")
	if err := os.WriteFile(file, body, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("go", "tool", "pprof", "-top", file).CombinedOutput()
	if err != nil {
		t.Fatalf("go tool pprof: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "main.hotSeventyFive") {
		t.Errorf("pprof -top does not show main.hotSeventyFive:\n%s", out)
	}
}

// pid= and cgroup= return only matching samples.
func TestCaptureFilters(t *testing.T) {
	d := sharedCgscope(t)
	dir := artifacts(t)
	rel, abs := cgroup2(t)
	inside := workload(t, filepath.Join(dir, "gosplit"))
	joinCgroup(t, abs, inside.Process.Pid)
	outside := workload(t, filepath.Join(dir, "cwork"), "60")
	time.Sleep(300 * time.Millisecond)

	p := d.capture(t, "seconds=2&cgroup="+rel)
	if n := samplesWhere(p, pidIs(inside.Process.Pid)); n == 0 {
		t.Errorf("cgroup filter: no samples of the process inside %s", rel)
	}
	for _, s := range p.Sample {
		if got := s.Label["cgroup"]; len(got) != 1 || got[0] != rel {
			t.Fatalf("cgroup filter %s let through a sample of cgroup %v", rel, got)
		}
	}

	p = d.capture(t, fmt.Sprintf("seconds=2&pid=%d", outside.Process.Pid))
	if n := samplesWhere(p, pidIs(outside.Process.Pid)); n == 0 {
		t.Errorf("pid filter: no samples of pid %d", outside.Process.Pid)
	}
	for _, s := range p.Sample {
		if !pidIs(outside.Process.Pid)(s) {
			t.Fatalf("pid filter let through pid %v", s.NumLabel["pid"])
		}
		if s.Label["comm"][0] != "cwork" {
			t.Fatalf("pid filter: comm %v", s.Label["comm"])
		}
	}
}

// comm= returns only the samples of processes of that name, as the
// history's comm= does.
func TestCaptureCommFilter(t *testing.T) {
	d := sharedCgscope(t)
	dir := artifacts(t)
	wanted := workload(t, filepath.Join(dir, "cwork"), "60")
	workload(t, filepath.Join(dir, "gosplit"))
	time.Sleep(300 * time.Millisecond)

	p := d.capture(t, "seconds=2&comm=cwork")
	if n := samplesWhere(p, pidIs(wanted.Process.Pid)); n == 0 {
		t.Errorf("comm filter: no samples of cwork (pid %d)", wanted.Process.Pid)
	}
	for _, s := range p.Sample {
		if got := s.Label["comm"]; len(got) != 1 || got[0] != "cwork" {
			t.Fatalf("comm filter cwork let through a sample of comm %v", got)
		}
	}
}

func TestCaptureBadParameters(t *testing.T) {
	d := sharedCgscope(t)
	for _, q := range []string{"seconds=abc", "seconds=0", "seconds=-1", "seconds=100000", "pid=-1", "pid=x", "pid=0",
		"cgroup=relative/path", "bogus=1", "seconds=1&seconds=2"} {
		body, status := httpGet(t, d.url("/debug/pprof/profile?"+q))
		if status != 400 || len(strings.TrimSpace(string(body))) == 0 {
			t.Errorf("%s: got %d %q, want 400 with a message", q, status, body)
		}
	}
}

// topLeaves summarizes a profile for failure messages.
func topLeaves(p *profile.Profile) string {
	counts := map[string]int64{}
	for _, s := range p.Sample {
		name := leafName(s)
		if name == "" && len(s.Location) > 0 {
			l := s.Location[0]
			file := ""
			if l.Mapping != nil {
				file = l.Mapping.File
			}
			name = fmt.Sprintf("%s+%#x", file, l.Address)
		}
		counts[name] += s.Value[0]
	}
	var sb strings.Builder
	for name, n := range counts {
		if n > 2 {
			fmt.Fprintf(&sb, "  %6d %s\n", n, name)
		}
	}
	return sb.String()
}
