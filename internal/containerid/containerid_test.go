package containerid

import (
	"regexp"
	"strings"
	"testing"
)

// Ids and UIDs as they appear on real nodes (systemd-cgls, /proc/PID/cgroup,
// runtime docs and bug reports).
const (
	cidA   = "0ba8ac17e4e7a31fb82279503552fe94e64bab4745bf6fd2ff231e7c8ca8bed0"
	cidB   = "3aaaa76f09e1de6bb75e84f9c15b737a2d590f69757953e3ec262bd5861dc15b"
	cidK   = "d6701ec289c56e4391acb11d07474b3139466857a305490575508a8b7a9fcf22" // a kind/minikube node container
	uid    = "8f3b4a1e-1c2d-4e5f-a6b7-c8d9e0f1a2b3"
	uidU   = "8f3b4a1e_1c2d_4e5f_a6b7_c8d9e0f1a2b3" // the same UID in a systemd slice name
	static = "187bff14cccb94f179e943eacce55bb3"     // a static pod's UID (hash of its manifest)
	uidK3s = "404bd273-57bc-4508-a386-e2b76d3c9cfe" // from a k3s node
	uidKnd = "1e597579_417e_482f_bf65_5fe170c3aebd" // from a kind node
	uidKnD = "1e597579-417e-482f-bf65-5fe170c3aebd"
)

