package profiler

import (
	"math/rand/v2"
	"os"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/cgscope/cgscope/bpf"
	"github.com/cgscope/cgscope/internal/kerneltest"
	"github.com/cgscope/cgscope/unwind"
)

// The kernel side of the unwind tables is checked against the tables
// compiled in userspace: for every row of real objects' tables (and
// addresses inside and around them), the walker's own lookup, run in the
// kernel by the unwind_probe program, must find the row unwind.Table.Lookup
// finds.

// probe runs the walker's lookup of pc in process pid.
type probe struct{ prog *ebpf.Program }

func loadProbe(t *testing.T, s *Sampler) *probe {
	t.Helper()
	spec, err := bpf.LoadProfile()
	if err != nil {
		t.Fatal(err)
	}
	var objs struct {
		Prog *ebpf.Program `ebpf:"unwind_probe"`
	}
	maps := map[string]*ebpf.Map{
		bpf.ProfileMapUnwindProcs:  s.objs.UnwindProcs,
		bpf.ProfileMapUnwindTables: s.objs.UnwindTables,
		bpf.ProfileMapUnwindIndex:  s.objs.UnwindIndex,
		bpf.ProfileMapUnwindLeaves: s.objs.UnwindLeaves,
	}
	for name, m := range maps {
		spec.Maps[name].MaxEntries = m.MaxEntries() // sized by the sampler's Config
	}
	err = spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: maps})
	if err != nil {
		t.Fatalf("loading unwind_probe: %v", err)
	}
	t.Cleanup(func() { objs.Prog.Close() })
	return &probe{objs.Prog}
}

func (p *probe) lookup(t *testing.T, pid uint32, pc uint64) bpf.ProfileUnwindProbeArgs {
	t.Helper()
	args := bpf.ProfileUnwindProbeArgs{Pid: pid, Pc: pc}
	if _, err := p.prog.Run(&ebpf.RunOptions{Context: &args, ContextOut: &args}); err != nil {
		t.Fatalf("running unwind_probe: %v", err)
	}
	return args
}

func compileFile(t *testing.T, path string) *unwind.Table {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("%s (make test installs it): %v", path, err)
	}
	defer f.Close()
	tab, err := unwind.Compile(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return tab
}

