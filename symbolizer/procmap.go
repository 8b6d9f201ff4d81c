package symbolizer

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A process's executable mappings are read with the PROCMAP_QUERY ioctl on its
// /proc/PID/maps (Linux 6.11+): the kernel hands over the executable mappings alone, with
// the build ID of each mapped file, where the text of /proc/PID/maps has a line, formatted
// by the kernel and parsed here, for every mapping (a Go process has some thirty, of
// which two are executable). The build ID lets an object already cached be used without
// a stat of its file. Kernels without the ioctl, and files that are not procfs (tests),
// fall back to the text.

// procmapQuery is struct procmap_query of <linux/fs.h>.
type procmapQuery struct {
	Size, QueryFlags, QueryAddr                        uint64
	VMAStart, VMAEnd, VMAFlags, VMAPageSize, VMAOffset uint64
	Inode                                              uint64
	DevMajor, DevMinor                                 uint32
	VMANameSize, BuildIDSize                           uint32
	VMANameAddr, BuildIDAddr                           uint64
}

const (
	// procmapQueryIoctl is PROCMAP_QUERY, _IOWR('f', 17, struct procmap_query).
	procmapQueryIoctl = 0xc0686611
	// Query flags: the VMA covering the address or else the next one, executable only.
	procmapCoveringOrNext = 0x10
	procmapExecutable     = 0x04
	// maxQueriedMappings stops a walk that does not advance (vm.max_map_count is 65530
	// by default).
	maxQueriedMappings = 1 << 20
	// maxMapsBytes bounds the text of /proc/PID/maps read (a JVM's is a few MB).
	maxMapsBytes = 64 << 20
)

// errNoProcmapQuery says the file does not answer PROCMAP_QUERY.
var errNoProcmapQuery = errors.New("PROCMAP_QUERY not supported")

// queryBuffers receive a mapping's path and build ID; pooled, on the heap, so the kernel
// writes into memory that cannot move.
type queryBuffers struct {
	name    [unix.PathMax]byte
	buildID [64]byte
}

var queryBufferPool = sync.Pool{New: func() any { return new(queryBuffers) }}

// readExecMappings returns pid's executable mappings, by PROCMAP_QUERY unless this
// Symbolizer found it unsupported, else from the text of /proc/PID/maps.
func (s *Symbolizer) readExecMappings(pid uint32) ([]Mapping, error) {
	fd, err := unix.Open(s.procPath(pid, "maps"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening maps: %w", err)
	}
	defer unix.Close(fd)
	if !s.noProcmapQuery.Load() {
		maps, err := queryExecMappings(fd)
		if err == nil {
			s.mapsQueries.Add(1)
			return maps, nil
		}
		if !errors.Is(err, errNoProcmapQuery) {
			return nil, err
		}
		s.noProcmapQuery.Store(true)
	}
	data, err := readAllFD(fd, maxMapsBytes)
	if err != nil {
		return nil, fmt.Errorf("reading maps: %w", err)
	}
	return parseMaps(data, true)
}

// queryExecMappings walks the executable mappings of the maps file fd with
// PROCMAP_QUERY, in address order.
func queryExecMappings(fd int) ([]Mapping, error) {
	buf := queryBufferPool.Get().(*queryBuffers)
	defer queryBufferPool.Put(buf)
	var out []Mapping
	for addr := uint64(0); len(out) < maxQueriedMappings; {
		q := procmapQuery{
			Size:        uint64(unsafe.Sizeof(procmapQuery{})),
			QueryFlags:  procmapCoveringOrNext | procmapExecutable,
			QueryAddr:   addr,
			VMANameSize: uint32(len(buf.name)),
			VMANameAddr: uint64(uintptr(unsafe.Pointer(&buf.name[0]))),
			BuildIDSize: uint32(len(buf.buildID)),
			BuildIDAddr: uint64(uintptr(unsafe.Pointer(&buf.buildID[0]))),
		}
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), procmapQueryIoctl, uintptr(unsafe.Pointer(&q)))
		switch {
		case errno == unix.ENOENT:
			return out, nil // no executable mapping at or above addr
		case errno == unix.ENOTTY || errno == unix.EINVAL || errno == unix.EOPNOTSUPP:
			return nil, errNoProcmapQuery
		case errno != 0:
			return nil, fmt.Errorf("PROCMAP_QUERY: %w", errno)
		case q.VMAEnd <= addr || q.VMAStart >= q.VMAEnd:
			return nil, fmt.Errorf("PROCMAP_QUERY: mapping %#x-%#x does not advance past %#x", q.VMAStart, q.VMAEnd, addr)
		}
		out = append(out, queriedMapping(&q, buf))
		addr = q.VMAEnd
	}
	return nil, fmt.Errorf("PROCMAP_QUERY: more than %d executable mappings", maxQueriedMappings)
}

// queriedMapping turns the kernel's answer into a Mapping.
func queriedMapping(q *procmapQuery, buf *queryBuffers) Mapping {
	m := Mapping{
		Start: q.VMAStart, Limit: q.VMAEnd, Offset: q.VMAOffset,
		Dev: makedev(uint64(q.DevMajor), uint64(q.DevMinor)), Inode: q.Inode,
		Exec: true,
	}
	if n := int(q.VMANameSize); n > 1 && n <= len(buf.name) {
		m.Path = string(buf.name[:n-1]) // the size counts the terminating NUL
		m.Deleted = strings.HasSuffix(m.Path, deletedSuffix)
	}
	if n := int(q.BuildIDSize); n > 0 && n <= len(buf.buildID) {
		m.BuildID = hex.EncodeToString(buf.buildID[:n])
	}
	return m
}

// readAllFD reads fd to its end, at most limit bytes.
func readAllFD(fd int, limit int) ([]byte, error) {
	buf := make([]byte, 0, 16<<10)
	for {
		if len(buf) == cap(buf) {
			if len(buf) >= limit {
				return nil, fmt.Errorf("longer than %d bytes", limit)
			}
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := unix.Read(fd, buf[len(buf):cap(buf)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+n]
	}
}
