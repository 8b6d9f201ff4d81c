// Package ruby is CRuby's runtime for package interp: it finds the
// interpreter in a process (libruby, as Debian's /usr/bin/ruby3.1 links
// it), reads its version from the running process, checks the structure
// layout of that version (layout.go, taken from Ruby's headers) against the
// process before any of it is used, tells the BPF walker where each
// thread's execution context is (the thread-local ruby_current_ec, in
// glibc's static TLS block of libruby) and how its control frames are laid
// out, and names the frames it records as Ruby does: Class#method,
// Class.method for singleton methods, "block in Class#method", C methods
// (Array#each), with file and line.
//
// Supported: CRuby 3.1 (release builds, as Debian 12's ruby3.1) on x86-64
// with glibc. Anything else is counted and profiled natively.
package ruby

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/cgscope/cgscope/interp"
)

// Runtime is CRuby's interp.Runtime.
type Runtime struct {
	objects interp.Objects[*objectFacts]
}

// New returns CRuby's runtime.
func New() *Runtime { return &Runtime{} }

// Name is Ruby's profile.frame.type.
func (*Runtime) Name() string { return "ruby" }

// Candidate reports whether the file may hold CRuby: libruby (a shared
// build, as Debian's) or a ruby executable (a static build, which Attach
// finds no libruby symbols in unless it has them).
func (*Runtime) Candidate(path string) bool {
	// Every mapping of every new process is asked: the prefix spares the
	// regexp for nearly all of them.
	base := baseName(path)
	return (strings.HasPrefix(base, "libruby") || strings.HasPrefix(base, "ruby")) && candidateName.MatchString(base)
}

// glibc's TLS on x86-64 (variant II, sysdeps/x86_64/nptl/tls.h): the thread
// pointer is the TCB, whose second word is the DTV; a DTV entry is 16
// bytes {val, to_free}. A library loaded at start has its block in the
// static TLS area below the thread pointer, at the same offset in every
// thread for the life of the process.
const (
	tcbDTV       = 8
	dtvEntrySize = 16
	// maxStaticTLS bounds the offset of a static TLS block (glibc's
	// static TLS area is a few KiB plus its surplus).
	maxStaticTLS = 1 << 20
)

// Attach finds the interpreter in the candidate, checks it against the
// running process and returns it.
func (rt *Runtime) Attach(t *interp.Target) (interp.Process, error) {
	bin, err := rt.objects.Get(t, readObjectFacts)
	if err != nil {
		return nil, err
	}
	if bin.needs != "" {
		// The executable: its libruby is the interpreter. Until the
		// dynamic linker has mapped it, the process is tried again.
		for _, m := range t.Mappings {
			if strings.HasPrefix(baseName(m.Path), "libruby") {
				return nil, fmt.Errorf("%w: the interpreter is in %s", interp.ErrNotInterpreter, m.Path)
			}
		}
		return nil, interp.ErrNotReady
	}
	bias, err := bin.bias(&t.Candidate)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", interp.ErrNotInterpreter, err)
	}
	version, err := t.Mem.CString(bin.version+bias, 16)
	if err != nil {
		return nil, err
	}
	parts := strings.Split(version, ".")
	major, _ := strconv.Atoi(parts[0])
	minor := -1
	if len(parts) > 1 {
		minor, _ = strconv.Atoi(parts[1])
	}
	lay := layouts[minor]
	if major != 3 || lay == nil {
		return nil, &interp.UnsupportedError{Version: version, Reason: "no structure layout for this version"}
	}
	tls, err := threadContexts(t, lay, bin, bias)
	if err != nil {
		var unsupported *interp.UnsupportedError
		if errors.As(err, &unsupported) {
			unsupported.Version = version
		}
		return nil, err
	}
	return newProcess(t, lay, bin, bias, lay.state(tls), version), nil
}

