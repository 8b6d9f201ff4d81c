package php

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cgscope/cgscope/interp"
)

const php82 = "/usr/bin/php8.2"

func needPHP(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(php82); err != nil {
		t.Fatalf("%s missing (scripts/install-deps.sh installs php8.2-cli): %v", php82, err)
	}
}

// The walker masks offsets to stay inside what it read (bpf/interp.bpf.h's
// frame_word and frame_u32, and reads of at most 0x7f bytes into a
// 136-byte buffer): every layout must fit.
func TestLayoutsFitTheWalker(t *testing.T) {
	for api, l := range layouts {
		for _, w := range []uint16{l.exOpline, l.exFunc, l.exPrev, l.opaOpcodes} {
			if w&0x78 != w {
				t.Errorf("%s: word field at %d is not 8-aligned below 128", api, w)
			}
		}
		for _, w := range []uint16{l.exCallInfo, l.opaLast} {
			if w&0x7c != w {
				t.Errorf("%s: 32-bit field at %d is not 4-aligned below 128", api, w)
			}
		}
		if l.fnType > 0x7f || l.exBytes() > 0x7f || l.fnBytes() > 0x7f {
			t.Errorf("%s: reads of %d and %d bytes, type at %d: want below 128", api, l.exBytes(), l.fnBytes(), l.fnType)
		}
		st := l.state(0x1000, true)
		if st.Kind != interp.KindPHP || st.Addr != 0x1000 || st.Values[0] != l.callTop || st.Values[1] != 1 {
			t.Errorf("%s: state %+v", api, st)
		}
	}
}

