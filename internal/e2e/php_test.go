package e2e

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"
)

// PHP functions in the stacks of Debian's PHP 8.2 CLI (interp/php, and the
// walker in bpf/interp_php.bpf.h): named Class::function (function outside
// a class) with file and line, in place of execute_ex, in pprof and OTLP
// (profile.frame.type php), for a process started before cgscope, one
// started after, and one in a container; and an engine without a layout
// profiled natively and counted.

const php82 = "/usr/bin/php8.2"

// phpFrame is a PHP frame a stack must hold: function, and the lines it may
// be at (the leaf's: any of its body, mostly the loop's; its callers': the
// call).
type phpFrame struct {
	fn    string
	lines []int
}

// The chains testdata/php/chain.php runs, innermost first.
var (
	phpFuncChain = []phpFrame{
		{"fid_leaf", []int{5, 6, 7, 8, 9}}, {"fid_middle", []int{11}}, {"fid_outer", []int{12}}, {"{main}", []int{32}},
	}
	phpMethodChain = []phpFrame{
		{"Work::fid_leaf", []int{16, 17, 18, 19, 20}}, {"Work::fid_middle", []int{22}}, {"Work::fid_outer", []int{23}}, {"{main}", []int{30}},
	}
)

// startPHP runs the chain workload with php (no php.ini: no extension to
// load) and returns its pid once it runs.
func startPHP(t *testing.T, php, mode string) int {
	t.Helper()
	script, err := filepath.Abs("testdata/php/chain.php")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(php, "-n", script, mode)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("%s printed no pid: %v", php, err)
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(line)); err != nil || pid != cmd.Process.Pid {
		t.Fatalf("%s printed %q, its pid is %d", php, line, cmd.Process.Pid)
	}
	return cmd.Process.Pid
}

// unsupportedPHP is a copy of php8.2 claiming an engine API no layout is
// for (its ZEND_MODULE_BUILD_ID patched): cgscope must profile it natively.
func unsupportedPHP(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(php82)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Count(b, []byte("API20220829,NTS")) != 1 {
		t.Fatalf("%s does not hold its build ID once", php82)
	}
	b = bytes.Replace(b, []byte("API20220829,NTS"), []byte("API20990101,NTS"), 1)
	// Another object, with a GNU build ID of its own (objects are told
	// apart by it).
	f, err := elf.Open(php82)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	note := f.Section(".note.gnu.build-id")
	if note == nil || note.Size < 20 {
		t.Fatalf("%s has no build ID", php82)
	}
	b[note.Offset+note.Size-1] ^= 0xff
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	path := filepath.Join(dir, "php8.2")
	if err := os.WriteFile(path, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// containedPHP runs the script's method chain, as a container would, in
// PID and mount namespaces of its own, by a php8.2 on a tmpfs mounted only
// there: its binary is reachable only through /proc/PID/root. It returns
// the host's pid of the php.
func containedPHP(t *testing.T, script string) int {
	t.Helper()
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	sh := fmt.Sprintf("mount -t tmpfs cgscope-e2e %[1]s && cp %[2]s %[1]s/php8.2 && exec %[1]s/php8.2 -n %[3]s method >/dev/null", dir, php82, script)
	w := workload(t, "unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc", "sh", "-c", sh)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", w.Process.Pid, w.Process.Pid))
		for _, f := range strings.Fields(string(b)) {
			pid, _ := strconv.Atoi(f)
			if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); exe == dir+"/php8.2" {
				if _, err := os.Stat(exe); err == nil {
					t.Fatalf("%s is visible outside the namespace", exe)
				}
				return pid
			}
		}
	}
	t.Fatal("the contained php did not start")
	return 0
}

// holdsPHPChain reports whether the sample's stack holds the chain, in
// order from the leaf, each frame at one of its lines in file, and the
// interpreter loop (execute_ex) nowhere: its frames are replaced, not
// kept beside the PHP ones.
func holdsPHPChain(s *profile.Sample, file string, chain []phpFrame) bool {
	i := 0
	for _, l := range s.Location {
		for _, ln := range l.Line {
			if ln.Function.Name == "execute_ex" {
				return false
			}
			if i < len(chain) && ln.Function.Name == chain[i].fn && ln.Function.Filename == file && slices.Contains(chain[i].lines, int(ln.Line)) {
				i++
			}
		}
	}
	return i == len(chain)
}

// phpStacks lists pid's most frequent stacks with files' base names and lines,
// for failure messages.
func phpStacks(p *profile.Profile, pid, n int) string {
	return phpStacksWhere(p, pid, n, func(*profile.Sample) bool { return true })
}

func phpStacksWhere(p *profile.Profile, pid, n int, keep func(*profile.Sample) bool) string {
	count := map[string]int64{}
	for _, s := range p.Sample {
		if !pidIs(pid)(s) || !keep(s) {
			continue
		}
		var fr []string
		for _, l := range s.Location {
			for _, ln := range l.Line {
				f := ln.Function.Name
				if ln.Function.Filename != "" {
					f += fmt.Sprintf(" %s:%d", filepath.Base(ln.Function.Filename), ln.Line)
				}
				fr = append(fr, f)
			}
			if len(l.Line) == 0 {
				fr = append(fr, "?")
			}
		}
		count[strings.Join(fr, " < ")] += s.Value[0]
	}
	keys := slices.Collect(maps.Keys(count))
	slices.SortFunc(keys, func(a, b string) int { return int(count[b] - count[a]) })
	var sb strings.Builder
	for i := 0; i < n && i < len(keys); i++ {
		fmt.Fprintf(&sb, "  %5d %s\n", count[keys[i]], keys[i])
	}
	return sb.String()
}

