package otlp

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/cgscope/cgscope/internal/pipeline"
)

// DefaultMaxRequestSize is the largest request (profiles or metrics) sent
// unless configured otherwise: gRPC servers refuse larger messages by default
// (the OpenTelemetry Collector's OTLP receiver among them, whose
// max_recv_msg_size_mib is 4), and they refuse them on every retry.
const DefaultMaxRequestSize = 4 << 20

// MinMaxRequestSize is the smallest limit accepted: below it a single
// deep stack with long C++ names could not be sent at all.
const MinMaxRequestSize = 64 << 10

// Requests encodes windows as one or more requests of at most limit bytes
// each and passes each to push, in order. All the windows make one request
// unless it would be larger than limit; then their samples, CPU and
// off-CPU alike, are split in two halves, between two processes where
// there are several (so a process stays in one request, with all its
// profiles, unless its samples alone exceed limit), and each half is
// encoded the same way. Samples of one thread and stack that land in two
// requests are counted in each, which adds up to the same profiles.
//
// A sample that alone makes a request over limit cannot be sent: it is left
// out, the others are still pushed, and the error says how many were.
func (c *Converter) Requests(windows []*pipeline.Window, limit int, push func([]byte)) error {
	if limit <= 0 || limit > maxRequestBytes {
		limit = maxRequestBytes
	}
	body := c.encode(windows)
	if len(body) <= limit {
		c.pruneExes(c.agg.hasPID)
		if body != nil {
			c.lastSize = len(body)
			push(body)
		}
		return nil
	}
	c.Release(body)
	var s splitter
	s.encode(c, windows, limit, push)
	s.notePIDs(windows)
	c.pruneExes(s.hasPID)
	c.lastSize = s.largestSent
	if s.left > 0 {
		return fmt.Errorf("%d (thread, stack) sample rows left out: each alone makes a request larger than the limit of %d bytes (the largest %d bytes)", s.left, limit, s.largest)
	}
	return nil
}

// splitter encodes the halves of an oversized request, and counts what it
// could not send.
type splitter struct {
	left, largest int        // samples too large alone, and the largest of their requests
	largestSent   int        // bytes of the largest request pushed, the likely size of the next
	seen          indexTable // every pid of the windows, for pruneExes
}

// notePIDs records the processes of windows, each once.
func (s *splitter) notePIDs(windows []*pipeline.Window) {
	s.seen.reset()
	for _, w := range windows {
		for _, samples := range [2][]pipeline.Sample{w.Samples, w.OffCPU} {
			for i := range samples {
				if pid := samples[i].PID; !s.hasPID(pid) {
					s.seen.put(uint64(pid), 0)
				}
			}
		}
	}
}

func (s *splitter) hasPID(pid uint32) bool {
	_, ok := s.seen.get(uint64(pid))
	return ok
}

func (s *splitter) encode(c *Converter, windows []*pipeline.Window, limit int, push func([]byte)) {
	first, second, ok := halve(windows)
	if !ok { // one sample
		body := c.encode(windows)
		s.left++
		s.largest = max(s.largest, len(body))
		c.Release(body)
		return
	}
	for _, part := range [2][]*pipeline.Window{first, second} {
		body := c.encode(part)
		switch {
		case body == nil:
		case len(body) <= limit:
			s.largestSent = max(s.largestSent, len(body))
			push(body)
		default:
			c.Release(body)
			s.encode(c, part, limit, push)
		}
	}
}

// halve splits the samples of windows, CPU and off-CPU, in two halves of
// about as many frames. With more than one process the cut is between two
// processes, the boundary nearest the middle; within one process it is
// the middle. It reports false when there are fewer than two samples.
func halve(windows []*pipeline.Window) (first, second []*pipeline.Window, ok bool) {
	type sampleRef struct {
		window, sample int
		offCPU         bool // in the window's OffCPU, not its Samples
		pid            uint32
	}
	sampleOf := func(r sampleRef) *pipeline.Sample {
		if r.offCPU {
			return &windows[r.window].OffCPU[r.sample]
		}
		return &windows[r.window].Samples[r.sample]
	}
	var refs []sampleRef
	total := 0
	for wi, w := range windows {
		for k, samples := range [2][]pipeline.Sample{w.Samples, w.OffCPU} {
			for i := range samples {
				refs = append(refs, sampleRef{wi, i, k == 1, samples[i].PID})
				total += sampleWeight(&samples[i])
			}
		}
	}
	if len(refs) < 2 {
		return nil, nil, false
	}
	slices.SortStableFunc(refs, func(a, b sampleRef) int { return cmp.Compare(a.pid, b.pid) })
	mid, acc := len(refs)-1, 0
	for k, r := range refs {
		acc += sampleWeight(sampleOf(r))
		if 2*acc >= total {
			mid = max(k, 1) // refs[:mid] and refs[mid:] are both non-empty
			break
		}
	}
	cut := mid
	for d := 0; d < len(refs); d++ { // the process boundary nearest mid, if any
		if k := mid - d; k >= 1 && refs[k-1].pid != refs[k].pid {
			cut = k
			break
		}
		if k := mid + d; k < len(refs) && refs[k-1].pid != refs[k].pid {
			cut = k
			break
		}
	}
	part := func(refs []sampleRef) []*pipeline.Window {
		byWindow := make([]*pipeline.Window, len(windows))
		var out []*pipeline.Window
		for _, r := range refs {
			w := byWindow[r.window]
			if w == nil {
				orig := windows[r.window]
				w = &pipeline.Window{Start: orig.Start, End: orig.End, Period: orig.Period}
				byWindow[r.window] = w
				out = append(out, w)
			}
			if r.offCPU {
				w.OffCPU = append(w.OffCPU, *sampleOf(r))
			} else {
				w.Samples = append(w.Samples, *sampleOf(r))
			}
		}
		return out
	}
	return part(refs[:cut]), part(refs[cut:]), true
}

// sampleWeight is about what a sample adds to a request: its frames, and a
// few fields of its own.
func sampleWeight(s *pipeline.Sample) int { return len(s.Frames) + 4 }
