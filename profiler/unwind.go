package profiler

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"

	"github.com/cgscope/cgscope/bpf"
	"github.com/cgscope/cgscope/unwind"
)

// The kernel side of the unwind tables (bpf/unwind.bpf.h): UnwindTables
// writes compiled tables and the executable mappings of processes into the
// sampler's maps. It is the unwind.Sink of cgscope; unwind.Registry decides
// what goes in and when.

// leafRows is the number of rows per kernel leaf.
const leafRows = len(bpf.ProfileUnwindLeaf{}.Rows)

// maxTableLeaves is how many leaves of one table the walker's index search
// reaches (UNWIND_MAX_LEAVES).
const maxTableLeaves = 16384

// LeafBytes is the kernel memory of one leaf of rows: the hash map's 4 KiB
// allocation.
const LeafBytes = 4096

// MaxProcessRanges is the number of executable mappings of a process the
// walker knows; a process with more keeps those with tables first.
const MaxProcessRanges = len(bpf.ProfileUnwindProc{}.Ranges)

// indexQuarantine is how long a freed slice of the leaf index stays unused:
// a sampler program that read a table's descriptor before it was deleted
// may still read its slice, for microseconds.
const indexQuarantine = time.Second

// ErrTableSpace reports that the kernel maps have no room for a table.
var ErrTableSpace = errors.New("no room for the unwind table")

// UnwindTables writes unwind tables into the sampler's maps. Safe for
// concurrent use.
type UnwindTables struct {
	procs, tables, index, leaves *ebpf.Map

	mu         sync.Mutex
	slices     map[uint32]indexSlice // by table id
	free       []indexSlice          // sorted by first
	quarantine []quarantined
	leafCount  int
	maxLeaves  int

	procMu  sync.Mutex
	procBuf bpf.ProfileUnwindProc // LoadProcess's value (4 KiB): reused, not allocated per process
}

type indexSlice struct{ first, n uint32 }

type quarantined struct {
	s     indexSlice
	until time.Time
}

func newUnwindTables(o *samplerObjects, maxLeaves int) *UnwindTables {
	return &UnwindTables{
		procs: o.UnwindProcs, tables: o.UnwindTables, index: o.UnwindIndex, leaves: o.UnwindLeaves,
		slices:    map[uint32]indexSlice{},
		free:      []indexSlice{{0, o.UnwindIndex.MaxEntries()}},
		maxLeaves: maxLeaves,
	}
}

// LoadTable writes table id (ids are never reused) into the kernel: its
// leaves, their index, then the descriptor that makes it visible to the
// walker.
func (u *UnwindTables) LoadTable(id uint32, t *unwind.Table) error {
	nleaves := (len(t.Rows) + leafRows - 1) / leafRows
	if nleaves == 0 || nleaves > maxTableLeaves {
		return fmt.Errorf("unwind table %d: %d leaves, want 1..%d", id, nleaves, maxTableLeaves)
	}
	slice, err := u.reserve(id, nleaves)
	if err != nil {
		return err
	}
	if err := u.writeLeaves(id, t, slice); err != nil {
		u.UnloadTable(id)
		return err
	}
	desc := bpf.ProfileUnwindTable{Base: t.Base, Nleaves: uint32(nleaves), IndexFirst: slice.first}
	if err := u.tables.Update(id, &desc, ebpf.UpdateNoExist); err != nil {
		u.UnloadTable(id)
		return fmt.Errorf("unwind table %d: %w", id, err)
	}
	return nil
}

// reserve allocates a slice of the index and counts the leaves.
func (u *UnwindTables) reserve(id uint32, nleaves int) (indexSlice, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.leafCount+nleaves > u.maxLeaves {
		return indexSlice{}, fmt.Errorf("%w: %d leaves wanted, %d of %d in use", ErrTableSpace, nleaves, u.leafCount, u.maxLeaves)
	}
	u.releaseQuarantined(time.Now())
	for i, f := range u.free {
		if f.n < uint32(nleaves) {
			continue
		}
		s := indexSlice{f.first, uint32(nleaves)}
		if f.n == s.n {
			u.free = slices.Delete(u.free, i, i+1)
		} else {
			u.free[i] = indexSlice{f.first + s.n, f.n - s.n}
		}
		u.slices[id] = s
		u.leafCount += nleaves
		return s, nil
	}
	return indexSlice{}, fmt.Errorf("%w: no run of %d free index slots", ErrTableSpace, nleaves)
}

