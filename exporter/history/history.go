// Package history is cgscope's profile history: it stores every pipeline
// window, its CPU and its off-CPU samples, in internal/store in a compact
// per-generation format (format.go), answers range queries with a merged
// pprof profile of either kind or the CPU (or off-CPU) time of each cgroup
// and process (query.go, targets.go), serves them over HTTP (api.go:
// /api/v1/profile, /api/v1/targets) and exports its own metrics.
package history

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/cgscope/cgscope/internal/pipeline"
	"github.com/cgscope/cgscope/internal/store"
)

// History keeps cgscope's own profiling history: every pipeline window is
// stored with all its labels, and range queries sum the stored windows back
// into one pprof profile. Windows reach it through Offer, which never
// blocks the pipeline; a bounded queue hands them to the writer goroutine,
// and windows that find the queue full are dropped and counted.
//
// Windows are stored compactly (see format.go): each store generation has
// a dictionary of strings, frames, label sets and stacks, written as
// records just before the windows that first use them, and a window is only
// rows of (label set, stack, count), with a reason and a time for its
// off-CPU samples, which are a record of their own. A query reads the
// records of its kind, sums them by (label set, stack, reason) per
// generation, filtering label sets before it looks at any stack, and builds
// one profile at the end. That is fast enough for a day of windows, so
// there are no rollups.
type History struct {
	st  store.Store
	log *slog.Logger
	sem chan struct{} // bounds concurrent queries, hence their memory
	enc windowEncoder // the writer goroutine's

	queue       chan *pipeline.Window
	mu          sync.Mutex // guards closed against Offer racing Stop
	closed      bool
	done        chan struct{}
	dropped     atomic.Uint64
	encErrs     atomic.Uint64
	undecodable atomic.Uint64
}

// Options configure a History.
type Options struct {
	Store store.Store
	// QueueSize is how many windows may wait for the writer (default 16).
	QueueSize int
	// MaxConcurrentQueries bounds query memory (default 2).
	MaxConcurrentQueries int
	Logger               *slog.Logger
}

// New returns a History writing to opts.Store; call Start to run it.
func New(opts Options) *History {
	h := &History{
		st:    opts.Store,
		log:   opts.Logger,
		queue: make(chan *pipeline.Window, max(opts.QueueSize, 1)),
		sem:   make(chan struct{}, max(opts.MaxConcurrentQueries, 1)),
		done:  make(chan struct{}),
	}
	if opts.QueueSize == 0 {
		h.queue = make(chan *pipeline.Window, 16)
	}
	if opts.MaxConcurrentQueries == 0 {
		h.sem = make(chan struct{}, 2)
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	return h
}

// Offer queues a window for storage without blocking: it is the pipeline
// subscriber.
func (h *History) Offer(w *pipeline.Window) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	select {
	case h.queue <- w:
	default:
		h.dropped.Add(1)
	}
}

// Start runs the writer until Stop.
func (h *History) Start() {
	go h.run()
}

// Stop stores the windows still queued and ends the writer. Offer after
// Stop is a no-op.
func (h *History) Stop() {
	h.mu.Lock()
	if !h.closed {
		h.closed = true
		close(h.queue)
	}
	h.mu.Unlock()
	<-h.done
}

func (h *History) run() {
	defer close(h.done)
	for w := range h.queue {
		if err := h.storeWindow(w); err != nil {
			h.log.Warn("history: storing window failed", "start", w.Start, "err", err)
		}
	}
}

// storeWindow appends w, preceded by what it adds to the dictionary of the
// generation it lands in. The encoder follows the store's generation: when
// the store opens a new one (a new segment, a restart, a failed write), the
// encoder starts an empty dictionary, so a generation never depends on
// another.
func (h *History) storeWindow(w *pipeline.Window) error {
	return h.st.AppendFunc(func(gen uint64) ([]store.Record, error) {
		recs, err := h.enc.encode(w, gen)
		if err != nil && !errors.Is(err, store.ErrNewGeneration) {
			h.encErrs.Add(1)
		}
		return recs, err
	})
}