func TestParseContainerPath(t *testing.T) {
	none := Identity{}
	tests := []struct {
		name, path string
		want       Identity
	}{
		// Kubernetes, systemd cgroup driver.
		{"systemd containerd burstable",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + cidA + ".scope",
			Identity{cidA, uid, "containerd"}},
		{"systemd cri-o besteffort",
			"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/crio-" + cidA + ".scope",
			Identity{cidA, uid, "cri-o"}},
		{"systemd docker (dockershim/cri-dockerd) besteffort",
			"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod9692aa0e_748e_11e8_8dfa_76d458035df6.slice/docker-" + cidB + ".scope",
			Identity{cidB, "9692aa0e-748e-11e8-8dfa-76d458035df6", "docker"}},
		{"systemd guaranteed",
			"/kubepods.slice/kubepods-pod" + uidU + ".slice/cri-containerd-" + cidA + ".scope",
			Identity{cidA, uid, "containerd"}},
		{"systemd static pod UID",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + static + ".slice/cri-containerd-" + cidB + ".scope",
			Identity{cidB, static, "containerd"}},
		{"systemd cri-o conmon is not the container",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/crio-conmon-" + cidA + ".scope",
			Identity{"", uid, "cri-o"}},
		{"systemd pod slice alone",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice",
			Identity{PodUID: uid}},
		{"systemd QoS slice alone", "/kubepods.slice/kubepods-burstable.slice", none},
		{"kind node, seen inside",
			"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + uidKnd + ".slice/cri-containerd-" + cidA + ".scope",
			Identity{cidA, uidKnD, "containerd"}},
		{"kind node, seen from the host",
			"/system.slice/docker-" + cidK + ".scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + uidKnd + ".slice/cri-containerd-" + cidA + ".scope",
			Identity{cidA, uidKnD, "containerd"}},
		{"kind node's pod slice is not the node container's",
			"/system.slice/docker-" + cidK + ".scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + uidKnd + ".slice",
			Identity{PodUID: uidKnD}},
		{"kind node's own kubelet cgroup is the node container",
			"/system.slice/docker-" + cidK + ".scope/kubelet.slice/kubelet-kubepods.slice",
			Identity{ContainerID: cidK, Runtime: "docker"}},
		{"minikube cri-o in docker (cgroupfs outside, systemd inside)",
			"/docker/" + cidK + "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod2ca4a155_3599_498d_bb9d_4446693fa3ea.slice/crio-" + cidA + ".scope",
			Identity{cidA, "2ca4a155-3599-498d-bb9d-4446693fa3ea", "cri-o"}},
		{"runtime systemd, kubelet cgroupfs: literal slice:prefix:id",
			"/kubepods-besteffort-podb7c2cbdb_9ab5_47ef_977e_97e39a73da6d.slice:cri-containerd:" + cidB,
			Identity{cidB, "b7c2cbdb-9ab5-47ef-977e-97e39a73da6d", "containerd"}},
		{"literal slice:prefix:id under containerd.service",
			"/system.slice/containerd.service/kubepods-burstable-pod" + uidU + ".slice:cri-containerd:" + cidA,
			Identity{cidA, uid, "containerd"}},

		// Kubernetes, cgroupfs driver (also k3s and rke2 by default).
		{"cgroupfs burstable",
			"/kubepods/burstable/pod" + uid + "/" + cidA,
			Identity{ContainerID: cidA, PodUID: uid}},
		{"cgroupfs besteffort",
			"/kubepods/besteffort/pod" + uid + "/" + cidB,
			Identity{ContainerID: cidB, PodUID: uid}},
		{"cgroupfs guaranteed",
			"/kubepods/pod" + uid + "/" + cidA,
			Identity{ContainerID: cidA, PodUID: uid}},
		{"cgroupfs static pod",
			"/kubepods/burstable/pod" + static + "/" + cidA,
			Identity{ContainerID: cidA, PodUID: static}},
		{"cgroupfs pod alone", "/kubepods/burstable/pod" + uid, Identity{PodUID: uid}},
		{"k3s (containerd, cgroupfs)",
			"/kubepods/burstable/pod" + uidK3s + "/" + cidB,
			Identity{ContainerID: cidB, PodUID: uidK3s}},
		{"k3s besteffort",
			"/kubepods/besteffort/pod" + uidK3s + "/" + cidA,
			Identity{ContainerID: cidA, PodUID: uidK3s}},
		{"k3s with systemd driver",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + cidB + ".scope",
			Identity{cidB, uid, "containerd"}},
		{"k3d: k3s in docker",
			"/docker/" + cidK + "/kubepods/besteffort/pod" + uidK3s + "/" + cidA,
			Identity{ContainerID: cidA, PodUID: uidK3s}},
		{"k3s server process itself", "/system.slice/k3s.service", none},
		{"k3s detached to /k3s", "/k3s", none},
		{"cri-o cgroupfs", "/kubepods/burstable/pod" + uid + "/crio-" + cidA, Identity{cidA, uid, "cri-o"}},
		{"cri-o cgroupfs conmon", "/kubepods/burstable/pod" + uid + "/crio-conmon-" + cidA, Identity{"", uid, "cri-o"}},
		{"cri-o cgroupfs default parent", "/crio/crio-" + cidA, Identity{ContainerID: cidA, Runtime: "cri-o"}},

		// Docker without Kubernetes.
		{"docker cgroupfs", "/docker/" + cidA, Identity{ContainerID: cidA, Runtime: "docker"}},
		{"docker systemd", "/system.slice/docker-" + cidA + ".scope", Identity{ContainerID: cidA, Runtime: "docker"}},
		{"docker in docker", "/docker/" + cidK + "/docker/" + cidA, Identity{ContainerID: cidA, Runtime: "docker"}},
		{"docker systemd, systemd inside the container",
			"/system.slice/docker-" + cidA + ".scope/init.scope",
			Identity{ContainerID: cidA, Runtime: "docker"}},
		{"docker daemon", "/system.slice/docker.service", none},
		{"docker custom cgroup-parent", "/actions_job/" + cidA, Identity{ContainerID: cidA}},

		// Podman.
		{"podman rootful", "/machine.slice/libpod-" + cidA + ".scope", Identity{ContainerID: cidA, Runtime: "podman"}},
		{"podman rootless",
			"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + cidA + ".scope/container",
			Identity{ContainerID: cidA, Runtime: "podman"}},
		{"podman pod",
			"/machine.slice/machine-libpod_pod_" + cidK + ".slice/libpod-" + cidA + ".scope",
			Identity{ContainerID: cidA, Runtime: "podman"}},
		{"podman conmon", "/machine.slice/libpod-conmon-" + cidA + ".scope", Identity{Runtime: "podman"}},
		{"podman cgroupfs", "/libpod_parent/libpod-" + cidA, Identity{ContainerID: cidA, Runtime: "podman"}},

		// containerd without Kubernetes.
		{"nerdctl systemd", "/system.slice/nerdctl-" + cidB + ".scope", Identity{ContainerID: cidB, Runtime: "containerd"}},

		// No container.
		{"root", "/", none},
		{"empty", "", none},
		{"service", "/system.slice/ssh.service", none},
		{"session", "/user.slice/user-1000.slice/session-3.scope", none},
		{"init", "/init.scope", none},
		{"user manager", "/user.slice/user-1000.slice/user@1000.service/app.slice/dbus.service", none},
		{"kubelet", "/system.slice/kubelet.service", none},
		{"kubepods root", "/kubepods", none},
		{"containerd daemon", "/system.slice/containerd.service", none},

		// Near misses.
		{"short id", "/docker/" + cidA[:63], none},
		{"upper-case id", "/docker/" + strings.ToUpper(cidA), none},
		{"unknown scope prefix", "/system.slice/foo-" + cidA + ".scope", none},
		{"pod UID with a bad group", "/kubepods/burstable/pod8f3b4a1e-1c2d-4e5f-a6b7-c8d9e0f1a2b", none},
		{"pod slice outside kubepods", "/system.slice/foo-pod" + uidU + ".slice", none},
		{"no leading slash", "kubepods/burstable/pod" + uid + "/" + cidA, Identity{ContainerID: cidA, PodUID: uid}},
		{"double slashes", "//kubepods//pod" + uid + "//" + cidA + "/", Identity{ContainerID: cidA, PodUID: uid}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Parse(tt.path); got != tt.want {
				t.Errorf("Parse(%q)\n got %+v\nwant %+v", tt.path, got, tt.want)
			}
		})
	}
}

