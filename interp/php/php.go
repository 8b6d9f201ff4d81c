// Package php is PHP's runtime for package interp: it finds the Zend
// engine in a process (the php8.2 CLI, php-fpm8.2, or libphp8.2.so in
// apache2), reads its engine API and build from the object, checks the
// structure layout of that API (layout.go, from PHP's headers) against the
// object's code and the running process before any of it is used, gives
// the BPF walker (bpf/interp_php.bpf.h) the process's executor_globals,
// and names the frames it records: Class::function (function outside a
// class), file and line.
//
// Supported: PHP 8.2 NTS builds (all of Debian's) on x86-64. Anything else
// (another version, a ZTS build, whose globals are per thread) is counted
// and profiled natively.
package php

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/cgscope/cgscope/interp"
)

// Runtime is PHP's interp.Runtime.
type Runtime struct {
	objects interp.Objects[*objectFacts]
}

// New returns PHP's runtime.
func New() *Runtime { return &Runtime{} }

// Name is PHP's profile.frame.type.
func (*Runtime) Name() string { return "php" }

// Candidate reports whether the file may hold the Zend engine, by name:
// php8.2, php-fpm8.2, libphp8.2.so and their unversioned forms.
func (*Runtime) Candidate(path string) bool { return candidate(path) }

// maxCheckedFrames bounds the frames of the running process checked at
// attach time.
const maxCheckedFrames = 64

// Attach finds the engine in the candidate, checks it against the running
// process and returns it.
func (rt *Runtime) Attach(t *interp.Target) (interp.Process, error) {
	b, err := rt.objects.Get(t, readObjectFacts)
	if err != nil {
		return nil, err
	}
	bias, err := b.bias(&t.Candidate)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", interp.ErrNotInterpreter, err)
	}
	version := b.version
	api, thread, _ := strings.Cut(b.buildID, ",")
	lay := layouts[api]
	switch {
	case b.buildID == "":
		return nil, &interp.UnsupportedError{Version: version, Reason: "no ZEND_MODULE_BUILD_ID in the object"}
	case lay == nil:
		return nil, &interp.UnsupportedError{Version: version, Reason: "no structure layout for engine " + api}
	case thread != "NTS":
		// ZTS keeps executor_globals per thread, and a debug build
		// (",NTS,debug") has other structures.
		return nil, &interp.UnsupportedError{Version: version, Reason: "build " + b.buildID + " (only NTS release builds are walked)", Build: true}
	case b.egSize < uint64(lay.egCurrentEx)+8:
		return nil, &interp.UnsupportedError{Version: version, Reason: fmt.Sprintf("executor_globals has %d bytes", b.egSize), Build: true}
	}
	if err := checkAccessor(lay, b); err != nil {
		return nil, &interp.UnsupportedError{Version: version, Reason: err.Error(), Build: true}
	}
	eg := b.eg + bias
	p := newProcess(t, lay, b, bias, version)
	if err := p.checkFrames(eg); err != nil {
		return nil, &interp.UnsupportedError{Version: version, Reason: err.Error(), Build: true, Retry: true}
	}
	// The HYBRID VM (zend_vm_kind() returns ZEND_VM_KIND_HYBRID, 4:
	// Zend/zend_vm_opcodes.h:29-35) built with global registers keeps the
	// running frame in r14 and its opline in r15 (Zend/zend_execute.c:
	// 54-56 of the 8.2 sources): the innermost frame's line is read from
	// r15, which is current where the frame's saved opline is not.
	vmRegs := bytes.Equal(b.vmKind, []byte{0xb8, 0x04, 0x00, 0x00, 0x00, 0xc3})
	p.state = lay.state(eg, vmRegs)
	return p, nil
}

// checkAccessor checks the layout against the object's own code:
// zend_get_executed_scope() (Zend/zend_execute_API.c) starts by loading
// executor_globals (lea in an executable, mov from the GOT in a shared
// library) and reading its current_execute_data. Both offsets the walker
// starts from are thereby confirmed on each object.
func checkAccessor(lay *layout, b *objectFacts) error {
	c := b.scopeCode
	if len(c) < 14 {
		return errors.New("no zend_get_executed_scope to check the layout against")
	}
	switch {
	case c[0] == 0x48 && c[1] == 0x8d && c[2] == 0x05: // lea disp32(%rip),%rax
		if eg := b.scopeAddr + 7 + uint64(int64(int32(binary.LittleEndian.Uint32(c[3:])))); eg != b.eg {
			return fmt.Errorf("zend_get_executed_scope reads %#x, not executor_globals (%#x)", eg, b.eg)
		}
	case c[0] == 0x48 && c[1] == 0x8b && c[2] == 0x05: // mov disp32(%rip),%rax: the GOT's slot
	default:
		return fmt.Errorf("zend_get_executed_scope starts % x, not a load of executor_globals", c[:7])
	}
	if c[7] != 0x48 || c[8] != 0x8b || c[9] != 0x80 || binary.LittleEndian.Uint32(c[10:]) != uint32(lay.egCurrentEx) {
		return fmt.Errorf("zend_get_executed_scope does not read current_execute_data at %d (% x)", lay.egCurrentEx, c[7:14])
	}
	return nil
}

// checkFrames walks the running process's frames, if it runs PHP code
// now, and checks each is what the layout says: a function of a known
// type, a user function's opcodes and file (a PHP string). Before the
// engine runs a script there are none, which is not an error: the object
// checks stand alone.
func (p *process) checkFrames(eg uint64) error {
	ex, err := p.mem.U64(eg + uint64(p.lay.egCurrentEx))
	if err != nil {
		return err
	}
	for i := 0; ex != 0 && i < maxCheckedFrames; i++ {
		func_, err := p.mem.U64(ex + uint64(p.lay.exFunc))
		if err != nil {
			return fmt.Errorf("frame %d: %w", i, err)
		}
		if func_ != 0 {
			f, err := p.readFunction(func_)
			if err != nil {
				return fmt.Errorf("frame %d: %w", i, err)
			}
			if f.typ != internalFunction && (f.opcodes == 0 || f.last == 0 || f.file == "") {
				return fmt.Errorf("frame %d: user function without opcodes or file", i)
			}
		}
		if ex, err = p.mem.U64(ex + uint64(p.lay.exPrev)); err != nil {
			return fmt.Errorf("frame %d: %w", i, err)
		}
	}
	return nil
}
