package cgroup

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Resolver maps cgroup2 ids, which BPF reports, to cgroup paths such as
// "/system.slice/ssh.service" (or the ids of a v1 hierarchy to its paths).
// A cgroup id is the inode number of the cgroup's directory and also its
// kernfs file handle: an unknown id is opened by handle (exact and O(1),
// needs CAP_DAC_READ_SEARCH), else found by walking the tree again, at most
// once per minInterval, so a storm of samples from a just-deleted cgroup
// costs one walk.
type Resolver struct {
	root        string
	maxEntries  int
	minInterval time.Duration

	mu       sync.Mutex
	paths    map[uint64]string
	lastWalk time.Time
}

// NewResolver finds the cgroup2 mount (also on hybrid hosts, where it
// sits at /sys/fs/cgroup/unified) and indexes it.
func NewResolver(maxEntries int) (*Resolver, error) {
	root, err := V2Mount()
	if err != nil {
		return nil, err
	}
	return NewResolverAt(root, maxEntries), nil
}

// NewResolverAt indexes the cgroup hierarchy mounted at root (a v1
// controller's, say).
func NewResolverAt(root string, maxEntries int) *Resolver {
	r := &Resolver{root: root, maxEntries: maxEntries, minInterval: 2 * time.Second, paths: map[uint64]string{}}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.walk()
	return r
}

// Root returns the hierarchy's mount point.
func (r *Resolver) Root() string { return r.root }

// Path returns the cgroup path of id relative to the root ("/" for the root
// itself), or "" if no such cgroup exists (any longer).
func (r *Resolver) Path(id uint64) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p, ok := r.paths[id]; ok {
		return p
	}
	if p, ok := r.openByHandle(id); ok {
		if len(r.paths) < r.maxEntries {
			r.paths[id] = p
		}
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
func (r *Resolver) walk() {
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

// fileidKernfs is the kernfs file handle type (FILEID_KERNFS in the
// kernel): the handle is the 64-bit cgroup id.
const fileidKernfs = 0xfe

// openByHandle resolves an id through the kernel: open_by_handle_at on the
// cgroup2 mount, then read the opened directory's path.
func (r *Resolver) openByHandle(id uint64) (string, bool) {
	mount, err := unix.Open(r.root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", false
	}
	defer unix.Close(mount)
	handle := make([]byte, 8)
	binary.NativeEndian.PutUint64(handle, id)
	fd, err := unix.OpenByHandleAt(mount, unix.NewFileHandle(fileidKernfs, handle), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		return "", false
	}
	defer unix.Close(fd)
	abs, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil || !strings.HasPrefix(abs, r.root) {
		return "", false
	}
	if rel := strings.TrimPrefix(abs, r.root); rel != "" {
		return rel, true
	}
	return "/", true
}

// listInterval bounds how stale All may be: new cgroups show up in it
// within this time, and a scrape costs no tree walk most of the time.
const listInterval = 10 * time.Second

// All returns every cgroup in the tree, by id, as of at most listInterval ago.
func (r *Resolver) All() map[uint64]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.lastWalk) >= listInterval {
		r.walk()
	}
	out := make(map[uint64]string, len(r.paths))
	for id, p := range r.paths {
		out[id] = p
	}
	return out
}
