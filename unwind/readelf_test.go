package unwind

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The compiled tables are checked against a reference: binutils' readelf,
// which interprets the same call-frame information into a table of rules
// per address (--debug-dump=frames-interp). Every address readelf lists
// must get the same CFA, frame-pointer and return-address rules from the
// compiled table, and the code between entries must be marked as having no
// rule.

// refRow is one row of readelf's table.
type refRow struct {
	loc         uint64
	cfa, rbp    string
	ra          string
	signalFrame bool
}

// refFDE is one FDE of readelf's output.
type refFDE struct {
	begin, end uint64
	rows       []refRow
}

// readelfFrames runs readelf on path and returns the FDEs of section
// (.eh_frame or .debug_frame).
func readelfFrames(t *testing.T, path, section string) []refFDE {
	t.Helper()
	// readelf exits 1 on some of Debian's objects though it prints every
	// entry (it warns about a missing separate debug file): its output is
	// what counts.
	out, err := exec.Command("readelf", "--wide", "--debug-dump=frames-interp", path).Output()
	if len(out) == 0 {
		t.Fatalf("readelf %s: %v (make test installs binutils)", path, err)
	}
	var (
		fdes     []refFDE
		cieAug   = map[string]string{}
		cols     []string
		inEH     bool
		cur      *refFDE
		curAug   string
		sc       = bufio.NewScanner(bytes.NewReader(out))
		fdeStart = func(line string) {
			f := strings.Fields(line)
			var cieOff, pc string
			for _, w := range f {
				if v, ok := strings.CutPrefix(w, "cie="); ok {
					cieOff = v
				}
				if v, ok := strings.CutPrefix(w, "pc="); ok {
					pc = v
				}
			}
			lo, hi, _ := strings.Cut(pc, "..")
			begin, _ := strconv.ParseUint(lo, 16, 64)
			end, _ := strconv.ParseUint(hi, 16, 64)
			fdes = append(fdes, refFDE{begin: begin, end: end})
			cur = &fdes[len(fdes)-1]
			curAug = cieAug[cieOff]
		}
	)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "Contents of the "):
			inEH = strings.Contains(line, section+" section")
			cur = nil
		case !inEH:
		case strings.Contains(line, "ZERO terminator"):
			cur = nil
		case strings.Contains(line, " CIE "):
			f := strings.Fields(line)
			aug := ""
			if len(f) > 4 {
				aug = strings.Trim(f[4], `"`)
			}
			cieAug[fmt.Sprintf("%08s", f[0])] = aug
			cur = nil
		case strings.Contains(line, " FDE "):
			fdeStart(line)
		case strings.HasPrefix(strings.TrimSpace(line), "LOC"):
			cols = strings.Fields(line)[1:]
		case cur != nil && len(strings.Fields(line)) == len(cols)+1:
			f := strings.Fields(line)
			loc, err := strconv.ParseUint(f[0], 16, 64)
			if err != nil {
				continue
			}
			r := refRow{loc: loc, rbp: "u", signalFrame: strings.Contains(curAug, "S")}
			for i, c := range cols {
				switch c {
				case "CFA":
					r.cfa = f[i+1]
				case "rbp":
					r.rbp = f[i+1]
				case "ra":
					r.ra = f[i+1]
				}
			}
			cur.rows = append(cur.rows, r)
		}
	}
	return fdes
}

// wantRow is the compiled row readelf's rules mean, or "" when any of a
// few kinds is right (expressions readelf does not spell out).
func checkRow(r Row, ref refRow) string {
	if ref.signalFrame {
		if r.CFAKind != CFASignal {
			return "want a signal frame"
		}
		return ""
	}
	if ref.ra == "u" {
		if r.CFAKind != CFAEnd {
			return "want the outermost frame (return address undefined)"
		}
		return ""
	}
	if ref.ra != "c-8" {
		if r.CFAKind != CFAUnsupported {
			return "return address not at CFA-8: want unsupported"
		}
		return ""
	}
	switch {
	case ref.cfa == "exp":
		if r.CFAKind != CFAPLT && r.CFAKind != CFADerefRBP && r.CFAKind != CFAUnsupported {
			return "CFA expression compiled as " + r.String()
		}
		return ""
	default:
		reg, off, ok := strings.Cut(ref.cfa, "+")
		n, err := strconv.Atoi(off)
		if !ok || err != nil {
			return "unparsed CFA " + ref.cfa
		}
		want := map[string]CFAKind{"rsp": CFARSP, "rbp": CFARBP, "rax": CFARegBase, "rdx": CFARegBase + 1,
			"rcx": CFARegBase + 2, "rbx": CFARegBase + 3, "rsi": CFARegBase + 4, "rdi": CFARegBase + 5}[reg]
		if strings.HasPrefix(reg, "r") && want == 0 {
			if k, err := strconv.Atoi(reg[1:]); err == nil && k < 16 {
				want = CFARegBase + CFAKind(k)
			}
		}
		if n%8 != 0 {
			want = CFAUnsupported
		}
		if r.CFAKind != want || (want != CFAUnsupported && int(r.CFAOffset)*8 != n) {
			return fmt.Sprintf("CFA %s compiled as %s", ref.cfa, r)
		}
		if want == CFAUnsupported {
			return ""
		}
	}
	var wantRBP int8
	switch {
	case ref.rbp == "u":
		wantRBP = RBPSame
	case strings.HasPrefix(ref.rbp, "c-"):
		n, _ := strconv.Atoi(ref.rbp[2:])
		wantRBP = int8(-n / 8)
	case ref.rbp == "exp":
		if r.RBP != RBPAtRBP && r.RBP != RBPUnknown {
			return "rbp expression compiled as " + r.String()
		}
		return ""
	default:
		wantRBP = RBPUnknown
	}
	if r.RBP != wantRBP {
		return fmt.Sprintf("rbp %s compiled as %s", ref.rbp, r)
	}
	return ""
}

