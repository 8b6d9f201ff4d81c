package pipeline

import (
	"io"

	"github.com/cgscope/cgscope/symbolizer"
	"github.com/cgscope/cgscope/unwind"
)

// Unwinder loads the unwind tables of sampled processes (unwind.Registry).
type Unwinder interface {
	ProcessStarted(pid uint32, image uint64)
	ProcessGone(pid uint32, image uint64)
	ProcessMappingsChanged(pid uint32, image uint64)
}

// SetUnwinder makes new processes get unwind tables, after the symbolizer
// has snapshotted their mappings. Call it before the sampler's process
// events are run.
func (p *Pipeline) SetUnwinder(u Unwinder) { p.unwinder = u }

// UnwindSource lets the unwind tables read processes and objects through
// the symbolizer, which has opened them already.
func UnwindSource(sym *symbolizer.Symbolizer) unwind.Source { return unwindSource{sym} }

type unwindSource struct{ sym *symbolizer.Symbolizer }

func (u unwindSource) Mappings(pid uint32) ([]unwind.Mapping, error) {
	ms, err := u.sym.ExecMappings(pid)
	if err != nil {
		return nil, err
	}
	out := make([]unwind.Mapping, len(ms))
	for i, m := range ms {
		out[i] = unwind.Mapping{Start: m.Start, Limit: m.Limit, Offset: m.Offset}
		if m.Object != (symbolizer.ObjectID{}) {
			out[i].Object = m.Object
		}
	}
	return out, nil
}

// Refresh snapshots pid's mappings again, for the symbolizer too.
func (u unwindSource) Refresh(pid uint32) error { return u.sym.ProcessStarted(pid) }

func (u unwindSource) ReadObject(pid uint32, object any, read func(io.ReaderAt) error) error {
	return u.sym.ReadObject(pid, object.(symbolizer.ObjectID), read)
}
