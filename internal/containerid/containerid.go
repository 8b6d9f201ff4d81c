// Package containerid reads the container id and Kubernetes pod UID out of a
// cgroup path, by the naming rules of the kubelet and the container runtimes
// (containerd, CRI-O, Docker, Podman; systemd and cgroupfs drivers). It is
// pure string parsing: no files, no kernel, no runtime socket.
package containerid

import (
	"regexp"
	"strings"
)

// Identity is what a cgroup path says about the container in it.
type Identity struct {
	ContainerID string // 64-hex (or runtime-specific) id, "" when unknown
	PodUID      string // Kubernetes pod UID with dashes (e.g. 8f3b...-....), "" when unknown
	Runtime     string // "containerd", "cri-o", "docker", "podman", "" when unknown
}

// The cgroup names that container runtimes and the kubelet create. Every
// pattern matches one whole path segment (a directory name), never a path.
var (
	// A container as a systemd scope (systemd cgroup driver): the runtime's
	// prefix, "conmon-" for CRI-O's and Podman's monitor process, the id.
	//   cri-containerd-<id>.scope  crio-<id>.scope  crio-conmon-<id>.scope
	//   docker-<id>.scope  libpod-<id>.scope  libpod-conmon-<id>.scope
	reScope = regexp.MustCompile(`^(cri-containerd|crio|docker|libpod|nerdctl)-(conmon-)?([0-9a-f]{64})\.scope$`)

	// A container directory of the cgroupfs driver: a bare id (kubelet with
	// containerd or dockershim, plain Docker under /docker, k3s), or CRI-O's
	// and Podman's crio-<id>, crio-conmon-<id>, libpod-<id>.
	reCgroupfs = regexp.MustCompile(`^(?:(crio|libpod)-(conmon-)?)?([0-9a-f]{64})$`)

	// A pod slice of the systemd driver. systemd reserves "-" for nesting, so
	// the kubelet writes the UID's dashes as underscores; static (mirror)
	// pods have a 32-hex hash as UID. The prefix names the QoS class and,
	// under kind or a custom --cgroup-root, more (kubelet-kubepods-...).
	//   kubepods-pod<uid>.slice  kubepods-burstable-pod<uid>.slice
	//   kubelet-kubepods-besteffort-pod<uid>.slice
	rePodSlice = regexp.MustCompile(`^(?:[a-z0-9]+-)*kubepods(?:-[a-z]+)?-pod([0-9a-f]{8}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{12}|[0-9a-f]{32})\.slice$`)

	// A pod directory of the cgroupfs driver: pod<uid> with dashes.
	rePodDir = regexp.MustCompile(`^pod([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})$`)

	// runc's systemd cgroup spec "slice:prefix:id" taken literally as a
	// directory name, which happens when the runtime uses the systemd driver
	// and the kubelet cgroupfs (a misconfiguration seen in the wild):
	//   kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>
	reColon = regexp.MustCompile(`^([^:/]*):(cri-containerd|crio|docker|libpod|nerdctl):([0-9a-f]{64})$`)
)

// runtimeOf names the runtime behind a cgroup-name prefix.
func runtimeOf(prefix string) string {
	switch prefix {
	case "cri-containerd", "nerdctl":
		return "containerd"
	case "crio":
		return "cri-o"
	case "docker":
		return "docker"
	case "libpod":
		return "podman"
	}
	return ""
}

// podUIDOf returns the pod UID, with dashes, that a pod segment names.
func podUIDOf(seg string) (string, bool) {
	if !strings.Contains(seg, "pod") {
		return "", false
	}
	if m := rePodSlice.FindStringSubmatch(seg); m != nil {
		return strings.ReplaceAll(m[1], "_", "-"), true
	}
	if m := rePodDir.FindStringSubmatch(seg); m != nil {
		return m[1], true
	}
	return "", false
}

// Parse extracts container id and pod UID from a cgroup path
// (cgroup2 path relative to the root, or a v1 path). It reads the path one
// segment at a time, so it also finds containers nested in containers (kind,
// k3d, minikube, Docker in Docker), where it reports the innermost container
// and the innermost pod enclosing it. A pod segment starts a new context: a
// container id seen above a pod (say the kind node's) is not that pod's.
// Segments below a container (Podman's ".../libpod-<id>.scope/container",
// systemd's init.scope inside a container) still belong to it.
//
// A conmon cgroup (crio-conmon-<id>, libpod-conmon-<id>) holds the runtime's
// monitor, not the container: its Runtime and pod UID are reported, its id is
// not. Paths of no container ("/", "/system.slice/ssh.service") yield the
// zero Identity. Parse never fails: text that matches
// no known layout is simply no container.
func Parse(path string) Identity {
	var id Identity
	parent := ""
	for path != "" {
		var seg string
		seg, path, _ = strings.Cut(path, "/")
		if seg == "" {
			continue
		}
		if uid, ok := podUIDOf(seg); ok {
			id = Identity{PodUID: uid}
			parent = seg
			continue
		}
		switch {
		case strings.HasSuffix(seg, ".scope"):
			if m := reScope.FindStringSubmatch(seg); m != nil {
				id.Runtime = runtimeOf(m[1])
				id.ContainerID = containerUnlessConmon(m[2], m[3])
			}
		case strings.Contains(seg, ":"):
			if m := reColon.FindStringSubmatch(seg); m != nil {
				if uid, ok := podUIDOf(m[1]); ok {
					id = Identity{PodUID: uid}
				}
				id.Runtime = runtimeOf(m[2])
				id.ContainerID = m[3]
			}
		case len(seg) >= 64:
			if m := reCgroupfs.FindStringSubmatch(seg); m != nil {
				id.Runtime = runtimeOf(m[1])
				if m[1] == "" && parent == "docker" {
					id.Runtime = "docker" // /docker/<id>: Docker's cgroupfs parent
				}
				id.ContainerID = containerUnlessConmon(m[2], m[3])
			}
		}
		parent = seg
	}
	return id
}

func containerUnlessConmon(conmon, cid string) string {
	if conmon != "" {
		return ""
	}
	return cid
}
