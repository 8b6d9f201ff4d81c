package interp

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Memory reads a process's memory with process_vm_readv: one system call
// per read, no file to open, and nothing the process can make block (a
// read of an unmapped address fails at once).
type Memory struct {
	pid int
}

// NewMemory returns a reader of pid's memory.
func NewMemory(pid uint32) *Memory { return &Memory{pid: int(pid)} }

// ErrShortRead reports a read that reached unmapped memory.
var ErrShortRead = errors.New("short read of process memory")

// Read fills buf from addr, whole or not at all.
func (m *Memory) Read(addr uint64, buf []byte) error {
	if len(buf) == 0 {
		return nil
	}
	local := []unix.Iovec{{Base: &buf[0]}}
	local[0].SetLen(len(buf))
	remote := []unix.RemoteIovec{{Base: uintptr(addr), Len: len(buf)}}
	n, err := unix.ProcessVMReadv(m.pid, local, remote, 0)
	if err != nil {
		return fmt.Errorf("reading %d bytes at %#x of pid %d: %w", len(buf), addr, m.pid, err)
	}
	if n != len(buf) {
		return fmt.Errorf("reading %d bytes at %#x of pid %d: %w (%d read)", len(buf), addr, m.pid, ErrShortRead, n)
	}
	return nil
}

// U64 reads a native-endian 64-bit word.
func (m *Memory) U64(addr uint64) (uint64, error) {
	var b [8]byte
	if err := m.Read(addr, b[:]); err != nil {
		return 0, err
	}
	return binary.NativeEndian.Uint64(b[:]), nil
}

// U32 reads a native-endian 32-bit word.
func (m *Memory) U32(addr uint64) (uint32, error) {
	var b [4]byte
	if err := m.Read(addr, b[:]); err != nil {
		return 0, err
	}
	return binary.NativeEndian.Uint32(b[:]), nil
}

// CString reads a NUL-terminated string of at most max bytes at addr; a
// longer one is an error.
func (m *Memory) CString(addr uint64, max int) (string, error) {
	buf := make([]byte, max)
	// Read up to the end of addr's page first: the string may end there
	// and the next page may be unmapped.
	n := min(max, int(4096-addr%4096))
	if err := m.Read(addr, buf[:n]); err != nil {
		return "", err
	}
	for {
		for i, c := range buf[:n] {
			if c == 0 {
				return string(buf[:i]), nil
			}
		}
		if n == max {
			return "", fmt.Errorf("string at %#x longer than %d bytes", addr, max)
		}
		more := min(max, n+4096)
		if err := m.Read(addr+uint64(n), buf[n:more]); err != nil {
			return "", err
		}
		n = more
	}
}

// Word returns the native-endian word at off in b, 0 when b is too short.
func Word(b []byte, off int) uint64 {
	if off < 0 || off+8 > len(b) {
		return 0
	}
	return binary.NativeEndian.Uint64(b[off:])
}

// Int32 returns the native-endian 32-bit signed integer at off in b.
func Int32(b []byte, off int) int32 {
	if off < 0 || off+4 > len(b) {
		return 0
	}
	return int32(binary.NativeEndian.Uint32(b[off:]))
}
