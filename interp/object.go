package interp

import (
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/cgscope/cgscope/symbolizer"
)

// Objects keeps what a runtime read of each object holding an interpreter
// (its symbols, segments, code), by the Source's object: an interpreter run
// by many processes is read once. A read that failed for another reason
// than ErrNotInterpreter is not kept: it is tried again with the next
// process.
type Objects[T any] struct {
	mu   sync.Mutex
	objs map[any]*objectEntry[T]
}

type objectEntry[T any] struct {
	v   T
	err error
}

// maxObjects bounds the objects remembered; beyond it, all are forgotten
// (they are read again as their processes start).
const maxObjects = 64

// Get returns what read made of the target's candidate object, reading it
// on first use.
func (c *Objects[T]) Get(t *Target, read func(io.ReaderAt) (T, error)) (T, error) {
	key := t.Candidate.Object
	c.mu.Lock()
	e, ok := c.objs[key]
	c.mu.Unlock()
	if ok {
		return e.v, e.err
	}
	e = &objectEntry[T]{}
	e.err = t.Read(func(r io.ReaderAt) error {
		var err error
		e.v, err = read(r)
		return err
	})
	if e.err != nil && !errors.Is(e.err, ErrNotInterpreter) {
		var zero T
		return zero, e.err
	}
	c.mu.Lock()
	if c.objs == nil || len(c.objs) >= maxObjects {
		c.objs = map[any]*objectEntry[T]{}
	}
	c.objs[key] = e
	c.mu.Unlock()
	return e.v, e.err
}

// Bias is what the process adds to an object's addresses, from the mapping
// of its code: the PT_LOAD segment holding the mapping's file offset.
func Bias(loads []elf.ProgHeader, m *Mapping) (uint64, error) {
	for _, p := range loads {
		if m.Offset >= p.Off&^0xfff && m.Offset < p.Off+p.Filesz {
			return m.Start - m.Offset + p.Off - p.Vaddr, nil
		}
	}
	return 0, errors.New("no segment holds the mapping's offset")
}

// Loop is where an interpreter loop's code is, in object addresses of one
// object (its hot part, and the cold part GCC splits off): what a
// Process's IsLoop looks for.
type Loop struct {
	// The object, as the symbolizer's mappings name it.
	Path, BuildID string
	Ranges        [][2]uint64
}

// Contains reports whether the native frame f is in the loop. leaf is set
// for the innermost frame (an exact address, not a return address).
func (l *Loop) Contains(f *symbolizer.Frame, leaf bool) bool {
	m := f.Mapping
	if m == nil || f.Kernel || f.Interpreter != "" {
		return false
	}
	if l.BuildID != "" && m.BuildID != "" {
		if m.BuildID != l.BuildID {
			return false
		}
	} else if m.Path != l.Path {
		return false
	}
	a := f.ObjAddress
	if !leaf {
		a-- // a return address follows its call
	}
	for _, r := range l.Ranges {
		if a >= r[0] && a < r[1] {
			return true
		}
	}
	return false
}

// ProcTargets returns pid's executable mappings that candidate takes, as
// Targets read straight from /proc (its maps, its files through
// /proc/PID/root): how tests and benchmarks attach a Runtime without a
// symbolizer.
func ProcTargets(pid uint32, cache *Cache, candidate func(path string) bool) ([]*Target, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	maps, err := symbolizer.ParseMaps(f)
	if err != nil {
		return nil, err
	}
	var exec []Mapping
	for _, m := range maps {
		if m.Exec && strings.HasPrefix(m.Path, "/") {
			exec = append(exec, Mapping{Start: m.Start, Limit: m.Limit, Offset: m.Offset, Path: m.Path, Object: m.Path})
		}
	}
	var out []*Target
	for _, m := range exec {
		if !candidate(m.Path) {
			continue
		}
		path := fmt.Sprintf("/proc/%d/root%s", pid, m.Path)
		out = append(out, &Target{PID: pid, Mem: NewMemory(pid), Mappings: exec, Candidate: m, Cache: cache, Owner: uint64(pid),
			Read: func(read func(io.ReaderAt) error) error {
				f, err := os.Open(path)
				if err != nil {
					return err
				}
				defer f.Close()
				return read(f)
			}})
	}
	return out, nil
}
