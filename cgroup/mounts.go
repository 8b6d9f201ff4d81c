// Package cgroup reads the host's cgroup hierarchy: where it is mounted
// (cgroup2, and v1 controllers on hybrid hosts), which path a cgroup id
// names, what a cgroup's files say (memory, page faults, CPU time and
// throttling, PSI), and on hybrid hosts which v1 cgroups hold the same
// threads as their cgroup2 namesakes. It uses no BPF and exports nothing:
// collectors and the pipeline build on it.
package cgroup

import (
	"bufio"
	"errors"
	"io"
	"os"
	"strings"
)

// Mounts are the cgroup filesystems of this mount namespace.
type Mounts struct {
	// V2 is the cgroup2 mount point, "" when none ("/sys/fs/cgroup", or
	// "/sys/fs/cgroup/unified" on hybrid hosts).
	V2 string
	// V1 is the mount point of each v1 controller by name ("memory",
	// "cpu"...). Named hierarchies such as name=systemd carry no controller
	// and are left out.
	V1 map[string]string
}

// ReadMounts parses /proc/self/mountinfo.
func ReadMounts() (Mounts, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return Mounts{}, err
	}
	defer f.Close()
	return parseMountinfo(f)
}

// errNoV2 says the host has no cgroup2 hierarchy.
var errNoV2 = errors.New("no cgroup2 filesystem mounted (see /proc/self/mountinfo)")

// V2Mount returns where the cgroup2 hierarchy is mounted.
func V2Mount() (string, error) {
	m, err := ReadMounts()
	if err != nil {
		return "", err
	}
	if m.V2 == "" {
		return "", errNoV2
	}
	return m.V2, nil
}

// parseMountinfo returns the first cgroup2 mount point and the first mount
// point of each v1 controller.
func parseMountinfo(r io.Reader) (Mounts, error) {
	m := Mounts{V1: map[string]string{}}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fields, sfields := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(sfields) < 1 {
			continue
		}
		mnt := fields[4]
		switch sfields[0] {
		case "cgroup2":
			if m.V2 == "" {
				m.V2 = mnt
			}
		case "cgroup":
			if len(sfields) >= 3 {
				addV1Controllers(m.V1, sfields[2], mnt)
			}
		}
	}
	return m, sc.Err()
}

// addV1Controllers records mnt for the controllers named in a v1 mount's
// super options ("rw,cpu,cpuacct"), unless one is already mounted elsewhere.
func addV1Controllers(v1 map[string]string, superOpts, mnt string) {
	for _, opt := range strings.Split(superOpts, ",") {
		switch opt {
		case "rw", "ro", "clone_children", "noprefix", "xattr", "cpuset_v2_mode", "favordynmods":
			continue
		}
		if strings.Contains(opt, "=") { // name=systemd, release_agent=...
			continue
		}
		if _, dup := v1[opt]; !dup {
			v1[opt] = mnt
		}
	}
}
