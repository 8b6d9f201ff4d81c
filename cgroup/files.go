package cgroup

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"

	"github.com/containerd/cgroups/v3/cgroup1"
	v1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	"github.com/containerd/cgroups/v3/cgroup2"
	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
)

// Value is one number read from a cgroup file. Known is false when the
// kernel does not say: the file or field is absent here (controller not
// enabled for the cgroup, cgroup not mirrored in a v1 hierarchy, root cgroup,
// PSI disabled), or the value means "no limit". An unknown value is not zero.
type Value struct {
	V     float64
	Known bool
}

func known(v float64) Value { return Value{V: v, Known: true} }

// FileStats is what the kernel's cgroup files say about one cgroup.
// Memory and CPU counters cover the cgroup and all its descendants, as the
// kernel keeps them. Counters (faults, seconds, periods) only grow.
type FileStats struct {
	// Bytes. Usage: v2 memory.current, v1 memory.usage_in_bytes. Working set
	// (as cAdvisor and the kubelet define it): usage minus inactive file
	// pages, floored at 0. RSS: v2 "anon", v1 "total_rss". Cache: v2 "file",
	// v1 "total_cache". Limit: v2 memory.max, v1 memory.limit_in_bytes;
	// unknown when unlimited ("max", or a v1 value ≥ 2^62).
	MemoryUsageBytes, MemoryWorkingSetBytes, MemoryRSSBytes, MemoryCacheBytes, MemoryLimitBytes Value
	// Page faults from memory.stat: minor = pgfault − pgmajfault.
	PageFaultsMinor, PageFaultsMajor Value
	// CFS bandwidth control: v2 cpu.stat throttled_usec, v1 cpu.stat
	// throttled_time; periods elapsed and periods throttled. Known only where
	// the cpu controller is on for the cgroup (never for the root).
	CPUThrottledSeconds             Value
	CPUThrottledPeriods, CPUPeriods Value
	// CPU time used: cgroup2 cpu.stat usage_usec wherever cgroup2 is mounted
	// (pure v2 and hybrid, where it needs no controller), v1 cpuacct.usage on
	// v1-only hosts.
	CPUUsageSeconds Value
	// Pressure stall information: the "total" of *.pressure (µs, here in
	// seconds). cgroup2 only; unknown where PSI is disabled.
	PressureCPUSomeSeconds, PressureMemorySomeSeconds, PressureMemoryFullSeconds, PressureIOSomeSeconds, PressureIOFullSeconds Value
}

// Cgroup layouts, as Layout reports them.
const (
	LayoutV2     = "v2"     // cgroup2 only (unified), controllers there
	LayoutHybrid = "hybrid" // cgroup2 for PSI and CPU time, controllers on v1 hierarchies
	LayoutV1     = "v1"     // v1 hierarchies only
)

// v1 memory.limit_in_bytes at or above this means "no limit" (the kernel
// shows PAGE_COUNTER_MAX pages, 2^63 − 4096 on x86-64).
const v1UnlimitedBytes = 1 << 62

// v1Stater is a cgroup1 controller of the containerd library, reading
// the files of one controller for a path relative to its hierarchy.
type v1Stater interface {
	Stat(path string, m *v1stats.Metrics) error
}

// FileReader reads cgroup files for cgroups named by their path
// relative to the cgroup2 root. It finds the mounts once, at construction;
// each Read only opens the files of one cgroup. Where a controller is on a
// v1 hierarchy (hybrid hosts), Read looks the same relative path up there, as
// systemd creates its units at the same path in every hierarchy; a cgroup
// absent there, or one MirrorChecks says holds other threads, has those
// fields unknown. It is safe for concurrent use.
type FileReader struct {
	layout string
	v2root string // cgroup2 mount point, "" when none

	// Controllers on v1 hierarchies, nil when not there.
	v1mem, v1cpu, v1cpuacct v1Stater
	// checks say whether the v1 memory and cpu cgroups of a path hold the
	// same threads as its cgroup2 cgroup (nil: assumed).
	checks atomic.Pointer[MirrorChecks]
}

// MirrorChecks say whether a v1 hierarchy's cgroup of a path holds the same
// threads as the cgroup2 cgroup of that path. They must be safe for
// concurrent use.
type MirrorChecks struct {
	Memory, CPU func(path string) bool
}

// CheckMirrors makes Read use the v1 memory and cpu cgroups of a path only
// where the checks pass; a nil check passes every path.
func (r *FileReader) CheckMirrors(c MirrorChecks) { r.checks.Store(&c) }