// threadContexts finds where the walker reads each thread's execution
// context: the offset from the thread pointer of ruby_current_ec, checked
// on the main thread against the VM's own records (rb_thread_t names its
// ec, the ec names its thread, the thread its VM). It returns ErrNotReady
// until the VM has its main thread.
func threadContexts(t *interp.Target, lay *layout, bin *objectFacts, bias uint64) (int64, error) {
	mem := t.Mem
	vm, err := mem.U64(bin.vmPtr + bias)
	if err != nil {
		return 0, err
	}
	if vm == 0 {
		return 0, interp.ErrNotReady
	}
	th, err := mem.U64(vm + lay.vmMainThread)
	if err != nil {
		return 0, err
	}
	if th == 0 {
		return 0, interp.ErrNotReady
	}
	build := func(format string, args ...any) error {
		return &interp.UnsupportedError{Reason: fmt.Sprintf(format, args...), Build: true}
	}
	if v, err := mem.U64(th + lay.threadVM); err != nil || v != vm {
		return 0, build("the main thread does not name its VM (rb_thread_t.vm)")
	}
	ec, err := mem.U64(th + lay.threadEC)
	if err != nil || ec == 0 {
		return 0, interp.ErrNotReady
	}
	if v, err := mem.U64(ec + uint64(lay.ecThread)); err != nil || v != th {
		return 0, build("the main thread's execution context does not name it (thread_ptr)")
	}
	if err := checkFrames(mem, lay, ec); err != nil {
		return 0, err
	}
	modid, err := mem.U64(bin.dtpmod + bias)
	if err != nil {
		return 0, err
	}
	if modid == 0 || modid > 1<<16 {
		return 0, build("libruby's TLS module id %d", modid)
	}
	tp, err := mem.U64(th + lay.threadID)
	if err != nil || tp == 0 {
		return 0, interp.ErrNotReady
	}
	dtv, err := mem.U64(tp + tcbDTV)
	if err != nil {
		return 0, build("no glibc thread control block at the main thread's pthread_t: %v", err)
	}
	block, err := mem.U64(dtv + dtvEntrySize*modid)
	if err != nil {
		return 0, err
	}
	off := tp - block
	if block == 0 || block > tp || off > maxStaticTLS {
		return 0, build("libruby's thread-locals are not in the static TLS area (a dlopen'ed libruby?)")
	}
	got, err := mem.U64(block + bin.ecTLS)
	if err != nil {
		return 0, err
	}
	if got != ec {
		// The main thread sets it at start: try again once it has.
		return 0, &interp.UnsupportedError{Reason: "ruby_current_ec of the main thread is not its execution context", Build: true, Retry: true}
	}
	return int64(bin.ecTLS) - int64(off), nil
}

// frameMagicDummy is VM_FRAME_MAGIC_DUMMY (vm_core.h:1248): the frame
// rb_ec_initialize_vm_stack pushes first at the end of every VM stack
// (vm.c:3085-3091), under all the others.
const (
	frameMagicMask  = 0x7fff0001
	frameMagicDummy = 0x79990001
)

// checkFrames checks the control-frame layout the walker will use on an
// execution context: its frame pointer lies in its VM stack a whole number
// of frames from the end, and the bottom frame's env flags say DUMMY.
func checkFrames(mem *interp.Memory, lay *layout, ec uint64) error {
	var hdr [24]byte
	if err := mem.Read(ec, hdr[:]); err != nil {
		return err
	}
	stack, size, cfp := interp.Word(hdr[:], int(lay.ecVMStack)), interp.Word(hdr[:], int(lay.ecVMStackSize)), interp.Word(hdr[:], int(lay.ecCFP))
	fsize := uint64(lay.cfpSize)
	end := stack + 8*size
	if stack == 0 || size == 0 || size > 1<<28 || cfp < stack || cfp >= end || (end-cfp)%fsize != 0 {
		return &interp.UnsupportedError{Reason: "the main thread's frame pointer is not in its VM stack", Build: true, Retry: true}
	}
	ep, err := mem.U64(end - fsize + uint64(lay.cfpEP))
	if err != nil {
		return err
	}
	flags, err := mem.U64(ep)
	if err != nil {
		return err
	}
	if flags&frameMagicMask != frameMagicDummy {
		return &interp.UnsupportedError{Reason: fmt.Sprintf("the VM stack's bottom frame has flags %#x, not a dummy frame's", flags), Build: true, Retry: true}
	}
	return nil
}