func TestUnwindTablesInTheKernel(t *testing.T) {
	kerneltest.RequireRoot(t)
	cfg := DefaultConfig()
	cfg.UnwindTableBytes = 64 << 20 // libLLVM's table too
	s, err := NewSampler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p := loadProbe(t, s)
	u := s.UnwindTables()

	objects := []string{"/lib/x86_64-linux-gnu/libc.so.6", "/usr/bin/python3.11", "/usr/lib/x86_64-linux-gnu/libLLVM.so.19.1"}
	tables := make([]*unwind.Table, len(objects))
	var ranges []unwind.Range
	const pid = 0x7ffffff0 // no real process: the walker's maps are keyed by pid only
	for i, path := range objects {
		tables[i] = compileFile(t, path)
		if err := u.LoadTable(uint32(i+1), tables[i]); err != nil {
			t.Fatalf("loading the table of %s: %v", path, err)
		}
		// Place each object's code at its own address, as a process would.
		start := uint64(0x7f0000000000) + uint64(i)<<32
		last := tables[i].Rows[len(tables[i].Rows)-1].PC
		ranges = append(ranges, unwind.Range{Start: start, Len: uint64(last) + 4096, Bias: start - tables[i].Base, Table: uint32(i + 1)})
	}
	// A JIT's range (no table) and [vsyscall], which must be left out.
	ranges = append([]unwind.Range{{Start: 0x10000, Len: 0x1000}}, append(ranges, unwind.Range{Start: 0xffffffffff600000, Len: 0x1000})...)
	if err := u.LoadProcess(pid, 1, ranges); err != nil {
		t.Fatal(err)
	}
	ranges = ranges[1:] // the objects' ranges, in the order of their tables

	rng := rand.New(rand.NewPCG(1, 2))
	for i, tab := range tables {
		r := ranges[i]
		checked := 0
		for k, row := range tab.Rows[:len(tab.Rows)-1] {
			// Every row's first address in small tables; a sample of rows in
			// libLLVM's million, with the leaves' edges.
			if len(tab.Rows) > 100000 && k%97 != 0 && k%leafRows > 1 && k%leafRows < leafRows-1 {
				continue
			}
			next := tab.Rows[k+1].PC
			for _, pc := range []uint32{row.PC, row.PC + uint32(rng.Uint64N(uint64(next-row.PC))), next - 1} {
				got := p.lookup(t, pid, r.Bias+tab.Base+uint64(pc))
				want, _ := tab.Lookup(tab.Base + uint64(pc))
				if got.Found != 2 || got.Table != r.Table || got.Row.Pc != want.PC || unwind.CFAKind(got.Row.CfaKind) != want.CFAKind ||
					got.Row.CfaOff != want.CFAOffset || got.Row.Rbp != want.RBP {
					t.Fatalf("%s %#x: the kernel found %+v, the table %v", objects[i], tab.Base+uint64(pc), got, want)
				}
				checked++
			}
		}
		t.Logf("%s: %d rows, %d addresses looked up in the kernel, all agree", objects[i], len(tab.Rows), checked)
	}

	for _, c := range []struct {
		name  string
		pc    uint64
		found uint32
	}{
		{"below every range", 0x1000, 0},
		{"the JIT range", 0x10800, 1},
		{"between ranges", 0x20000, 0},
		{"vsyscall", 0xffffffffff600400, 0},
	} {
		if got := p.lookup(t, pid, c.pc); got.Found != c.found {
			t.Errorf("%s (%#x): found %d, want %d", c.name, c.pc, got.Found, c.found)
		}
	}
	// Past the last entry of libc's table, in its range: the table's closing
	// row, which sends the walker to the frame pointer.
	if got := p.lookup(t, pid, ranges[0].Start+ranges[0].Len-1); got.Found != 2 || unwind.CFAKind(got.Row.CfaKind) != unwind.CFANone {
		t.Errorf("past libc's code: %+v, want its closing row (no rule)", got)
	}

	// An unloaded table is no longer found; its process's range stays (frame
	// pointers there), and its leaves and index slots are free again.
	before := u.KernelBytes()
	if err := u.UnloadTable(2); err != nil {
		t.Fatal(err)
	}
	if got := p.lookup(t, pid, ranges[1].Start+16); got.Found != 1 {
		t.Errorf("after unloading python3's table: found %d, want 1 (its range, no row)", got.Found)
	}
	if after := u.KernelBytes(); after >= before {
		t.Errorf("kernel bytes %d after unloading, %d before", after, before)
	}
	var leaf bpf.ProfileUnwindLeaf
	if err := s.objs.UnwindLeaves.Lookup(bpf.ProfileUnwindLeafKey{Table: 2, Leaf: 0}, &leaf); err == nil {
		t.Error("a leaf of the unloaded table is still in the kernel")
	}
	if err := u.UnloadProcess(pid); err != nil {
		t.Fatal(err)
	}
	if got := p.lookup(t, pid, ranges[0].Start+16); got.Found != 0 {
		t.Errorf("after unloading the process: found %d", got.Found)
	}
}

// Tables beyond the kernel budget are refused with ErrTableSpace, and the
// space of unloaded ones is reused.
func TestUnwindTablesBudget(t *testing.T) {
	kerneltest.RequireRoot(t)
	cfg := DefaultConfig()
	cfg.UnwindTableBytes = 64 * LeafBytes
	s, err := NewSampler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	u := s.UnwindTables()
	libc := compileFile(t, "/lib/x86_64-linux-gnu/libc.so.6") // 57 leaves
	if err := u.LoadTable(1, libc); err != nil {
		t.Fatal(err)
	}
	if err := u.LoadTable(2, libc); err == nil {
		t.Fatal("a second libc table fit in 64 leaves")
	}
	if err := u.UnloadTable(1); err != nil {
		t.Fatal(err)
	}
	if err := u.LoadTable(3, libc); err != nil {
		t.Fatalf("the space of an unloaded table is not reused: %v", err)
	}
}
