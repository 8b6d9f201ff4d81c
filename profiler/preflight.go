package profiler

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Linux capability numbers (include/uapi/linux/capability.h).
const (
	capSysAdmin = 21
	capPerfmon  = 38
	capBPF      = 39
)

// LeastCapabilities are the Linux capabilities cgscope needs when it does not
// run as full root, named as Kubernetes and setpriv name them (no CAP_
// prefix). The README, the Helm chart and TestLeastPrivilege use this list.
var LeastCapabilities = []string{"BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE", "SYSLOG", "DAC_READ_SEARCH"}

// ErrPreflight wraps every reason the sampler cannot start on this host.
var ErrPreflight = errors.New("cgscope cannot profile on this host")

// Preflight checks, before anything is loaded, what the sampler needs from the
// host: the capabilities to load BPF and open perf events system-wide, and
// kernel BTF for CO-RE. It returns one error naming everything missing.
func Preflight() error {
	var missing []string
	caps, err := effectiveCaps()
	if err != nil {
		return fmt.Errorf("%w: reading capabilities: %w", ErrPreflight, err)
	}
	has := func(c uint) bool { return caps&(1<<c) != 0 }
	if !has(capSysAdmin) {
		if !has(capBPF) {
			missing = append(missing, "capability CAP_BPF (or CAP_SYS_ADMIN)")
		}
		if !has(capPerfmon) {
			missing = append(missing, "capability CAP_PERFMON (or CAP_SYS_ADMIN)")
		}
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		missing = append(missing, "kernel BTF at /sys/kernel/btf/vmlinux (a kernel built with CONFIG_DEBUG_INFO_BTF=y)")
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: missing %s; run as root or grant these to the cgscope binary", ErrPreflight, strings.Join(missing, ", "))
	}
	return nil
}

// effectiveCaps reads the CapEff mask of the calling process.
func effectiveCaps() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, errors.New("no CapEff line in /proc/self/status")
}
