package symbolizer

import (
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"io"
)

const (
	ntGNUBuildID = 3 // NT_GNU_BUILD_ID, owner "GNU"
	ntGoBuildID  = 4 // the Go linker's build ID note, owner "Go"
	maxNoteBytes = 64 << 10
)

// readBuildID returns the GNU build ID of f in lowercase hex, else the hex encoding of its Go
// build ID string, else "". Notes are looked for in PT_NOTE segments first, which survive
// stripping of section headers, then in SHT_NOTE sections.
func readBuildID(f *elfFile) (id string) {
	defer func() {
		if recover() != nil {
			id = "" // a last resort: parseNotes checks its bounds
		}
	}()
	var goID []byte
	scan := func(r io.Reader, align uint64) string {
		b, err := io.ReadAll(io.LimitReader(r, maxNoteBytes))
		if err != nil && len(b) == 0 {
			return ""
		}
		gnu, gid := parseNotes(f.ByteOrder, b, align)
		if goID == nil && gid != nil {
			goID = gid
		}
		return gnu
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_NOTE && (f.size < 0 || within(p.Off, p.Filesz, uint64(f.size))) {
			if id := scan(p.Open(), p.Align); id != "" {
				return id
			}
		}
	}
	for _, s := range f.Sections {
		if s.Type == elf.SHT_NOTE && s.Flags&elf.SHF_COMPRESSED == 0 && (f.size < 0 || within(s.Offset, s.Size, uint64(f.size))) {
			if id := scan(s.Open(), s.Addralign); id != "" {
				return id
			}
		}
	}
	if len(goID) > 0 {
		return hex.EncodeToString(goID)
	}
	return ""
}

// parseNotes walks ELF notes (namesz, descsz, type, name, desc; name and desc padded to
// align, 4 or 8) and returns the GNU build ID in hex and the raw Go build ID, if present.
func parseNotes(bo binary.ByteOrder, b []byte, align uint64) (gnuHex string, goID []byte) {
	if align != 8 {
		align = 4
	}
	for len(b) >= 12 {
		nameSz, descSz, typ := uint64(bo.Uint32(b)), uint64(bo.Uint32(b[4:])), bo.Uint32(b[8:])
		b = b[12:]
		nameEnd := alignUp(nameSz, align)
		descEnd := nameEnd + alignUp(descSz, align)
		if nameEnd > uint64(len(b)) || nameEnd+descSz > uint64(len(b)) {
			return gnuHex, goID
		}
		name, desc := b[:nameSz], b[nameEnd:nameEnd+descSz]
		switch {
		case typ == ntGNUBuildID && string(name) == "GNU\x00" && len(desc) > 0:
			return hex.EncodeToString(desc), goID
		case typ == ntGoBuildID && string(name) == "Go\x00\x00" && len(desc) > 0 && goID == nil:
			goID = desc
		}
		if descEnd > uint64(len(b)) {
			return gnuHex, goID
		}
		b = b[descEnd:]
	}
	return gnuHex, goID
}

func alignUp(n, align uint64) uint64 {
	return (n + align - 1) &^ (align - 1)
}
