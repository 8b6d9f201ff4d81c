package bpf

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestGeneratedMatchesSources rebuilds the BPF object and Go bindings from the
// C sources with the pinned clang, exactly as `make generate` does (the
// arguments are read from the go:generate line), and fails when the committed
// files differ: someone changed a .c or .h file without `make generate`.
func TestGeneratedMatchesSources(t *testing.T) {
	if _, err := exec.LookPath("clang-19"); err != nil {
		t.Fatalf("clang-19 not installed (make test installs it): %v", err)
	}
	tmp := t.TempDir()
	bpf2go := filepath.Join(tmp, "bpf2go")
	if out, err := exec.Command("go", "build", "-o", bpf2go, "github.com/cilium/ebpf/cmd/bpf2go").CombinedOutput(); err != nil {
		t.Fatalf("building bpf2go: %v\n%s", err, out)
	}
	// Compile a copy elsewhere, which also proves the output does not
	// depend on the checkout's path.
	src := filepath.Join(tmp, "src")
	os.Mkdir(src, 0o755)
	sources, _ := filepath.Glob("*.[ch]")
	for _, f := range sources {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(src, f), data, 0o644)
	}
	for _, args := range generateArgs(t) {
		cmd := exec.Command(bpf2go, args...)
		cmd.Dir = src
		cmd.Env = append(os.Environ(), "GOPACKAGE=bpf")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("bpf2go %v: %v\n%s", args, err, out)
		}
	}
	generated, _ := filepath.Glob(filepath.Join(src, "*_bpfel.*"))
	if len(generated) == 0 {
		t.Fatal("bpf2go generated nothing")
	}
	for _, path := range generated {
		f := filepath.Base(path)
		want, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("committed %s does not match its sources: run `make generate` and commit", f)
		}
	}
}

// generateArgs returns bpf2go's arguments from each go:generate line in gen.go.
func generateArgs(t *testing.T) [][]string {
	f, err := os.Open("gen.go")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var all [][]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), "//go:generate go run github.com/cilium/ebpf/cmd/bpf2go "); ok {
			all = append(all, splitQuoted(line))
		}
	}
	if len(all) == 0 {
		t.Fatal("no bpf2go go:generate line in gen.go")
	}
	return all
}

// splitQuoted splits on spaces, keeping "double quoted" words together.
func splitQuoted(s string) []string {
	var out []string
	var cur strings.Builder
	quoted := false
	for _, r := range s {
		switch {
		case r == '"':
			quoted = !quoted
		case r == ' ' && !quoted:
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteRune(r)
		}
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}
