package python

import "strings"

// moduleOf names the module a code object's file is, as Python names it
// when it is imported: the file's path below the directory it was imported
// from (site-packages, dist-packages, or the standard library's
// lib/python3.X), dots for slashes, without ".py" and without a package's
// "__init__"; for a file elsewhere (the script Python was started with,
// which Python itself calls __main__), its name. Frozen modules are named
// by their file name, "<frozen importlib._bootstrap>"; other pseudo-files
// ("<string>", "<stdin>") name no module.
//
// A code object does not hold its module (its function does, which the
// walker does not record), so the name is taken from the file: the same
// as __module__ for every imported module, and the script's own name
// rather than "__main__", which tells the scripts of a host apart.
func moduleOf(file string) string {
	if rest, ok := strings.CutPrefix(file, "<frozen "); ok {
		return strings.TrimSuffix(rest, ">")
	}
	if strings.HasPrefix(file, "<") {
		return ""
	}
	path, ok := strings.CutSuffix(file, ".py")
	if !ok {
		path, ok = strings.CutSuffix(file, ".pyc")
	}
	if !ok {
		return ""
	}
	rel := path
	if i := lastIndexAny(path, "/site-packages/", "/dist-packages/"); i >= 0 {
		rel = path[i:]
	} else if i := stdlibEnd(path); i >= 0 {
		rel = path[i:]
	} else if j := strings.LastIndexByte(path, '/'); j >= 0 {
		rel = path[j+1:]
	}
	rel = strings.TrimSuffix(rel, "/__init__")
	return strings.ReplaceAll(rel, "/", ".")
}

// lastIndexAny returns where the last of the markers found in path ends,
// -1 if none is.
func lastIndexAny(path string, markers ...string) int {
	best := -1
	for _, m := range markers {
		if i := strings.LastIndex(path, m); i >= 0 && i+len(m) > best {
			best = i + len(m)
		}
	}
	return best
}

// stdlibEnd returns where ".../lib/python3.X/" ends in path, -1 if it is
// not in it.
func stdlibEnd(path string) int {
	i := strings.LastIndex(path, "/lib/python3")
	if i < 0 {
		return -1
	}
	j := strings.IndexByte(path[i+len("/lib/python3"):], '/')
	if j < 0 {
		return -1
	}
	return i + len("/lib/python3") + j + 1
}
