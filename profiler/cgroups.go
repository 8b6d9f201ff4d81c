package profiler

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// CgroupResolver maps cgroup2 ids, which BPF reports, to cgroup paths such as
// "/system.slice/ssh.service". A cgroup2 id is the inode number of the
// cgroup's directory, so the resolver walks the cgroup2 tree and remembers
// what it saw. Unknown ids trigger a new walk, at most once per minInterval,
// so a storm of samples from a just-deleted cgroup costs one walk.
type CgroupResolver struct {
	root        string
	maxEntries  int
	minInterval time.Duration

	mu       sync.Mutex
	paths    map[uint64]string
	lastWalk time.Time
}

// NewCgroupResolver finds the cgroup2 mount (also on hybrid hosts, where it
// sits at /sys/fs/cgroup/unified) and indexes it.
func NewCgroupResolver(maxEntries int) (*CgroupResolver, error) {
	root, err := Cgroup2Mount()
	if err != nil {
		return nil, err
	}
	r := &CgroupResolver{root: root, maxEntries: maxEntries, minInterval: 2 * time.Second, paths: map[uint64]string{}}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.walk()
	return r, nil
}

// Root returns the cgroup2 mount point.
func (r *CgroupResolver) Root() string { return r.root }

// Path returns the cgroup path of id relative to the cgroup2 root ("/" for
// the root itself), or "" if no such cgroup exists (any longer).
func (r *CgroupResolver) Path(id uint64) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p, ok := r.paths[id]; ok {
		return p
	}
	if time.Since(r.lastWalk) < r.minInterval {
		return ""
	}
	r.walk()
	return r.paths[id]
}

// walk re-indexes the whole tree. The index is rebuilt, not grown, so
// deleted cgroups leave it and it stays bounded by maxEntries.
func (r *CgroupResolver) walk() {
	r.lastWalk = time.Now()
	paths := make(map[uint64]string, len(r.paths))
	errStop := errors.New("cgroup index full")
	_ = filepath.WalkDir(r.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil // a cgroup removed during the walk, or a control file
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		if len(paths) >= r.maxEntries {
			return errStop
		}
		rel := strings.TrimPrefix(p, r.root)
		if rel == "" {
			rel = "/"
		}
		paths[st.Ino] = rel
		return nil
	})
	r.paths = paths
}

// Cgroup2Mount returns where the cgroup2 hierarchy is mounted.
func Cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS... - FSTYPE SOURCE SUPER
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		fields := strings.Fields(pre)
		if len(fields) >= 5 {
			return fields[4], nil
		}
	}
	return "", fmt.Errorf("no cgroup2 filesystem mounted (see /proc/self/mountinfo)")
}