func (r *FileReader) mirrorChecks() MirrorChecks {
	if c := r.checks.Load(); c != nil {
		return *c
	}
	return MirrorChecks{}
}

func passes(check func(path string) bool, rel string) bool { return check == nil || check(rel) }

// NewFileReader finds the cgroup mounts in /proc/self/mountinfo.
func NewFileReader() (*FileReader, error) {
	m, err := ReadMounts()
	if err != nil {
		return nil, err
	}
	return newFileReader(m.V2, m.V1)
}

// newFileReader builds a reader over a cgroup2 mount point (or "") and
// v1 mount points by controller name.
func newFileReader(v2root string, v1 map[string]string) (*FileReader, error) {
	r := &FileReader{v2root: v2root}
	if m, ok := v1[string(cgroup1.Memory)]; ok {
		if root, ok := v1Root(m, cgroup1.Memory); ok {
			// The library reads memsw/kmem/kmem.tcp files too unless told not to.
			r.v1mem = cgroup1.NewMemory(root, cgroup1.IgnoreModules("memsw", "kmem", "kmem.tcp"))
		}
	}
	if m, ok := v1[string(cgroup1.Cpu)]; ok {
		if root, ok := v1Root(m, cgroup1.Cpu); ok {
			r.v1cpu = cgroup1.NewCpu(root)
		}
	}
	// cpuacct is needed only without cgroup2, which has CPU time built in.
	if m, ok := v1[string(cgroup1.Cpuacct)]; ok && v2root == "" {
		if root, ok := v1Root(m, cgroup1.Cpuacct); ok {
			r.v1cpuacct = cgroup1.NewCpuacct(root)
		}
	}
	_, mem := v1[string(cgroup1.Memory)]
	_, cpu := v1[string(cgroup1.Cpu)]
	_, acct := v1[string(cgroup1.Cpuacct)]
	switch {
	case v2root != "" && !mem && !cpu && !acct:
		r.layout = LayoutV2 // a stray v1 hierarchy (net_cls, say) changes nothing here
	case v2root != "":
		r.layout = LayoutHybrid
	case len(v1) > 0:
		r.layout = LayoutV1
	default:
		return nil, errors.New("no cgroup filesystem mounted (see /proc/self/mountinfo)")
	}
	return r, nil
}

// v1Root returns the directory that, joined with the controller's name,
// is its mount point, as the library's controllers expect. A hierarchy
// mounted under another name ("cpu,cpuacct") needs the usual symlink
// ("cpu" → "cpu,cpuacct") beside it.
func v1Root(mount string, name cgroup1.Name) (string, bool) {
	root := filepath.Dir(mount)
	if filepath.Base(mount) == string(name) {
		return root, true
	}
	a, err1 := os.Stat(mount)
	b, err2 := os.Stat(filepath.Join(root, string(name)))
	if err1 != nil || err2 != nil || !os.SameFile(a, b) {
		return "", false
	}
	return root, true
}

// Layout returns "v2", "hybrid" or "v1".
func (r *FileReader) Layout() string { return r.layout }

// Read reads the cgroup at path, relative to the cgroup2 root (e.g.
// "/system.slice/ssh.service"; on v1-only hosts, relative to each v1
// hierarchy). A cgroup that does not exist gives an error wrapping
// fs.ErrNotExist. Any other failure to read or parse a file leaves the
// fields it would have given unknown and is returned, joined, with the
// stats that could be read.
func (r *FileReader) Read(p string) (FileStats, error) {
	rel := path.Clean("/" + p)
	var st FileStats
	var errs []error
	found := false
	if r.v2root != "" {
		err := r.readV2(rel, &st)
		if errors.Is(err, fs.ErrNotExist) {
			return FileStats{}, err
		}
		if err != nil {
			errs = append(errs, err)
		}
		found = true
	}
	checks := r.mirrorChecks()
	if r.v1mem != nil && passes(checks.Memory, rel) {
		var m v1stats.Metrics
		if ok, err := v1Stat(r.v1mem, rel, &m); err != nil {
			errs = append(errs, err)
		} else if ok {
			found = true
			fillV1Memory(m.Memory, &st)
		}
	}
	if r.v1cpu != nil && passes(checks.CPU, rel) {
		m := v1stats.Metrics{CPU: &v1stats.CPUStat{Throttling: &v1stats.Throttle{}, Usage: &v1stats.CPUUsage{}}}
		if ok, err := v1Stat(r.v1cpu, rel, &m); err != nil {
			errs = append(errs, err)
		} else if ok {
			found = true
			t := m.CPU.Throttling
			st.CPUPeriods = known(float64(t.Periods))
			st.CPUThrottledPeriods = known(float64(t.ThrottledPeriods))
			st.CPUThrottledSeconds = known(float64(t.ThrottledTime) / 1e9)
		}
	}
	if r.v1cpuacct != nil {
		m := v1stats.Metrics{CPU: &v1stats.CPUStat{Throttling: &v1stats.Throttle{}, Usage: &v1stats.CPUUsage{}}}
		if ok, err := v1Stat(r.v1cpuacct, rel, &m); err != nil {
			errs = append(errs, err)
		} else if ok {
			found = true
			st.CPUUsageSeconds = known(float64(m.CPU.Usage.Total) / 1e9)
		}
	}
	if !found && len(errs) == 0 {
		return FileStats{}, fmt.Errorf("cgroup %s: %w", rel, fs.ErrNotExist)
	}
	return st, errors.Join(errs...)
}

