package ruby

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	"github.com/cgscope/cgscope/interp"
)

// objectFacts is what libruby says of itself, read once per object from its
// dynamic symbols, relocations, code and .eh_frame_hdr (Debian's libruby is
// stripped: only what is exported is named).
type objectFacts struct {
	// Exported: ruby_version (char[], "3.1.2"), ruby_current_vm_ptr and
	// the thread-local ruby_current_ec (its offset in libruby's TLS
	// block).
	version, vmPtr, ecTLS uint64
	// dtpmod is the GOT slot the dynamic linker fills with libruby's TLS
	// module id (the R_X86_64_DTPMOD64 relocation of ruby_current_ec).
	dtpmod uint64
	// globalSymbols is ruby_global_symbols (hidden), found from the code
	// of the exported rb_id2str; 0 if not found (C methods and classes
	// then go unnamed).
	globalSymbols uint64
	// loopStart, loopEnd are vm_exec_core (hidden, static): the function
	// rb_vm_exec calls that is the largest (the interpreter loop), its
	// extent from .eh_frame_hdr's table of function starts.
	loopStart, loopEnd uint64
	loads              []elf.ProgHeader
	// needs is set instead of the above for a ruby executable linked
	// with libruby (Debian's): the libruby it needs (DT_NEEDED), which
	// the dynamic linker may not have mapped yet when the process is
	// first seen.
	needs string
}

// candidateName matches libruby's names (libruby-3.1.so.3.1.2,
// libruby.so.3.1) and a static ruby's (ruby, ruby3.1).
var candidateName = regexp.MustCompile(`^(libruby(-\d+\.\d+)?\.so|ruby(\d+\.\d+)?$)`)

func baseName(path string) string {
	for i := len(path) - 1; i >= 0; i-- {
		if path[i] == '/' {
			return path[i+1:]
		}
	}
	return path
}

// readObjectFacts reads an object's symbols, relocations and code.
func readObjectFacts(r io.ReaderAt) (*objectFacts, error) {
	f, err := elf.NewFile(r)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", interp.ErrNotInterpreter, err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("%w: not an x86-64 object", interp.ErrNotInterpreter)
	}
	b := &objectFacts{}
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			b.loads = append(b.loads, p.ProgHeader)
		}
	}
	syms, err := f.DynamicSymbols()
	if err != nil {
		return nil, fmt.Errorf("%w: no dynamic symbols", interp.ErrNotInterpreter)
	}
	if libs, _ := f.ImportedLibraries(); f.Type == elf.ET_DYN || f.Type == elf.ET_EXEC {
		for _, lib := range libs {
			if strings.HasPrefix(lib, "libruby") && !hasSymbol(syms, "ruby_version") {
				return &objectFacts{needs: lib}, nil
			}
		}
	}
	var ecIndex int
	var id2str, vmExec elf.Symbol
	for i, s := range syms {
		if s.Section == elf.SHN_UNDEF {
			continue
		}
		switch s.Name {
		case "ruby_version":
			b.version = s.Value
		case "ruby_current_vm_ptr":
			b.vmPtr = s.Value
		case "ruby_current_ec":
			if elf.ST_TYPE(s.Info) == elf.STT_TLS {
				b.ecTLS, ecIndex = s.Value, i+1 // DynamicSymbols leaves out symbol 0
			}
		case "rb_id2str":
			id2str = s
		case "rb_vm_exec":
			vmExec = s
		}
	}
	if b.version == 0 || b.vmPtr == 0 || ecIndex == 0 || vmExec.Value == 0 {
		return nil, fmt.Errorf("%w: no ruby_version, ruby_current_vm_ptr, ruby_current_ec or rb_vm_exec", interp.ErrNotInterpreter)
	}
	if b.dtpmod, err = dtpmodSlot(f, ecIndex); err != nil {
		return nil, err
	}
	if id2str.Value != 0 {
		b.globalSymbols = b.findGlobalSymbols(r, id2str.Value)
	}
	starts, err := functionStarts(f)
	if err != nil {
		return nil, &interp.UnsupportedError{Reason: err.Error(), Build: true}
	}
	if vmExec.Size == 0 || vmExec.Size > maxFunctionBytes {
		return nil, &interp.UnsupportedError{Reason: fmt.Sprintf("rb_vm_exec of %d bytes", vmExec.Size), Build: true}
	}
	code := make([]byte, vmExec.Size)
	if err := b.readCode(r, vmExec.Value, code); err != nil {
		return nil, err
	}
	b.loopStart, b.loopEnd = largestCallee(code, vmExec.Value, starts)
	if b.loopStart == 0 {
		return nil, &interp.UnsupportedError{Reason: "no interpreter loop called from rb_vm_exec", Build: true}
	}
	return b, nil
}

// maxFunctionBytes bounds the code read of rb_vm_exec (about 3 KB in 3.1).
const maxFunctionBytes = 64 << 10

