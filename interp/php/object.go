package php

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"io"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/cgscope/cgscope/interp"
)

// objectFacts is what one object holding the Zend engine (the php8.2 CLI
// or php-fpm8.2 executable, or libphp8.2.so in apache2) says of itself,
// read once per object from its exported symbols (.dynsym: Debian strips
// the rest), its code and its read-only strings.
type objectFacts struct {
	// Object addresses. executor_globals (EG) is ZEND_API, exported in
	// every build (Zend/zend_globals_macros.h:45); egSize is its st_size.
	eg, egSize         uint64
	execStart, execEnd uint64 // execute_ex, the VM loop
	coldStart, coldEnd uint64 // its split-off cold part (0: none found)
	executeExVar       uint64 // zend_execute_ex, the pointer extensions override
	vmKind             []byte // zend_vm_kind()'s code
	scopeCode          []byte // zend_get_executed_scope()'s first bytes
	scopeAddr          uint64
	buildID, version   string // "API20220829,NTS,...", "8.2.36-1~deb12u1"
	loads              []elf.ProgHeader
}

// candidateName matches the engine's executable and library names: php,
// php8.2, php-fpm8.2, php-cgi8.2, libphp8.2.so, libphp.so.
var candidateName = regexp.MustCompile(`^(php(-fpm|-cgi)?[0-9.]*|libphp[0-9.]*\.so.*)$`)

// Every mapping of every new process is asked: the prefix spares the
// regexp for nearly all of them.
func candidate(path string) bool {
	base := filepath.Base(path)
	return (strings.HasPrefix(base, "php") || strings.HasPrefix(base, "libphp")) && candidateName.MatchString(base)
}

// buildIDPattern is ZEND_MODULE_BUILD_ID (Zend/zend_modules.h:34,47,
// Zend/zend_build.h:28): the engine API, then ",NTS" or ",TS", then the
// debug and compiler tags.
var buildIDPattern = regexp.MustCompile(`API[0-9]{8},N?TS[,A-Za-z0-9=.-]*`)

// versionPattern is SAPI_PHP_VERSION_HEADER (main/SAPI.h:287): the plain
// version string is merged into its tail by the linker.
var versionPattern = regexp.MustCompile(`X-Powered-By: PHP/([0-9]+\.[0-9]+\.[0-9]+[^\x00]*)`)

// readObjectFacts reads an object's symbols, code and strings.
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
	syms, _ := f.DynamicSymbols()
	var vmKind, scope elf.Symbol
	for _, s := range syms {
		if s.Section == elf.SHN_UNDEF || s.Value == 0 {
			continue
		}
		switch s.Name {
		case "executor_globals":
			b.eg, b.egSize = s.Value, s.Size
		case "execute_ex":
			b.execStart, b.execEnd = s.Value, s.Value+s.Size
		case "zend_execute_ex":
			b.executeExVar = s.Value
		case "zend_vm_kind":
			vmKind = s
		case "zend_get_executed_scope":
			scope = s
		}
	}
	if b.eg == 0 || b.execStart == 0 {
		return nil, fmt.Errorf("%w: no executor_globals or execute_ex", interp.ErrNotInterpreter)
	}
	if b.vmKind, err = readAt(f, vmKind.Value, min(vmKind.Size, 16)); err != nil {
		return nil, err
	}
	b.scopeAddr = scope.Value
	if b.scopeCode, err = readAt(f, scope.Value, min(scope.Size, 64)); err != nil {
		return nil, err
	}
	if rodata := f.Section(".rodata"); rodata != nil {
		data, err := rodata.Data()
		if err != nil {
			return nil, fmt.Errorf("reading .rodata: %w", err)
		}
		b.buildID = string(buildIDPattern.Find(data))
		if m := versionPattern.FindSubmatch(data); m != nil {
			b.version = string(m[1])
		}
	}
	if eh := f.Section(".eh_frame"); eh != nil {
		if data, err := eh.Data(); err == nil {
			b.coldStart, b.coldEnd = coldPart(data, eh.Addr, b.execStart)
		}
	}
	return b, nil
}

// readAt reads n bytes at an object address from the segment holding it.
func readAt(f *elf.File, addr, n uint64) ([]byte, error) {
	if addr == 0 || n == 0 {
		return nil, nil
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && addr >= p.Vaddr && addr+n <= p.Vaddr+p.Filesz {
			buf := make([]byte, n)
			if _, err := p.ReadAt(buf, int64(addr-p.Vaddr)); err != nil {
				return nil, fmt.Errorf("reading %#x: %w", addr, err)
			}
			return buf, nil
		}
	}
	return nil, fmt.Errorf("%#x is in no segment", addr)
}

// coldPart finds execute_ex's cold part, which GCC split off without a
// symbol of its own (php8.2's execute_ex.cold): its FDE is the one that
// follows execute_ex's in .eh_frame, and both describe the same frame.
// Only FDEs whose CIE encodes addresses pc-relative, 4-byte signed
// (DW_EH_PE_pcrel|sdata4, 0x1b: what GCC emits) are read; anything else
// finds none, and the cold part's frames stay native.
func coldPart(eh []byte, addr, start uint64) (uint64, uint64) {
	le := binary.LittleEndian
	found := false
	for off := 0; off+8 <= len(eh); {
		n := int(le.Uint32(eh[off:]))
		if n == 0 || n == 0xffffffff || off+4+n > len(eh) {
			return 0, 0 // the terminator, or a 64-bit length this does not read
		}
		rec := eh[off+4 : off+4+n]
		if id := le.Uint32(rec); id != 0 && len(rec) >= 12 { // an FDE
			cie := off + 4 - int(id)
			if cie < 0 || !pcrelSdata4(eh, cie) {
				return 0, 0
			}
			pc := uint64(int64(addr) + int64(off+8) + int64(int32(le.Uint32(rec[4:]))))
			size := uint64(le.Uint32(rec[8:]))
			if found {
				return pc, pc + size
			}
			found = pc == start
		}
		off += 4 + n
	}
	return 0, 0
}

// pcrelSdata4 reports whether the CIE at off has augmentation "zR" with
// the FDE pointer encoding DW_EH_PE_pcrel|DW_EH_PE_sdata4.
func pcrelSdata4(eh []byte, off int) bool {
	if off+9 > len(eh) {
		return false
	}
	rec := eh[off+8:] // after length and CIE id
	if len(rec) < 1 || rec[0] != 1 && rec[0] != 3 {
		return false
	}
	aug, rest, ok := bytes.Cut(rec[1:], []byte{0})
	if !ok || string(aug) != "zR" {
		return false
	}
	// code alignment, data alignment (LEB128), return register, the
	// augmentation length (LEB128), then the R encoding.
	i := 0
	for k := 0; k < 2; k++ {
		for i < len(rest) && rest[i]&0x80 != 0 {
			i++
		}
		i++
	}
	if rec[0] == 1 {
		i++
	} else {
		for i < len(rest) && rest[i]&0x80 != 0 {
			i++
		}
		i++
	}
	for i < len(rest) && rest[i]&0x80 != 0 {
		i++
	}
	i++
	return i < len(rest) && rest[i] == 0x1b
}

// bias is what the process adds to the object's addresses.
func (b *objectFacts) bias(m *interp.Mapping) (uint64, error) { return interp.Bias(b.loads, m) }