// v1Stat reads one v1 controller's files for rel. A cgroup absent from
// that hierarchy (not mirrored, or deleted meanwhile) is not an error.
func v1Stat(s v1Stater, rel string, m *v1stats.Metrics) (bool, error) {
	err := s.Stat(rel, m)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, fmt.Errorf("cgroup %s: %w", rel, err)
	}
}

func fillV1Memory(m *v1stats.MemoryStat, st *FileStats) {
	if m == nil || m.Usage == nil {
		return
	}
	usage := m.Usage.Usage
	st.MemoryUsageBytes = known(float64(usage))
	st.MemoryWorkingSetBytes = known(float64(sub(usage, m.TotalInactiveFile)))
	st.MemoryRSSBytes = known(float64(m.TotalRSS))
	st.MemoryCacheBytes = known(float64(m.TotalCache))
	if l := m.Usage.Limit; l < v1UnlimitedBytes {
		st.MemoryLimitBytes = known(float64(l))
	}
	st.PageFaultsMajor = known(float64(m.TotalPgMajFault))
	st.PageFaultsMinor = known(float64(sub(m.TotalPgFault, m.TotalPgMajFault)))
}

// readV2 reads the cgroup2 files of rel into st: CPU time, PSI, and memory
// and CPU bandwidth where those controllers are not on v1 hierarchies.
func (r *FileReader) readV2(rel string, st *FileStats) error {
	dir := filepath.Join(r.v2root, rel)
	mgr, err := cgroup2.Load(rel, cgroup2.WithMountpoint(r.v2root))
	if err != nil {
		return fmt.Errorf("cgroup %s: %w", rel, err)
	}
	mask := cgroup2.StatCPU
	if r.v1mem == nil {
		mask |= cgroup2.StatMemory
	}
	// The library reads a missing file as 0. It runs first; then
	// cgroup.controllers says whether the cgroup (still) exists, and which of
	// the files it read were really there.
	metrics, statErr := mgr.StatFiltered(mask)
	ctrls, err := controllers(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("cgroup %s: %w", rel, fs.ErrNotExist)
		}
		return fmt.Errorf("cgroup %s: %w", rel, err)
	}
	var errs []error
	if statErr != nil {
		errs = append(errs, fmt.Errorf("cgroup %s: %w", rel, statErr))
		metrics = nil
	}
	isRoot := rel == "/"
	var memPSI *v2stats.PSIStats
	if metrics != nil && metrics.CPU != nil {
		c := metrics.CPU
		// usage_usec is in every cgroup2 cpu.stat, controller or not.
		st.CPUUsageSeconds = known(float64(c.UsageUsec) / 1e6)
		if r.v1cpu == nil && ctrls.cpu && !isRoot {
			st.CPUPeriods = known(float64(c.NrPeriods))
			st.CPUThrottledPeriods = known(float64(c.NrThrottled))
			st.CPUThrottledSeconds = known(float64(c.ThrottledUsec) / 1e6)
		}
		if c.PSI != nil && c.PSI.Some != nil {
			st.PressureCPUSomeSeconds = known(float64(c.PSI.Some.Total) / 1e6)
		}
	}
	if metrics != nil && metrics.Memory != nil && r.v1mem == nil && ctrls.memory {
		m := metrics.Memory
		// The root has memory.stat (on recent kernels) but no memory.current
		// or memory.max.
		if !isRoot || exists(filepath.Join(dir, "memory.stat")) {
			st.MemoryRSSBytes = known(float64(m.Anon))
			st.MemoryCacheBytes = known(float64(m.File))
			st.PageFaultsMajor = known(float64(m.Pgmajfault))
			st.PageFaultsMinor = known(float64(sub(m.Pgfault, m.Pgmajfault)))
		}
		if !isRoot {
			st.MemoryUsageBytes = known(float64(m.Usage))
			st.MemoryWorkingSetBytes = known(float64(sub(m.Usage, m.InactiveFile)))
			if m.UsageLimit != ^uint64(0) { // "max"
				st.MemoryLimitBytes = known(float64(m.UsageLimit))
			}
		}
		memPSI = m.PSI
	}
	// The library reads memory.pressure only along with memory.stat, and
	// io.pressure only along with io.stat; PSI exists without controllers.
	if memPSI == nil {
		memPSI, err = readPSI(filepath.Join(dir, "memory.pressure"))
		if err != nil {
			errs = append(errs, err)
		}
	}
	if memPSI != nil {
		if memPSI.Some != nil {
			st.PressureMemorySomeSeconds = known(float64(memPSI.Some.Total) / 1e6)
		}
		if memPSI.Full != nil {
			st.PressureMemoryFullSeconds = known(float64(memPSI.Full.Total) / 1e6)
		}
	}
	ioPSI, err := readPSI(filepath.Join(dir, "io.pressure"))
	if err != nil {
		errs = append(errs, err)
	}
	if ioPSI != nil {
		if ioPSI.Some != nil {
			st.PressureIOSomeSeconds = known(float64(ioPSI.Some.Total) / 1e6)
		}
		if ioPSI.Full != nil {
			st.PressureIOFullSeconds = known(float64(ioPSI.Full.Total) / 1e6)
		}
	}
	return errors.Join(errs...)
}

