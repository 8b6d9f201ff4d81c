package python

import (
	"debug/elf"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	"github.com/cgscope/cgscope/interp"
)

// objectFacts is what one object holding the interpreter (the python3.X
// executable, or libpython3.X.so where it is a shared library) says of
// itself, read once per object from its ELF symbols and segments.
type objectFacts struct {
	// Object addresses of the symbols used (0: absent). _PyRuntime,
	// Py_Version (3.11 on) and PyCode_Type are exported (.dynsym);
	// _PyEval_EvalFrameDefault too, and its split-off cold part is named
	// only in a .symtab, where one was kept.
	runtime, version, codeType uint64
	strType, bytesType         uint64 // PyUnicode_Type, PyBytes_Type
	evalStart, evalEnd         uint64
	coldStart, coldEnd         uint64
	// nameVersion is the minor version the file's name says (3.X), 0 if
	// it says none.
	nameVersion int
	loads       []elf.ProgHeader // PT_LOAD segments
}

// candidateName matches the interpreter's executable and library names:
// python3.11, python3.12d, libpython3.11.so.1.0.
var candidateName = regexp.MustCompile(`^(lib)?python3\.(\d+)`)

// nameMinor returns the minor version a file's base name says, 0 if none.
func nameMinor(path string) int {
	base := path
	for i := len(path) - 1; i >= 0; i-- {
		if path[i] == '/' {
			base = path[i+1:]
			break
		}
	}
	// Every mapping of every new process is asked: the prefix spares the
	// regexp for nearly all of them.
	if !strings.HasPrefix(base, "python3.") && !strings.HasPrefix(base, "libpython3.") {
		return 0
	}
	m := candidateName.FindStringSubmatch(base)
	if m == nil {
		return 0
	}
	v, _ := strconv.Atoi(m[2])
	return v
}

// readObjectFacts reads an object's symbols and segments.
func readObjectFacts(r io.ReaderAt, path string) (*objectFacts, error) {
	f, err := elf.NewFile(r)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", interp.ErrNotInterpreter, err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("%w: not an x86-64 object", interp.ErrNotInterpreter)
	}
	b := &objectFacts{nameVersion: nameMinor(path)}
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			b.loads = append(b.loads, p.ProgHeader)
		}
	}
	syms, _ := f.DynamicSymbols()
	b.take(syms)
	if b.evalStart == 0 || b.coldStart == 0 {
		if syms, err := f.Symbols(); err == nil {
			b.take(syms)
		}
	}
	if b.runtime == 0 || b.evalStart == 0 || b.codeType == 0 || b.strType == 0 || b.bytesType == 0 {
		return nil, fmt.Errorf("%w: no _PyRuntime, _PyEval_EvalFrameDefault or type objects", interp.ErrNotInterpreter)
	}
	return b, nil
}

func (b *objectFacts) take(syms []elf.Symbol) {
	for i := range syms {
		s := &syms[i]
		if s.Section == elf.SHN_UNDEF || s.Value == 0 {
			continue
		}
		switch s.Name {
		case "_PyRuntime":
			b.runtime = s.Value
		case "Py_Version":
			b.version = s.Value
		case "PyCode_Type":
			b.codeType = s.Value
		case "PyUnicode_Type":
			b.strType = s.Value
		case "PyBytes_Type":
			b.bytesType = s.Value
		case "_PyEval_EvalFrameDefault":
			b.evalStart, b.evalEnd = s.Value, s.Value+s.Size
		case "_PyEval_EvalFrameDefault.cold":
			b.coldStart, b.coldEnd = s.Value, s.Value+s.Size
		}
	}
}

// bias is what the process adds to the object's addresses.
func (b *objectFacts) bias(m *interp.Mapping) (uint64, error) { return interp.Bias(b.loads, m) }