// writeLeaves writes the rows in leaves, padding the last one with rows
// that no pc reaches, and the first pc of each leaf into the index.
func (u *UnwindTables) writeLeaves(id uint32, t *unwind.Table, s indexSlice) error {
	const batch = 32
	keys := make([]bpf.ProfileUnwindLeafKey, 0, batch)
	leaves := make([]bpf.ProfileUnwindLeaf, 0, batch)
	slots := make([]uint32, 0, s.n)
	firsts := make([]uint32, 0, s.n)
	flush := func() error {
		if len(keys) == 0 {
			return nil
		}
		if _, err := u.leaves.BatchUpdate(keys, leaves, nil); err != nil {
			return fmt.Errorf("unwind table %d: writing leaves: %w", id, err)
		}
		keys, leaves = keys[:0], leaves[:0]
		return nil
	}
	for k := uint32(0); k < s.n; k++ {
		rows := t.Rows[int(k)*leafRows : min(len(t.Rows), int(k+1)*leafRows)]
		var leaf bpf.ProfileUnwindLeaf
		for i := range leaf.Rows {
			if i < len(rows) {
				r := rows[i]
				leaf.Rows[i] = bpf.ProfileUnwindRow{Pc: r.PC, CfaOff: r.CFAOffset, CfaKind: uint8(r.CFAKind), Rbp: r.RBP}
			} else {
				leaf.Rows[i].Pc = ^uint32(0)
			}
		}
		keys = append(keys, bpf.ProfileUnwindLeafKey{Table: id, Leaf: k})
		leaves = append(leaves, leaf)
		slots = append(slots, s.first+k)
		firsts = append(firsts, rows[0].PC)
		if len(keys) == batch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	if _, err := u.index.BatchUpdate(slots, firsts, nil); err != nil {
		return fmt.Errorf("unwind table %d: writing its index: %w", id, err)
	}
	return nil
}

// UnloadTable removes table id: its descriptor first, so the walker stops
// using it, then its leaves; its index slice is reused after a quarantine.
func (u *UnwindTables) UnloadTable(id uint32) error {
	err := u.tables.Delete(id)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		err = nil
	}
	u.mu.Lock()
	s, ok := u.slices[id]
	if ok {
		delete(u.slices, id)
		u.leafCount -= int(s.n)
		u.quarantine = append(u.quarantine, quarantined{s, time.Now().Add(indexQuarantine)})
	}
	u.mu.Unlock()
	if !ok {
		return err
	}
	keys := make([]bpf.ProfileUnwindLeafKey, s.n)
	for k := range keys {
		keys[k] = bpf.ProfileUnwindLeafKey{Table: id, Leaf: uint32(k)}
	}
	if _, derr := u.leaves.BatchDelete(keys, nil); derr != nil && !errors.Is(derr, ebpf.ErrKeyNotExist) {
		err = errors.Join(err, fmt.Errorf("unwind table %d: deleting leaves: %w", id, derr))
	}
	return err
}

// releaseQuarantined returns the index slices whose quarantine ended to
// the free list, merging neighbours. u.mu is held.
func (u *UnwindTables) releaseQuarantined(now time.Time) {
	kept := u.quarantine[:0]
	for _, q := range u.quarantine {
		if now.Before(q.until) {
			kept = append(kept, q)
			continue
		}
		u.free = append(u.free, q.s)
	}
	u.quarantine = kept
	slices.SortFunc(u.free, func(a, b indexSlice) int { return int(a.first) - int(b.first) })
	merged := u.free[:0]
	for _, f := range u.free {
		if n := len(merged); n > 0 && merged[n-1].first+merged[n-1].n == f.first {
			merged[n-1].n += f.n
			continue
		}
		merged = append(merged, f)
	}
	u.free = merged
}

// LoadProcess gives the walker the executable mappings of pid's image
// (the cookie the sampler announced it with: the walker uses ranges only
// for that image). ranges must be sorted by Start; beyond
// MaxProcessRanges they are refused.
func (u *UnwindTables) LoadProcess(pid uint32, image uint64, ranges []unwind.Range) error {
	u.procMu.Lock()
	defer u.procMu.Unlock()
	p := &u.procBuf
	*p = bpf.ProfileUnwindProc{Cookie: image}
	for _, r := range ranges {
		// The walker's search compares addresses by the sign of their
		// difference, so they must be below 2^63: user space is ([vsyscall]
		// is not, and needs no unwinding). No code mapping is 4 GiB large.
		if r.Start >= 1<<63 || r.Len >= 1<<32 {
			continue
		}
		if int(p.Nranges) == MaxProcessRanges {
			return fmt.Errorf("unwind ranges of pid %d: more than %d", pid, MaxProcessRanges)
		}
		if n := p.Nranges; n > 0 && r.Start < p.Ranges[n-1].Start {
			return fmt.Errorf("unwind ranges of pid %d: not sorted", pid)
		}
		p.Ranges[p.Nranges] = bpf.ProfileUnwindRange{Start: r.Start, Bias: r.Bias, Len: uint32(r.Len), Table: r.Table}
		p.Nranges++
	}
	if err := u.procs.Update(pid, p, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("unwind ranges of pid %d: %w", pid, err)
	}
	return nil
}

// UnloadProcess forgets pid's mappings (the kernel side also does when
// the process execs or exits).
func (u *UnwindTables) UnloadProcess(pid uint32) error {
	if err := u.procs.Delete(pid); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("unwind ranges of pid %d: %w", pid, err)
	}
	return nil
}

// WantedTable returns the start of the range of pid whose table the
// walker asked for: it met code of a range loaded as unwind.TableOnDemand
// (bpf/unwind.h, PROC_TABLE_ASKED).
func (u *UnwindTables) WantedTable(pid uint32) (uint64, bool) {
	u.procMu.Lock()
	defer u.procMu.Unlock()
	p := &u.procBuf
	if err := u.procs.Lookup(pid, p); err != nil {
		return 0, false
	}
	i := p.Flags >> bpf.ProfileUnwindProcFlagsPROC_WANTED_SHIFT & 0xff
	if p.Flags&uint32(bpf.ProfileUnwindProcFlagsPROC_TABLE_ASKED) == 0 || i == 0 || i > p.Nranges || int(i) > len(p.Ranges) {
		return 0, false
	}
	r := p.Ranges[i-1]
	if r.Table != unwind.TableOnDemand {
		return 0, false
	}
	return r.Start, true
}

// KernelBytes estimates the kernel memory the tables use now: leaves,
// descriptors and the preallocated index.
func (u *UnwindTables) KernelBytes() uint64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return uint64(u.leafCount)*LeafBytes + uint64(len(u.slices))*64 + uint64(u.index.MaxEntries())*4
}

// TableKernelBytes is the kernel memory a table takes once loaded.
func TableKernelBytes(t *unwind.Table) int {
	return (len(t.Rows) + leafRows - 1) / leafRows * LeafBytes
}