type controllerSet struct{ cpu, memory bool }

// controllers reads cgroup.controllers: the controllers available in the
// cgroup, and so which interface files it has.
func controllers(dir string) (controllerSet, error) {
	var buf [512]byte
	b, err := readSmall(filepath.Join(dir, "cgroup.controllers"), buf[:])
	if err != nil {
		return controllerSet{}, err
	}
	var s controllerSet
	for _, c := range bytes.Fields(b) {
		switch string(c) {
		case "cpu":
			s.cpu = true
		case "memory":
			s.memory = true
		}
	}
	return s, nil
}

// readPSI reads the "total" of each line of a *.pressure file. A missing
// file, or PSI disabled (EOPNOTSUPP on read), gives nil and no error.
func readPSI(file string) (*v2stats.PSIStats, error) {
	var buf [256]byte
	b, err := readSmall(file, buf[:])
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.EOPNOTSUPP) {
			return nil, nil
		}
		return nil, err
	}
	psi := &v2stats.PSIStats{}
	for _, line := range bytes.Split(b, []byte{'\n'}) {
		kind, rest, _ := bytes.Cut(line, []byte{' '})
		var d **v2stats.PSIData
		switch string(kind) {
		case "some":
			d = &psi.Some
		case "full":
			d = &psi.Full
		default:
			continue
		}
		_, total, ok := bytes.Cut(rest, []byte("total="))
		if !ok {
			return nil, fmt.Errorf("%s: no total in %q", file, line)
		}
		v, err := strconv.ParseUint(string(bytes.TrimSpace(total)), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		*d = &v2stats.PSIData{Total: v}
	}
	return psi, nil
}

// readSmall reads a file of at most len(buf) bytes, as cgroup control
// files are, with one read call (which is how the kernel serves them). It
// calls the kernel directly: os.Open would also register each cgroupfs file
// (they are pollable) with the runtime's epoll and unregister it on Close,
// two more system calls per file, many thousands per scrape.
func readSmall(file string, buf []byte) ([]byte, error) {
	fd, err := retryEINTR(func() (int, error) { return syscall.Open(file, syscall.O_RDONLY|syscall.O_CLOEXEC, 0) })
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: file, Err: err}
	}
	defer syscall.Close(fd)
	n, err := retryEINTR(func() (int, error) { return syscall.Read(fd, buf) })
	if err != nil {
		return nil, &fs.PathError{Op: "read", Path: file, Err: err}
	}
	return buf[:max(n, 0)], nil
}

func retryEINTR(f func() (int, error)) (int, error) {
	for {
		n, err := f()
		if err != syscall.EINTR {
			return n, err
		}
	}
}

func exists(file string) bool {
	_, err := os.Lstat(file)
	return err == nil
}

// sub is a − b floored at 0.
func sub(a, b uint64) uint64 {
	if b > a {
		return 0
	}
	return a - b
}
