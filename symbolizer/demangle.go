package symbolizer

import (
	"strings"

	"github.com/ianlancetaylor/demangle"
)

// demangleOptions give pprof's "simple" style: no parameter lists (of the function or of
// the function a local entity is defined in) and no clone suffixes such as .isra.0, but
// template arguments kept, so overloads of a template stay apart. Output is capped at 64 KiB.
var demangleOptions = []demangle.Option{demangle.NoParams, demangle.NoEnclosingParams, demangle.MaxLength(16)}

// mangled reports whether name looks like an Itanium C++ or Rust (legacy or v0) symbol.
func mangled(name string) bool {
	return strings.HasPrefix(name, "_Z") || strings.HasPrefix(name, "_R")
}

// Demangle returns the readable form of a C++ or Rust symbol, without parameter list and,
// for legacy Rust symbols, without the ::h<hash> suffix. Names that are not mangled, or
// that fail to demangle, are returned unchanged.
func Demangle(name string) string {
	if !mangled(name) {
		return name
	}
	out, err := demangle.ToString(name, demangleOptions...)
	if err != nil || out == "" {
		return name
	}
	return stripRustHash(out)
}

// stripRustHash removes a trailing "::h" and 16 hex digits, which legacy Rust symbols carry
// when the demangler takes them for C++ (e.g. because of a suffix after the hash).
func stripRustHash(s string) string {
	const n = len("::h") + 16
	if len(s) <= n || !strings.HasPrefix(s[len(s)-n:], "::h") {
		return s
	}
	for _, c := range s[len(s)-16:] {
		if _, ok := hexDigit(byte(c)); !ok || c > 'f' {
			return s
		}
	}
	return s[:len(s)-n]
}
