package symbolizer

import (
	"fmt"
	"strings"
	"testing"
)

func TestParseMaps(t *testing.T) {
	good := []struct {
		name, line string
		want       Mapping
	}{
		{
			"executable",
			"00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/dbus-daemon",
			Mapping{Start: 0x400000, Limit: 0x452000, Path: "/usr/bin/dbus-daemon", Dev: makedev(8, 2), Inode: 173521, Exec: true},
		},
		{
			"offset and big device",
			"7f3c1a200000-7f3c1a3a5000 r-xp 00028000 103:04 2886  /usr/lib/x86_64-linux-gnu/libc.so.6",
			Mapping{Start: 0x7f3c1a200000, Limit: 0x7f3c1a3a5000, Offset: 0x28000, Path: "/usr/lib/x86_64-linux-gnu/libc.so.6", Dev: makedev(0x103, 4), Inode: 2886, Exec: true},
		},
		{
			"anonymous named",
			"7ffd2c4d5000-7ffd2c4f6000 rw-p 00000000 00:00 0                          [stack]",
			Mapping{Start: 0x7ffd2c4d5000, Limit: 0x7ffd2c4f6000, Path: "[stack]"},
		},
		{
			"anonymous unnamed with trailing space",
			"7f1c00000000-7f1c00021000 rwxp 00000000 00:00 0 ",
			Mapping{Start: 0x7f1c00000000, Limit: 0x7f1c00021000, Exec: true},
		},
		{
			"anonymous unnamed",
			"7f1c00000000-7f1c00021000 ---p 00000000 00:00 0",
			Mapping{Start: 0x7f1c00000000, Limit: 0x7f1c00021000},
		},
		{
			"spaces in path",
			"55d0c0a00000-55d0c0a01000 r-xs 00001000 fd:01 42 /opt/my app/lib  two.so",
			Mapping{Start: 0x55d0c0a00000, Limit: 0x55d0c0a01000, Offset: 0x1000, Path: "/opt/my app/lib  two.so", Dev: makedev(0xfd, 1), Inode: 42, Exec: true},
		},
		{
			"deleted",
			"55d0c0a00000-55d0c0a01000 r-xp 00000000 fd:01 42   /tmp/x (deleted)",
			Mapping{Start: 0x55d0c0a00000, Limit: 0x55d0c0a01000, Path: "/tmp/x (deleted)", Dev: makedev(0xfd, 1), Inode: 42, Exec: true, Deleted: true},
		},
		{
			"vsyscall",
			"ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]",
			Mapping{Start: 0xffffffffff600000, Limit: 0xffffffffff601000, Path: "[vsyscall]", Exec: true},
		},
	}
	for _, tc := range good {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseMaps(strings.NewReader(tc.line + "\n"))
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || got[0] != tc.want {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}

	bad := map[string]string{
		"garbage":           "hello world",
		"no dash":           "00400000 r-xp 00000000 08:02 1 /x",
		"inverted range":    "00452000-00400000 r-xp 00000000 08:02 1 /x",
		"empty range":       "00400000-00400000 r-xp 00000000 08:02 1 /x",
		"non-hex address":   "0040g000-00452000 r-xp 00000000 08:02 1 /x",
		"17 hex digits":     "10000000000000000-20000000000000000 r-xp 00000000 08:02 1 /x",
		"short perms":       "00400000-00452000 r-x 00000000 08:02 1 /x",
		"bad perm char":     "00400000-00452000 r-zp 00000000 08:02 1 /x",
		"bad share flag":    "00400000-00452000 r-xq 00000000 08:02 1 /x",
		"non-hex offset":    "00400000-00452000 r-xp 0000000x 08:02 1 /x",
		"device no colon":   "00400000-00452000 r-xp 00000000 0802 1 /x",
		"device bad minor":  "00400000-00452000 r-xp 00000000 08: 1 /x",
		"negative inode":    "00400000-00452000 r-xp 00000000 08:02 -1 /x",
		"hex inode":         "00400000-00452000 r-xp 00000000 08:02 1f /x",
		"missing inode":     "00400000-00452000 r-xp 00000000 08:02",
		"only range":        "00400000-00452000",
		"bad line among ok": "00400000-00452000 r-xp 00000000 08:02 1 /x\nbogus\n",
	}
	for name, input := range bad {
		t.Run("bad "+name, func(t *testing.T) {
			got, err := ParseMaps(strings.NewReader(input))
			if err == nil {
				t.Fatalf("accepted %q as %+v", input, got)
			}
			if !strings.Contains(err.Error(), "maps line") {
				t.Errorf("error %q does not name the line", err)
			}
		})
	}

	t.Run("blank lines", func(t *testing.T) {
		got, err := ParseMaps(strings.NewReader("\n00400000-00452000 r-xp 00000000 08:02 1 /x\n\n  \n"))
		if err != nil || len(got) != 1 {
			t.Fatalf("got %v, %v", got, err)
		}
	})
}

// formatMapping writes m the way the kernel does.
func formatMapping(m Mapping) string {
	perms := "r-" + map[bool]string{true: "x", false: "-"}[m.Exec] + "p"
	major := (m.Dev>>8)&0xfff | (m.Dev>>32)&^0xfff
	minor := m.Dev&0xff | (m.Dev>>12)&^0xff
	return fmt.Sprintf("%08x-%08x %s %08x %02x:%02x %d %s", m.Start, m.Limit, perms, m.Offset, major, minor, m.Inode, m.Path)
}

func FuzzParseMaps(f *testing.F) {
	f.Add("00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/dbus-daemon\n")
	f.Add("7f1c00000000-7f1c00021000 rwxp 00000000 00:00 0 \n7ffd2c4d5000-7ffd2c4f6000 rw-p 00000000 00:00 0 [stack]\n")
	f.Add("55d0c0a00000-55d0c0a01000 r-xs 00001000 fd:01 42 /opt/my app/x (deleted)\n")
	f.Add("ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0  [vsyscall]")
	f.Add("1-2 r-xp 0 103:04 0\n")
	f.Fuzz(func(t *testing.T, input string) {
		maps, err := ParseMaps(strings.NewReader(input))
		if err != nil {
			return
		}
		for _, m := range maps {
			if m.Start >= m.Limit {
				t.Fatalf("accepted empty range %+v", m)
			}
			if m.Deleted != strings.HasSuffix(m.Path, deletedSuffix) {
				t.Fatalf("Deleted flag wrong for %q", m.Path)
			}
			// What parses must survive a round trip through the kernel's format.
			again, err := ParseMaps(strings.NewReader(formatMapping(m)))
			if err != nil || len(again) != 1 {
				t.Fatalf("reparse of %q: %v, %v", formatMapping(m), again, err)
			}
			want := m
			want.Path = strings.TrimLeft(want.Path, " \t") // (only ever differs for odd fuzz input)
			if again[0] != want {
				t.Fatalf("round trip changed %+v into %+v", want, again[0])
			}
		}
	})
}