// Debian's php8.2 as the research found it by hand (readelf, objdump):
// executor_globals, execute_ex and its cold part, the build and version,
// the accessor the layout is checked against, the HYBRID VM.
func TestDebianObject(t *testing.T) {
	needPHP(t)
	f, err := os.Open(php82)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := readObjectFacts(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("EG %#x (%d bytes), execute_ex %#x..%#x, cold %#x..%#x, %s, %s", b.eg, b.egSize, b.execStart, b.execEnd, b.coldStart, b.coldEnd, b.buildID, b.version)
	if b.eg == 0 || b.egSize < 496 || b.execEnd <= b.execStart {
		t.Errorf("EG %#x size %d, execute_ex %#x..%#x", b.eg, b.egSize, b.execStart, b.execEnd)
	}
	// GCC splits execute_ex's cold part off, below it, 1..64 KiB long.
	if b.coldStart == 0 || b.coldStart >= b.execStart || b.coldEnd-b.coldStart > 64<<10 {
		t.Errorf("cold part %#x..%#x", b.coldStart, b.coldEnd)
	}
	if b.buildID != "API20220829,NTS" || !strings.HasPrefix(b.version, "8.2.") {
		t.Errorf("build %q version %q", b.buildID, b.version)
	}
	if err := checkAccessor(layouts["API20220829"], b); err != nil {
		t.Error(err)
	}
	other := *layouts["API20220829"]
	other.egCurrentEx += 8
	if err := checkAccessor(&other, b); err == nil {
		t.Error("a layout with current_execute_data elsewhere passed the accessor check")
	}
	if string(b.vmKind) != "\xb8\x04\x00\x00\x00\xc3" {
		t.Errorf("zend_vm_kind % x: not HYBRID", b.vmKind)
	}
}

func TestCandidate(t *testing.T) {
	for path, want := range map[string]bool{
		"/usr/bin/php8.2": true, "/usr/sbin/php-fpm8.2": true, "/usr/lib/apache2/modules/libphp8.2.so": true,
		"/usr/local/bin/php": true, "/usr/bin/phpize": false, "/usr/lib/x86_64-linux-gnu/libphpx.so": false,
		"/usr/bin/python3.11": false,
	} {
		if got := candidate(path); got != want {
			t.Errorf("%s: %v, want %v", path, got, want)
		}
	}
}

const chain = `<?php
class Work {
    public function fid_leaf($n) {
        $x = 0;
        for ($i = 0; ; $i++) { $x += ($i * $i) % 7; } // line 5
    }
    public function fid_middle($n) { return $this->fid_leaf($n); } // line 7
}
function fid_outer() { return (new Work())->fid_middle(1); } // line 9
echo getmypid(), "\n";
fid_outer(); // line 11
`

// The layout against the running php8.2: attached as the registry would,
// the frames walked here as the BPF walker does (from EX(opline): the
// registers are the kernel's to give) and named.
func TestLiveProcess(t *testing.T) {
	needPHP(t)
	if os.Geteuid() != 0 {
		t.Skip("reading another process's memory needs root")
	}
	script := filepath.Join(t.TempDir(), "chain.php")
	if err := os.WriteFile(script, []byte(chain), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(php82, "-n", script)
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	pid := cmd.Process.Pid
	proc, err := attach(t, pid)
	if err != nil {
		t.Fatal(err)
	}
	p := proc.(*process)
	if p.Version() == "" || p.State().Addr == 0 {
		t.Fatalf("version %q, EG %#x", p.Version(), p.State().Addr)
	}
	words := userWalk(t, p)
	frames := p.Frames(words)
	var got []string
	for _, f := range frames {
		got = append(got, fmt.Sprintf("%s %s:%d entry=%v", f.Function, filepath.Base(f.File), f.Line, f.Entry))
	}
	want := []string{"Work::fid_leaf chain.php:5 entry=false", "Work::fid_middle chain.php:7 entry=false",
		"fid_outer chain.php:9 entry=false", "{main} chain.php:11 entry=true"}
	// The innermost frame's saved opline may be stale: any line of
	// fid_leaf's body.
	if len(got) > 0 && strings.HasPrefix(got[0], "Work::fid_leaf chain.php:") {
		got[0] = want[0]
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("frames:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	// A frame whose function cannot be read stays unnamed.
	if f := p.Frames([]uint64{0x10}); f[0].Function != "" || f[0].Interpreter != "php" {
		t.Errorf("an unreadable function named %+v", f[0])
	}
}

// attach finds pid's engine as the registry does.
func attach(t *testing.T, pid int) (interp.Process, error) {
	t.Helper()
	targets, err := interp.ProcTargets(uint32(pid), interp.NewCache(1<<20), candidate)
	if err != nil {
		t.Fatal(err)
	}
	rt := New()
	for _, tg := range targets {
		if p, err := rt.Attach(tg); !errors.Is(err, interp.ErrNotInterpreter) {
			return p, err
		}
	}
	return nil, errors.New("no engine found")
}

// userWalk reads the frames as bpf/interp_php.bpf.h does, without the
// registers. The offsets are in enum php_offset's order (bpf/interp.h).
func userWalk(t *testing.T, p *process) []uint64 {
	t.Helper()
	st, mem := p.State(), p.mem
	off := func(i int) uint64 { return uint64(st.Offsets[i]) }
	ex, err := mem.U64(st.Addr + off(0))
	if err != nil || ex == 0 {
		t.Fatalf("no current_execute_data: %v", err)
	}
	var words []uint64
	for ex != 0 && len(words) < 124 {
		buf := make([]byte, off(5))
		if err := mem.Read(ex, buf); err != nil {
			t.Fatal(err)
		}
		opline, fn := interp.Word(buf, int(off(1))), interp.Word(buf, int(off(2)))
		callInfo := uint64(interp.Int32(buf, int(off(3))))
		ex = interp.Word(buf, int(off(4)))
		if fn == 0 {
			continue
		}
		fb := make([]byte, off(9))
		if err := mem.Read(fn, fb); err != nil {
			t.Fatal(err)
		}
		w := fn
		if typ := fb[off(6)]; typ != internalFunction {
			last, opcodes := uint64(interp.Int32(fb, int(off(7)))), interp.Word(fb, int(off(8)))
			line, _ := mem.U32(fn + off(10))
			if opline >= opcodes && opline < opcodes+last*off(11) && (opline-opcodes)%off(11) == 0 {
				line, _ = mem.U32(opline + off(12))
			}
			w |= uint64(line) << wordLineShift
			if callInfo&st.Values[0] != 0 {
				w |= wordEntry
			}
		}
		words = append(words, w)
	}
	return words
}
