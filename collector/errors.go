package collector

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

// errNoTracefs joins the error of a tracepoint not found while tracefs,
// where the kernel lists its tracepoints, is not mounted: the tracepoint
// may well exist.
var errNoTracefs = errors.New("tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing")

// Unsupported reports whether err says the kernel lacks what a collector
// needs (a program or attach type, a helper: ebpf.ErrNotSupported; a
// tracepoint or a BTF type: not found), as an older or differently built
// kernel does. Anything else (the verifier refusing a program, missing
// privileges, tracefs not mounted) is a fault to name as it is.
func Unsupported(err error) bool {
	if errors.Is(err, errNoTracefs) {
		return false
	}
	return errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, fs.ErrNotExist) || errors.Is(err, btf.ErrNotFound)
}

// logDisabled says, in one line, why a collector does not run.
func logDisabled(name string, err error) {
	var verr *ebpf.VerifierError
	switch {
	case Unsupported(err):
		slog.Warn("collector disabled: unsupported by this kernel; the others keep running", "collector", name, "err", err)
	case errors.As(err, &verr):
		slog.Warn("collector disabled: the BPF verifier rejected its program; the others keep running",
			"collector", name, "err", err, "verifier_log", fmt.Sprintf("%+v", verr))
	default:
		slog.Warn("collector disabled: loading or attaching its programs failed; the others keep running", "collector", name, "err", err)
	}
}
