package ruby

import (
	"bytes"
	"os"
	"testing"
)

const debianLibruby = "/usr/lib/x86_64-linux-gnu/libruby-3.1.so.3.1"

// What Debian's libruby says of itself: the figures the research into
// 3.1.2's binary found by hand (build ID 862794fb…), where this build is
// the one installed.
func TestObjectFacts(t *testing.T) {
	data, err := os.ReadFile(debianLibruby)
	if err != nil {
		t.Fatalf("%s is missing (scripts/install-deps.sh installs ruby3.1): %v", debianLibruby, err)
	}
	b, err := readObjectFacts(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ruby_version %#x, ruby_current_vm_ptr %#x, ruby_current_ec TLS+%#x, DTPMOD64 slot %#x, ruby_global_symbols %#x, vm_exec_core %#x..%#x",
		b.version, b.vmPtr, b.ecTLS, b.dtpmod, b.globalSymbols, b.loopStart, b.loopEnd)
	if b.ecTLS != 8 {
		t.Errorf("ruby_current_ec at TLS+%#x, want +8 (after ruby_native_thread)", b.ecTLS)
	}
	if b.loopEnd-b.loopStart < 8<<10 {
		t.Errorf("the interpreter loop is %d bytes: not vm_exec_core", b.loopEnd-b.loopStart)
	}
	if b.version == 0x2cc9e9 { // the 3.1.2 build the research read
		if b.dtpmod != 0x3aea48 || b.globalSymbols != 0x3af1c0 || b.loopStart != 0x24ebd0 || b.vmPtr != 0x3bd370 {
			t.Errorf("facts differ from the research's: %+v", b)
		}
	}
}

// FuzzReadObjectFacts: an object from a container is untrusted input; no
// input may panic or allocate without bound.
func FuzzReadObjectFacts(f *testing.F) {
	if data, err := os.ReadFile(debianLibruby); err == nil {
		f.Add(data[:min(len(data), 1<<16)])
	}
	f.Add([]byte("\x7fELF\x02\x01\x01"))
	f.Fuzz(func(t *testing.T, data []byte) {
		readObjectFacts(bytes.NewReader(data))
	})
}

// Debian's ruby executable names the libruby it needs: a process seen
// before the dynamic linker mapped it is tried again.
func TestExecutableNeedsLibruby(t *testing.T) {
	data, err := os.ReadFile("/usr/bin/ruby3.1")
	if err != nil {
		t.Fatalf("/usr/bin/ruby3.1 is missing (scripts/install-deps.sh installs ruby3.1): %v", err)
	}
	b, err := readObjectFacts(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if b.needs != "libruby-3.1.so.3.1" {
		t.Errorf("ruby3.1 needs %q, want libruby-3.1.so.3.1", b.needs)
	}
}