func compareWithReadelf(t *testing.T, path, section string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tab, err := Compile(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	fdes := readelfFrames(t, path, section)
	if len(fdes) == 0 {
		t.Fatalf("readelf found no FDE in %s", path)
	}
	starts := map[uint64]bool{} // of the entries of either section
	for _, sec := range []string{".eh_frame", ".debug_frame"} {
		for _, fd := range readelfFrames(t, path, sec) {
			starts[fd.begin] = true
		}
	}
	var checked, bad int
	for _, fd := range fdes {
		for _, ref := range fd.rows {
			r, ok := tab.Lookup(ref.loc)
			checked++
			msg := "no row"
			if ok {
				msg = checkRow(r, ref)
			}
			if msg != "" {
				if bad++; bad <= 10 {
					t.Errorf("%s %#x (FDE %#x-%#x): readelf cfa=%s rbp=%s ra=%s: %s", filepath.Base(path), ref.loc, fd.begin, fd.end, ref.cfa, ref.rbp, ref.ra, msg)
				}
			}
		}
		// Just past an entry that no other entry follows: no rule.
		if !starts[fd.end] {
			if r, ok := tab.Lookup(fd.end); ok && r.CFAKind != CFANone {
				t.Errorf("%s %#x: past the FDE %#x-%#x, no other begins, but the table has %s", filepath.Base(path), fd.end, fd.begin, fd.end, r)
			}
		}
	}
	t.Logf("%s: %d rows compiled, %d of readelf's rows checked, %d differ", filepath.Base(path), len(tab.Rows), checked, bad)
}

func TestCompileMatchesReadelf(t *testing.T) {
	dir := t.TempDir()
	nofp := filepath.Join(dir, "nofp")
	if out, err := exec.Command("gcc", "-O2", "-fomit-frame-pointer", "-o", nofp, "testdata/chain.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	// fid_aligned's over-aligned local makes GCC realign the stack and
	// address its frame through rbp.
	realigned := filepath.Join(dir, "realigned")
	if out, err := exec.Command("gcc", "-O2", "-mavx", "-o", realigned, "testdata/chain.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	for _, path := range []string{
		"/lib/x86_64-linux-gnu/libc.so.6",
		"/lib64/ld-linux-x86-64.so.2",
		"/usr/bin/python3.11",
		"/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
		nofp, realigned,
	} {
		t.Run(filepath.Base(path), func(t *testing.T) {
			if _, err := os.Stat(path); err != nil {
				t.Fatalf("%s missing (make test installs it): %v", path, err)
			}
			compareWithReadelf(t, path, ".eh_frame")
		})
	}
}

// Objects built without unwind tables but with debug information carry
// .debug_frame only; its FDEs hold absolute addresses.
func TestCompileDebugFrame(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "debugframe")
	out, err := exec.Command("gcc", "-O2", "-g", "-fomit-frame-pointer", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables",
		"-o", bin, "testdata/chain.c").CombinedOutput()
	if err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	if len(readelfFrames(t, bin, ".debug_frame")) == 0 {
		t.Fatal("gcc emitted no .debug_frame")
	}
	compareWithReadelf(t, bin, ".debug_frame")
	f, err := os.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tab, err := Compile(f)
	if err != nil {
		t.Fatal(err)
	}
	leaf := symbolAddress(t, bin, "fid_leaf")
	if r, ok := tab.Lookup(leaf); !ok || r.CFAKind != CFARSP || r.CFAOffset != 1 {
		t.Errorf("fid_leaf's entry: %v %v, want CFA rsp+8 from .debug_frame", r, ok)
	}
}

// symbolAddress reads a function's address with nm.
func symbolAddress(t *testing.T, bin, name string) uint64 {
	t.Helper()
	out, err := exec.Command("nm", bin).Output()
	if err != nil {
		t.Fatalf("nm %s: %v", bin, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[2] == name {
			v, err := strconv.ParseUint(f[0], 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatalf("%s has no symbol %s", bin, name)
	return 0
}