var (
	reValidCID = regexp.MustCompile(`^[0-9a-f]{64}$`)
	reValidUID = regexp.MustCompile(`^(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})$`)
)

func FuzzParseContainerPath(f *testing.F) {
	for _, s := range []string{
		"/", "", "/system.slice/ssh.service",
		"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + cidA + ".scope",
		"/kubepods/burstable/pod" + uid + "/" + cidA,
		"/kubepods-besteffort-pod" + uidU + ".slice:cri-containerd:" + cidB,
		"/docker/" + cidA, "/machine.slice/libpod-conmon-" + cidA + ".scope",
		"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + cidA + ".scope/container",
		"::::", "/\x00/\xff", ".scope", "pod", "kubepods-pod.slice",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		got := Parse(path)
		if got.ContainerID != "" && !reValidCID.MatchString(got.ContainerID) {
			t.Errorf("Parse(%q): invalid container id %q", path, got.ContainerID)
		}
		if got.PodUID != "" && !reValidUID.MatchString(got.PodUID) {
			t.Errorf("Parse(%q): invalid pod UID %q", path, got.PodUID)
		}
		switch got.Runtime {
		case "", "containerd", "cri-o", "docker", "podman":
		default:
			t.Errorf("Parse(%q): unknown runtime %q", path, got.Runtime)
		}
		if got.ContainerID != "" && !strings.Contains(path, got.ContainerID) {
			t.Errorf("Parse(%q): id %q is not in the path", path, got.ContainerID)
		}
		if again := Parse(path); again != got {
			t.Errorf("Parse(%q) not deterministic: %+v then %+v", path, got, again)
		}
	})
}

func BenchmarkParseContainerPath(b *testing.B) {
	paths := []string{
		"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + cidA + ".scope",
		"/kubepods/burstable/pod" + uid + "/" + cidA,
		"/system.slice/ssh.service",
		"/user.slice/user-1000.slice/session-3.scope",
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		_ = Parse(paths[i%len(paths)])
	}
}
