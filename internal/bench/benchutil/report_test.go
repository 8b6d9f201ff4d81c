package benchutil

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteReport(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.md")
	write := func(section string) string {
		t.Helper()
		if err := WriteReport(path, "## B", section); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if got := write("\n## B\n\nfirst\n\n"); got != "## B\n\nfirst\n" {
		t.Errorf("new file: %q", got)
	}
	os.WriteFile(path, []byte("# Title\n\n## A\n\na\n"), 0o644)
	if got := write("\n## B\n\nfirst\n\n"); got != "# Title\n\n## A\n\na\n\n## B\n\nfirst\n" {
		t.Errorf("appended: %q", got)
	}
	os.WriteFile(path, []byte("# Title\n\n## B\n\nold\n### sub\nold\n\n## C\n\nc\n"), 0o644)
	if got := write("\n## B\n\nnew\n\n"); got != "# Title\n\n## B\n\nnew\n\n## C\n\nc\n" {
		t.Errorf("replaced before another section: %q", got)
	}
	if got := write("\n## B\n\nnewer\n"); got != "# Title\n\n## B\n\nnewer\n\n## C\n\nc\n" {
		t.Errorf("replaced again: %q", got)
	}
	os.WriteFile(path, []byte("# Title\n\n## BB\n\nx\n"), 0o644)
	if got := write("\n## B\n\nb\n"); got != "# Title\n\n## BB\n\nx\n\n## B\n\nb\n" {
		t.Errorf("a longer title is another section: %q", got)
	}
}