func TestPHPFunctionsInStacks(t *testing.T) {
	if _, err := os.Stat(php82); err != nil {
		t.Fatalf("%s missing (scripts/install-deps.sh installs php8.2-cli): %v", php82, err)
	}
	script, _ := filepath.Abs("testdata/php/chain.php")
	before := startPHP(t, php82, "func")
	method := startPHP(t, php82, "method")
	unsupported := startPHP(t, unsupportedPHP(t), "func")
	contained := containedPHP(t, script)

	r := startOTLPReceiver(t, "")
	d := startCgscope(t, t.Cleanup, fmt.Sprintf("--profiling.frequency=%d", testFrequency), "--profiling.interval=1s",
		"--otlp.endpoint="+r.addr, "--otlp.insecure", "--otlp.interval=1s")
	time.Sleep(time.Second) // the processes running already are found at their first samples
	// Found as it starts: its start-up (the engine's, the script's
	// compilation) is over before the capture, which holds only the
	// chain's samples.
	after := startPHP(t, php82, "func")
	time.Sleep(500 * time.Millisecond)
	p := d.capture(t, "seconds=5")

	for _, c := range []struct {
		name  string
		pid   int
		chain []phpFrame
	}{
		{"started before cgscope", before, phpFuncChain},
		{"methods, started before cgscope", method, phpMethodChain},
		{"started after cgscope", after, phpFuncChain},
		{"in a container", contained, phpMethodChain},
	} {
		total := samplesWhere(p, pidIs(c.pid))
		whole := samplesWhere(p, func(s *profile.Sample) bool { return pidIs(c.pid)(s) && holdsPHPChain(s, script, c.chain) })
		t.Logf("%s: %d of %d samples hold the chain\n%s", c.name, whole, total, phpStacks(p, c.pid, 4))
		if whole < total {
			t.Logf("the others:\n%s", phpStacksWhere(p, c.pid, 4, func(s *profile.Sample) bool { return !holdsPHPChain(s, script, c.chain) }))
		}
		if total < 100 {
			t.Errorf("%s: only %d samples", c.name, total)
		} else if float64(whole) < 0.95*float64(total) {
			t.Errorf("%s: %d of %d samples hold the chain, want 95%%", c.name, whole, total)
		}
	}

	// Not walked: its samples stand in the interpreter's native frames.
	total := samplesWhere(p, pidIs(unsupported))
	named := samplesWhere(p, func(s *profile.Sample) bool { return pidIs(unsupported)(s) && stackHas(s, "fid_leaf") })
	native := samplesWhere(p, func(s *profile.Sample) bool { return pidIs(unsupported)(s) && stackHas(s, "execute_ex") })
	t.Logf("unsupported engine: %d samples, %d with PHP frames, %d in execute_ex\n%s", total, named, native, phpStacks(p, unsupported, 3))
	if total < 100 || named != 0 || float64(native) < 0.9*float64(total) {
		t.Errorf("unsupported engine: %d samples, %d with PHP frames, %d in execute_ex: want it profiled natively", total, named, native)
	}
	body, _ := httpGet(t, d.url("/metrics"))
	for _, want := range []string{
		`cgscope_interpreter_processes_total{result="unsupported_version",runtime="php"}`,
		`cgscope_interpreter_processes_total{result="profiled",runtime="php"}`,
	} {
		re := regexp.MustCompile(regexp.QuoteMeta(want) + ` ([0-9.e+]+)`)
		m := re.FindSubmatch(body)
		if m == nil || string(m[1]) == "0" {
			t.Errorf("/metrics: %s is %q, want at least 1", want, m)
		}
	}
	if logged := strings.Count(d.stderr.String(), "runtime=php version=8.2.36 reason=\"no structure layout for engine API20990101\""); logged != 1 {
		t.Errorf("the unsupported engine was logged %d times, want once:\n%s", logged, d.stderr)
	}

	// OTLP: the frames say they are PHP's.
	time.Sleep(2500 * time.Millisecond)
	if types := r.frameTypes(before, "fid_leaf"); !slices.Equal(types, []string{"php"}) {
		t.Errorf("OTLP: fid_leaf's profile.frame.type is %q, want php", types)
	}
	if n := r.pidSamples(before, "Work::fid_leaf") + r.pidSamples(method, "fid_leaf"); n != 0 {
		t.Errorf("OTLP: %d samples mix the processes' functions", n)
	}
	if n := r.pidSamples(method, "Work::fid_leaf"); n < 100 {
		t.Errorf("OTLP: %d samples of Work::fid_leaf", n)
	}
}

// frameTypes lists the profile.frame.type of pid's locations of fn.
func (r *otlpReceiver) frameTypes(pid int, fn string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := map[string]bool{}
	for _, pd := range r.profiles {
		d := pd.Dictionary()
		for i := 0; i < pd.ResourceProfiles().Len(); i++ {
			rp := pd.ResourceProfiles().At(i)
			if v, ok := rp.Resource().Attributes().Get("process.pid"); !ok || v.Int() != int64(pid) {
				continue
			}
			for li := 1; li < d.LocationTable().Len(); li++ {
				l := d.LocationTable().At(li)
				named := false
				for j := 0; j < l.Lines().Len(); j++ {
					f := d.FunctionTable().At(int(l.Lines().At(j).FunctionIndex()))
					named = named || d.StringTable().At(int(f.NameStrindex())) == fn
				}
				if !named {
					continue
				}
				typ := ""
				for j := 0; j < l.AttributeIndices().Len(); j++ {
					a := d.AttributeTable().At(int(l.AttributeIndices().At(j)))
					if d.StringTable().At(int(a.KeyStrindex())) == "profile.frame.type" {
						typ = a.Value().AsString()
					}
				}
				seen[typ] = true
			}
		}
	}
	return slices.Sorted(maps.Keys(seen))
}
