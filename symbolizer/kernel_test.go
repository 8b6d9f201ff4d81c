package symbolizer

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

type kallsym struct {
	addr uint64
	name string
}

// realKernelSymbols reads global text symbols of the running kernel, sorted.
func realKernelSymbols(t *testing.T) []kallsym {
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		t.Skip(err)
	}
	defer f.Close()
	var syms []kallsym
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || !strings.ContainsAny(fields[1], "tTwW") {
			continue
		}
		addr, err := parseHex([]byte(fields[0]))
		if err != nil || addr == 0 {
			continue
		}
		syms = append(syms, kallsym{addr, fields[2]})
	}
	if len(syms) == 0 {
		t.Skip("kallsyms addresses are hidden")
	}
	sort.Slice(syms, func(i, j int) bool { return syms[i].addr < syms[j].addr })
	return syms
}

func TestKernelRealKallsyms(t *testing.T) {
	syms := realKernelSymbols(t)
	// Pick a symbol with no alias, at least a few bytes long.
	var sym, next kallsym
	for i := 1; i+1 < len(syms); i++ {
		if syms[i-1].addr != syms[i].addr && syms[i+1].addr > syms[i].addr+8 && strings.HasPrefix(syms[i].name, "do_") {
			sym, next = syms[i], syms[i+1]
			break
		}
	}
	if sym.addr == 0 {
		t.Skip("no suitable kernel symbol")
	}
	s := New(Options{})
	frames := s.Kernel([]uint64{sym.addr + 1, next.addr})
	if frames[0].Function != sym.name || !frames[0].Kernel || frames[0].Mapping != nil || frames[0].ObjAddress != sym.addr+1 {
		t.Errorf("leaf frame %+v, want %s", frames[0], sym.name)
	}
	// A return address equal to the next symbol's start belongs to the call before it.
	if frames[1].Function != sym.name || frames[1].Address != next.addr {
		t.Errorf("return frame %+v, want %s", frames[1], sym.name)
	}
	if err := s.ReloadKallsyms(); err != nil {
		t.Fatal(err)
	}
}

func TestParseKallsyms(t *testing.T) {
	input := strings.Join([]string{
		"ffffffff81000000 T _stext",
		"ffffffff81000000 T _text",
		"ffffffff81000100 t helper",
		"ffffffff81000200 W weak_fn",
		"ffffffff81000300 D some_data",
		"ffffffff81000400 T _etext",
		"ffffffffc0000000 t mod_fn\t[mymod]",
		"ffffffffc0000100 t bpf_prog_abc_handler\t[bpf]",
		"bogus line",
		"",
	}, "\n")
	table, err := parseKallsyms(strings.NewReader(input))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		addr uint64
		want string
	}{
		{0xffffffff81000010, "_text"}, // aliases: fewest leading underscores, then shortest
		{0xffffffff81000150, "helper"},
		{0xffffffff81000350, "weak_fn"}, // data symbols do not end text symbols
		{0xffffffffc0000050, "mod_fn"},
		{0xffffffffc0000100 + kernelMaxSymbolSize, ""}, // beyond the size cap
		{0xffffffff80000000, ""},
	}
	for _, tc := range tests {
		got := ""
		if i := table.lookup(tc.addr); i >= 0 {
			got = table.name(i)
		}
		if got != tc.want {
			t.Errorf("lookup(%#x) = %q, want %q", tc.addr, got, tc.want)
		}
	}
}

func TestKallsymsRestricted(t *testing.T) {
	root := t.TempDir()
	hidden := "0000000000000000 T _stext\n0000000000000000 t foo\t[mod]\n"
	if err := os.WriteFile(filepath.Join(root, "kallsyms"), []byte(hidden), 0o644); err != nil {
		t.Fatal(err)
	}
	s := New(Options{ProcRoot: root})
	if f := s.Kernel([]uint64{0xffffffff81000000}); f[0].Function != "" || !f[0].Kernel {
		t.Errorf("restricted kallsyms named a frame: %+v", f[0])
	}
	if err := s.ReloadKallsyms(); !errors.Is(err, ErrKallsymsRestricted) {
		t.Errorf("ReloadKallsyms = %v, want ErrKallsymsRestricted", err)
	}
	if st := s.Stats(); st.FramesUnsymbolized != 1 || st.Errors == 0 {
		t.Errorf("stats %+v", st)
	}
}

// With a KernelNamer, Kernel asks it once per new lookup address (return
// addresses one byte back), never reads kallsyms, and falls back to kallsyms
// when the namer fails.
func TestKernelNamer(t *testing.T) {
	root := t.TempDir()
	kallsyms := "ffffffff81000000 T from_kallsyms\nffffffff81001000 T _etext\n"
	if err := os.WriteFile(filepath.Join(root, "kallsyms"), []byte(kallsyms), 0o644); err != nil {
		t.Fatal(err)
	}
	s := New(Options{ProcRoot: root})
	var asked []uint64
	fail := false
	s.SetKernelNamer(func(addrs []uint64) ([]string, error) {
		if fail {
			return nil, errors.New("namer broken")
		}
		asked = append(asked, addrs...)
		names := make([]string, len(addrs))
		for i, a := range addrs {
			if a != 0xffffffff81000fff {
				names[i] = fmt.Sprintf("fn_%x", a)
			}
		}
		return names, nil
	})
	if err := s.ReloadKallsyms(); err != nil {
		t.Fatalf("ReloadKallsyms with a namer: %v", err)
	}
	stack := []uint64{0xffffffff81000010, 0xffffffff81000100, 0xffffffff81001000}
	frames := s.Kernel(stack)
	want := []string{"fn_ffffffff81000010", "fn_ffffffff810000ff", ""}
	for i, f := range frames {
		if f.Function != want[i] || !f.Kernel || f.Address != stack[i] || f.ObjAddress != stack[i] {
			t.Errorf("frame %d: %+v, want %q", i, f, want[i])
		}
	}
	if len(asked) != 3 {
		t.Errorf("namer asked for %#x, want the 3 lookup addresses", asked)
	}
	s.Kernel(stack) // all known now, the unnamed one included
	if len(asked) != 3 {
		t.Errorf("namer asked again: %#x", asked[3:])
	}
	if s.kernel.Load() != nil {
		t.Error("kallsyms was read although the namer works")
	}
	fail = true
	if f := s.Kernel([]uint64{0xffffffff81000020}); f[0].Function != "from_kallsyms" {
		t.Errorf("namer failing: frame %+v, want from_kallsyms", f[0])
	}
	if st := s.Stats(); st.Errors == 0 || st.FramesSymbolized != 5 || st.FramesUnsymbolized != 2 {
		t.Errorf("stats %+v", st)
	}
}
