package pipeline

import (
	"io"

	"github.com/cgscope/cgscope/interp"
	"github.com/cgscope/cgscope/symbolizer"
)

// Interpreters names interpreted frames and merges them into native stacks
// (interp.Registry).
type Interpreters interface {
	// Merge returns pid's native user frames with the interpreted frames
	// the walker of kind recorded (words) in place of the interpreter
	// loop's; end, when not empty, says why that walk stopped early.
	Merge(pid uint32, kind interp.Kind, native []symbolizer.Frame, words []uint64, end string) []symbolizer.Frame
}

// SetInterpreters makes samples carry their interpreted frames. Call it
// before Run.
func (p *Pipeline) SetInterpreters(i Interpreters) { p.interp = i }

// InterpSource lets the interpreter registry read processes and objects
// through the symbolizer, which has opened them already.
func InterpSource(sym *symbolizer.Symbolizer) interp.Source { return interpSource{sym} }

type interpSource struct{ sym *symbolizer.Symbolizer }

func (s interpSource) Mappings(pid uint32) ([]interp.Mapping, error) {
	ms, err := s.sym.ExecMappings(pid)
	if err != nil {
		return nil, err
	}
	out := make([]interp.Mapping, len(ms))
	for i, m := range ms {
		out[i] = interp.Mapping{Start: m.Start, Limit: m.Limit, Offset: m.Offset, Path: m.Path, BuildID: m.BuildID}
		if m.Object != (symbolizer.ObjectID{}) {
			out[i].Object = m.Object
		}
	}
	return out, nil
}

func (s interpSource) ReadObject(pid uint32, object any, read func(io.ReaderAt) error) error {
	return s.sym.ReadObject(pid, object.(symbolizer.ObjectID), read)
}
