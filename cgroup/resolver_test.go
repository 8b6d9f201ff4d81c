package cgroup

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func TestCgroupResolver(t *testing.T) {
	requireRoot(t)
	r, err := NewResolver(1 << 16)
	if err != nil {
		t.Fatal(err)
	}
	if p := r.Path(1); p != "/" {
		t.Errorf("root cgroup id 1 resolved to %q", p)
	}
	dir := filepath.Join(r.Root(), "cgscope-resolver-test")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(dir)
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	r.minInterval = time.Hour // no re-walk: found by handle
	ino := st.Sys().(*syscall.Stat_t).Ino
	if p := r.Path(ino); p != "/cgscope-resolver-test" {
		t.Errorf("new cgroup resolved to %q", p)
	}
	if p := r.Path(1 << 62); p != "" {
		t.Errorf("unknown id resolved to %q", p)
	}
}
