package symbolizer

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Mapping is one line of /proc/PID/maps.
type Mapping struct {
	Start, Limit, Offset uint64 // runtime address range [Start, Limit) and file offset, as in /proc/PID/maps
	Path                 string // as shown in /proc/PID/maps ("" or "[anon]"-style names for anonymous)
	BuildID              string // lowercase hex of the GNU build ID (or Go build ID if no GNU one), "" if none
	Dev, Inode           uint64
	Exec                 bool // has x permission

	// Deleted reports that Path ends in " (deleted)": the file was unlinked or replaced
	// after it was mapped, so it can only be read through /proc/PID/map_files.
	Deleted bool
}

const deletedSuffix = " (deleted)"

// FilePath is Path without the " (deleted)" marker the kernel appends to unlinked files.
func (m *Mapping) FilePath() string {
	return strings.TrimSuffix(m.Path, deletedSuffix)
}

// fileBacked reports whether the mapping comes from a file that may be opened. Anonymous
// mappings have inode 0; pseudo-files such as [vdso] have no leading slash.
func (m *Mapping) fileBacked() bool {
	return m.Inode != 0 && strings.HasPrefix(m.Path, "/")
}

// ParseMaps parses the contents of /proc/PID/maps. Empty lines are skipped; any other line
// that does not have the kernel's format makes it fail with an error naming the line.
func ParseMaps(r io.Reader) ([]Mapping, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("reading maps: %w", err)
	}
	return parseMaps(data, false)
}

// parseMaps parses maps data. With execOnly it validates every line but returns only
// executable mappings, sparing the profiler the path strings of data mappings.
func parseMaps(data []byte, execOnly bool) ([]Mapping, error) {
	var out []Mapping
	for lineNo := 1; len(data) > 0; lineNo++ {
		var line []byte
		line, data, _ = bytes.Cut(data, []byte("\n"))
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		m, err := parseMapsLine(line, execOnly)
		if err != nil {
			return nil, fmt.Errorf("maps line %d %q: %w", lineNo, truncate(line, 120), err)
		}
		if m.Exec || !execOnly {
			out = append(out, m)
		}
	}
	return out, nil
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// parseMapsLine parses "start-limit perms offset major:minor inode   path".
// The path of a non-executable mapping is left empty when execOnly is set.
func parseMapsLine(line []byte, execOnly bool) (Mapping, error) {
	var m Mapping
	rest := line
	fields := [5][]byte{}
	for i := range fields {
		var ok bool
		fields[i], rest, ok = nextField(rest)
		if !ok {
			return m, errors.New("too few fields")
		}
	}
	var err error
	if m.Start, m.Limit, err = parseRange(fields[0]); err != nil {
		return m, err
	}
	if m.Exec, err = parsePerms(fields[1]); err != nil {
		return m, err
	}
	if m.Offset, err = parseHex(fields[2]); err != nil {
		return m, fmt.Errorf("offset: %w", err)
	}
	if m.Dev, err = parseDev(fields[3]); err != nil {
		return m, err
	}
	if m.Inode, err = strconv.ParseUint(string(fields[4]), 10, 64); err != nil {
		return m, fmt.Errorf("inode: %w", err)
	}
	if execOnly && !m.Exec {
		return m, nil
	}
	// The path is everything after the padding, spaces included.
	m.Path = string(bytes.TrimLeft(rest, " \t"))
	m.Deleted = strings.HasSuffix(m.Path, deletedSuffix)
	return m, nil
}

// nextField splits off one space-separated field, skipping leading blanks.
func nextField(b []byte) (field, rest []byte, ok bool) {
	b = bytes.TrimLeft(b, " \t")
	if len(b) == 0 {
		return nil, nil, false
	}
	if i := bytes.IndexAny(b, " \t"); i >= 0 {
		return b[:i], b[i:], true
	}
	return b, nil, true
}

func parseRange(f []byte) (start, limit uint64, err error) {
	lo, hi, ok := bytes.Cut(f, []byte("-"))
	if !ok {
		return 0, 0, fmt.Errorf("address range %q has no '-'", f)
	}
	if start, err = parseHex(lo); err != nil {
		return 0, 0, fmt.Errorf("range start: %w", err)
	}
	if limit, err = parseHex(hi); err != nil {
		return 0, 0, fmt.Errorf("range end: %w", err)
	}
	if start >= limit {
		return 0, 0, fmt.Errorf("empty or inverted range %q", f)
	}
	return start, limit, nil
}

// parsePerms checks the "rwxp" column and reports whether x is set.
func parsePerms(f []byte) (exec bool, err error) {
	const want = "rwx"
	if len(f) != 4 {
		return false, fmt.Errorf("permissions %q: want 4 characters", f)
	}
	for i := 0; i < 3; i++ {
		if f[i] != want[i] && f[i] != '-' {
			return false, fmt.Errorf("permissions %q: bad character %q", f, f[i])
		}
	}
	if f[3] != 'p' && f[3] != 's' {
		return false, fmt.Errorf("permissions %q: want p or s last", f)
	}
	return f[2] == 'x', nil
}

func parseHex(f []byte) (uint64, error) {
	if len(f) == 0 || len(f) > 16 {
		return 0, fmt.Errorf("bad hex number %q", f)
	}
	var v uint64
	for _, c := range f {
		d, ok := hexDigit(c)
		if !ok {
			return 0, fmt.Errorf("bad hex number %q", f)
		}
		v = v<<4 | uint64(d)
	}
	return v, nil
}

func hexDigit(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// parseDev turns "major:minor" (hex) into the st_dev encoding of stat(2), so it can be
// compared with the device of an opened file. The kernel's device numbers have a 12-bit
// major and a 20-bit minor.
func parseDev(f []byte) (uint64, error) {
	maj, mnr, ok := bytes.Cut(f, []byte(":"))
	if !ok {
		return 0, fmt.Errorf("device %q has no ':'", f)
	}
	major, err := parseHex(maj)
	if err != nil || major > 0xfff {
		return 0, fmt.Errorf("device major %q", maj)
	}
	minor, err := parseHex(mnr)
	if err != nil || minor > 0xfffff {
		return 0, fmt.Errorf("device minor %q", mnr)
	}
	return makedev(major, minor), nil
}

// makedev mirrors glibc's gnu_dev_makedev.
func makedev(major, minor uint64) uint64 {
	return (minor & 0xff) | (major&0xfff)<<8 | (minor&^0xff)<<12 | (major&^0xfff)<<32
}
