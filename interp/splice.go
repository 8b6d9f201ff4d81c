package interp

import "github.com/cgscope/cgscope/symbolizer"

// splice merges a process's interpreted frames into its native stack, both
// innermost first. The interpreted frames come in activations of the
// interpreter loop (each ends at a frame marked Entry, or at the last); the
// native stack has one frame of the loop per activation, innermost first.
// The k-th activation takes the place of the k-th loop frame, so a Python
// function appears where the interpreter ran it: below the native frames
// it called (a C extension's), above the native frames that called it.
//
// When the counts differ, the stack is still told in order: activations
// beyond the last loop frame follow the last one placed (or, if the native
// stack has no loop frame at all, for instance because its walk stopped
// early, follow the native frames), and loop frames beyond the last
// activation stay native. truncated, when not nil, is put after the
// interpreted frames to say their walk stopped early.
func splice(native []symbolizer.Frame, frames []Frame, isLoop func(f *symbolizer.Frame, leaf bool) bool, truncated *symbolizer.Frame) []symbolizer.Frame {
	out := make([]symbolizer.Frame, 0, len(native)+len(frames)+1)
	next := 0 // the first interpreted frame not placed yet
	activation := func() {
		for next < len(frames) {
			f := &frames[next]
			next++
			out = append(out, f.Frame)
			if f.Entry {
				return
			}
		}
	}
	rest := func() {
		for next < len(frames) {
			activation()
		}
		if truncated != nil {
			out = append(out, *truncated)
			truncated = nil
		}
	}
	lastLoop := -1
	loop := make([]bool, len(native))
	for i := range native {
		if loop[i] = isLoop(&native[i], i == 0); loop[i] {
			lastLoop = i
		}
	}
	for i := range native {
		if !loop[i] || next >= len(frames) {
			out = append(out, native[i])
			continue
		}
		activation()
		if i == lastLoop || next >= len(frames) {
			rest()
		}
	}
	rest()
	return out
}