func hasSymbol(syms []elf.Symbol, name string) bool {
	for _, s := range syms {
		if s.Name == name && s.Section != elf.SHN_UNDEF {
			return true
		}
	}
	return false
}

// dtpmodSlot finds the GOT slot of the R_X86_64_DTPMOD64 relocation of
// symbol sym (ruby_current_ec): libruby's code reaches the variable through
// __tls_get_addr with it, and the dynamic linker writes the module id there.
func dtpmodSlot(f *elf.File, sym int) (uint64, error) {
	for _, s := range f.Sections {
		if s.Type != elf.SHT_RELA {
			continue
		}
		data, err := s.Data()
		if err != nil {
			return 0, err
		}
		for i := 0; i+24 <= len(data); i += 24 {
			off := binary.LittleEndian.Uint64(data[i:])
			info := binary.LittleEndian.Uint64(data[i+8:])
			if elf.R_X86_64(info&0xffffffff) == elf.R_X86_64_DTPMOD64 && int(info>>32) == sym {
				return off, nil
			}
		}
	}
	return 0, fmt.Errorf("%w: no DTPMOD64 relocation of ruby_current_ec", interp.ErrNotInterpreter)
}

// readCode reads the object's bytes at virtual address addr.
func (b *objectFacts) readCode(r io.ReaderAt, addr uint64, buf []byte) error {
	for _, p := range b.loads {
		if addr >= p.Vaddr && addr+uint64(len(buf)) <= p.Vaddr+p.Filesz {
			_, err := r.ReadAt(buf, int64(addr-p.Vaddr+p.Off))
			return err
		}
	}
	return fmt.Errorf("address %#x in no segment", addr)
}

// findGlobalSymbols follows rb_id2str's tail jump to get_id_serial_entry
// (symbol.c), whose first cmp %edi,disp32(%rip) (39 3d) compares with
// ruby_global_symbols.last_id, the first field. The result is checked on
// the process before use (symbols.go).
func (b *objectFacts) findGlobalSymbols(r io.ReaderAt, id2str uint64) uint64 {
	code := make([]byte, 64)
	if b.readCode(r, id2str, code) != nil {
		return 0
	}
	for i := 0; i+5 <= 40; i++ {
		if code[i] != 0xe9 {
			continue
		}
		target := id2str + uint64(i+5) + uint64(int64(int32(binary.LittleEndian.Uint32(code[i+1:]))))
		c2 := make([]byte, 96)
		if b.readCode(r, target, c2) != nil {
			return 0
		}
		for k := 0; k+6 <= len(c2); k++ {
			if c2[k] == 0x39 && c2[k+1] == 0x3d {
				return target + uint64(k+6) + uint64(int64(int32(binary.LittleEndian.Uint32(c2[k+2:]))))
			}
		}
		return 0
	}
	return 0
}

// functionStarts returns the sorted start addresses of the functions
// .eh_frame_hdr's search table lists (every function with unwind
// information, static ones included).
func functionStarts(f *elf.File) ([]uint64, error) {
	s := f.Section(".eh_frame_hdr")
	if s == nil {
		return nil, errors.New("no .eh_frame_hdr")
	}
	d, err := s.Data()
	if err != nil {
		return nil, err
	}
	// version 1; eh_frame_ptr pcrel|sdata4 (0x1b); fde_count udata4 (0x03);
	// table datarel|sdata4 (0x3b): what GNU ld writes.
	if len(d) < 12 || d[0] != 1 || d[1] != 0x1b || d[2] != 0x03 || d[3] != 0x3b {
		return nil, errors.New(".eh_frame_hdr of an unexpected encoding")
	}
	n := int(binary.LittleEndian.Uint32(d[8:]))
	if 12+8*n > len(d) {
		return nil, errors.New(".eh_frame_hdr cut short")
	}
	out := make([]uint64, n)
	for i := range out {
		out[i] = s.Addr + uint64(int64(int32(binary.LittleEndian.Uint32(d[12+8*i:]))))
	}
	return out, nil
}

// largestCallee returns the extent of the largest function the code (at
// addr) calls directly: a function runs from its start to the next one's.
func largestCallee(code []byte, addr uint64, starts []uint64) (uint64, uint64) {
	var best, bestEnd uint64
	for i := 0; i+5 <= len(code); i++ {
		if code[i] != 0xe8 {
			continue
		}
		target := addr + uint64(i+5) + uint64(int64(int32(binary.LittleEndian.Uint32(code[i+1:]))))
		lo, hi := 0, len(starts)
		for lo < hi {
			m := (lo + hi) / 2
			if starts[m] < target {
				lo = m + 1
			} else {
				hi = m
			}
		}
		if lo >= len(starts)-1 || starts[lo] != target {
			continue // not a function start: a byte inside another instruction
		}
		if end := starts[lo+1]; end-target > bestEnd-best {
			best, bestEnd = target, end
		}
	}
	return best, bestEnd
}

// bias is what the process adds to the object's addresses.
func (b *objectFacts) bias(m *interp.Mapping) (uint64, error) { return interp.Bias(b.loads, m) }
