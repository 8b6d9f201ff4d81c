package otlp

import "go.opentelemetry.io/collector/pdata/pprofile"

// A profiles request is tens of thousands of small pdata objects: one per
// location, line, function, stack and sample, each with its own slices.
// Allocating them for every interval and collecting them again was about
// a third of an interval's CPU. Converter.Encode therefore keeps the
// request it encoded last (nothing else holds it once it is bytes) and
// writes the next request over it, element by element: an element of a
// slice is reused where the last request had one, appended where it had
// none, and dropped where it had one too many.

// pdataSlice is the part of a generated pdata slice type (LocationSlice,
// SampleSlice, ...) that overwriting needs.
type pdataSlice[E any] interface {
	Len() int
	At(i int) E
	AppendEmpty() E
	RemoveIf(f func(E) bool)
}

// overwrite writes a pdata slice again from its start. Whoever takes an
// element from next sets every field this package ever sets on that
// type, since it may hold the last request's values.
type overwrite[S pdataSlice[E], E any] struct {
	s S
	n int // elements written so far
}

func overwriteOf[S pdataSlice[E], E any](s S) overwrite[S, E] {
	return overwrite[S, E]{s: s}
}

// next returns the slice's next element: the one left at that position,
// or a new one.
func (w *overwrite[S, E]) next() E {
	w.n++
	if w.n <= w.s.Len() {
		return w.s.At(w.n - 1)
	}
	return w.s.AppendEmpty()
}

// trim drops the elements beyond those written.
func (w *overwrite[S, E]) trim() {
	if w.n < w.s.Len() {
		dropAfter(w.s, w.n)
	}
}

// dropAfter removes the elements of s beyond its first n. It is apart from
// trim so that its closure, which escapes, does not take w to the heap.
func dropAfter[S pdataSlice[E], E any](s S, n int) {
	i := 0
	s.RemoveIf(func(E) bool {
		i++
		return i > n
	})
}

// maxReusedObjects bounds the dictionary entries and samples of a request
// kept for the next one: an unusually large interval's objects are left
// to the garbage collector, not held for good.
const maxReusedObjects = 1 << 16

// reusable reports whether pd is small enough to keep for the next request.
func reusable(pd pprofile.Profiles) bool {
	d := pd.Dictionary()
	n := d.LocationTable().Len() + d.FunctionTable().Len() + d.StackTable().Len() + d.StringTable().Len()
	return n+pd.SampleCount() <= maxReusedObjects
}
