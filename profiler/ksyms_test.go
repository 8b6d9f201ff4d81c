package profiler

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/cgscope/cgscope/internal/kerneltest"
)

// kallsymsText returns the names of the running kernel's text symbols (not
// in modules) by address, from /proc/kallsyms; aliases share an address.
func kallsymsText(t *testing.T) map[uint64][]string {
	t.Helper()
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms := map[uint64][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 3 || !strings.Contains("tTwW", fields[1]) {
			continue
		}
		addr, err := strconv.ParseUint(fields[0], 16, 64)
		if err != nil || addr == 0 {
			continue
		}
		syms[addr] = append(syms[addr], fields[2])
	}
	if len(syms) == 0 {
		t.Fatal("no kernel text symbols in /proc/kallsyms")
	}
	return syms
}

// The kernel names addresses inside its functions, in batches larger than
// one run of the program, and leaves addresses outside any symbol unnamed.
func TestKernelNamer(t *testing.T) {
	kerneltest.RequireRoot(t)
	s, err := NewSampler(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	namer := s.KernelNamer()
	if namer == nil {
		t.Fatal("the kernel refused the kernel_symbols program")
	}
	syms := kallsymsText(t)
	var addrs []uint64
	var want [][]string
	for addr, names := range syms {
		if len(addrs) == 3*ksymBatch+5 {
			break
		}
		addrs = append(addrs, addr)
		want = append(want, names)
	}
	addrs = append(addrs, 1) // no symbol there
	got, err := namer(addrs)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(addrs) {
		t.Fatalf("%d names for %d addresses", len(got), len(addrs))
	}
	for i, names := range want {
		found := false
		for _, n := range names {
			found = found || got[i] == n
		}
		if !found {
			t.Errorf("address %#x named %q, want one of %q", addrs[i], got[i], names)
		}
	}
	if last := got[len(got)-1]; last != "" {
		t.Errorf("address 1 named %q, want no name", last)
	}
}

func TestParseKernelNames(t *testing.T) {
	got, err := parseKernelNames([]byte("do_sys_openat2\n0xffffffffdeadbeef\nxfs_iget [xfs]\n0x0\n"), 3)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"do_sys_openat2", "", "xfs_iget"}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("got %q, want %q", got, want)
	}
	if _, err := parseKernelNames([]byte("one\n"), 2); err == nil {
		t.Error("fewer lines than addresses: no error")
	}
}
