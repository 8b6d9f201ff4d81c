package exporter

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/pprof/profile"
	"github.com/klauspost/compress/zstd"

	"github.com/cgscope/cgscope/internal/pipeline"
	"github.com/cgscope/cgscope/internal/store"
)

// History keeps cgscope's own profiling history: every pipeline window is
// stored as a symbolized pprof (all labels kept), and range queries merge
// the stored profiles back. Windows reach it through Offer, which never
// blocks the pipeline; a bounded queue hands them to the writer goroutine,
// and windows that find the queue full are dropped and counted.
//
// To keep long ranges cheap, the writer also stores rollups: when a block
// of DefaultRollupLevels (5 min, 1 h) completes, the profiles of the block
// are merged into one record a level up. A 24 h query then merges a few
// dozen records instead of thousands; the block edges still come from the
// windows, so answers keep the window's time resolution.
type History struct {
	st     store.Store
	levels []time.Duration
	log    *slog.Logger
	sem    chan struct{} // bounds concurrent queries, hence their memory

	queue   chan *pipeline.Window
	mu      sync.Mutex // guards closed against Offer racing Stop
	closed  bool
	done    chan struct{}
	dropped atomic.Uint64
	encErrs atomic.Uint64
	rollups atomic.Uint64
}

// DefaultRollupLevels are the rollup block lengths, finest first.
var DefaultRollupLevels = []time.Duration{5 * time.Minute, time.Hour}

// HistoryOptions configure a History.
type HistoryOptions struct {
	Store store.Store
	// QueueSize is how many windows may wait for the writer (default 16).
	QueueSize int
	// RollupLevels override DefaultRollupLevels; each must divide the next.
	RollupLevels []time.Duration
	// MaxConcurrentQueries bounds query memory (default 2).
	MaxConcurrentQueries int
	Logger               *slog.Logger
}

// NewHistory returns a History writing to opts.Store; call Start to run it.
func NewHistory(opts HistoryOptions) *History {
	h := &History{
		st:     opts.Store,
		levels: opts.RollupLevels,
		log:    opts.Logger,
		queue:  make(chan *pipeline.Window, max(opts.QueueSize, 1)),
		sem:    make(chan struct{}, max(opts.MaxConcurrentQueries, 1)),
		done:   make(chan struct{}),
	}
	if opts.QueueSize == 0 {
		h.queue = make(chan *pipeline.Window, 16)
	}
	if opts.MaxConcurrentQueries == 0 {
		h.sem = make(chan struct{}, 2)
	}
	if h.levels == nil {
		h.levels = DefaultRollupLevels
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
	prev, havePrev := h.st.Latest(0)
	for w := range h.queue {
		if err := h.storeWindow(w); err != nil {
			h.log.Warn("history: storing window failed", "start", w.Start, "err", err)
			continue
		}
		if havePrev {
			h.rollupCompleted(prev, w.Start)
		}
		prev, havePrev = w.Start, true
	}
}

func (h *History) storeWindow(w *pipeline.Window) error {
	data, err := encodeProfile(BuildProfile([]*pipeline.Window{w}, Filter{}))
	if err != nil {
		h.encErrs.Add(1)
		return err
	}
	return h.st.Append(store.Record{Meta: store.Meta{Start: w.Start, End: w.End}, Data: data})
}

// rollupCompleted builds the rollups of the blocks that the window starting
// at start has just closed, finest level first (coarser rollups are built
// from finer ones).
func (h *History) rollupCompleted(prev, start time.Time) {
	for i, d := range h.levels {
		block := prev.Truncate(d)
		if !start.Truncate(d).After(block) {
			return // coarser blocks cannot have closed either
		}
		if err := h.buildRollup(uint8(i+1), block, block.Add(d)); err != nil {
			h.log.Warn("history: building rollup failed", "level", i+1, "start", block, "err", err)
		}
	}
}

func (h *History) buildRollup(level uint8, from, to time.Time) error {
	for _, m := range h.st.List(level, from, to) {
		if m.Start.Equal(from) {
			return nil // built before a restart
		}
	}
	var m merger
	err := h.scan(context.Background(), h.plan(from, to, level-1, true), m.add)
	if err != nil {
		return err
	}
	acc, err := m.result()
	if err != nil || acc == nil {
		return err
	}
	data, err := encodeProfile(acc)
	if err != nil {
		return err
	}
	h.rollups.Add(1)
	return h.st.Append(store.Record{Meta: store.Meta{Level: level, Start: from, End: to}, Data: data})
}

// Records are zstd-compressed uncompressed-pprof: zstd packs the profile's
// repetitive string table and varints tighter than pprof's own gzip, and
// decodes several times faster.
var (
	zstdEncoder, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBetterCompression), zstd.WithEncoderConcurrency(1))
	zstdDecoder, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(1<<30))
)

func encodeProfile(p *profile.Profile) ([]byte, error) {
	var buf bytes.Buffer
	if err := p.WriteUncompressed(&buf); err != nil {
		return nil, fmt.Errorf("encoding profile: %w", err)
	}
	return zstdEncoder.EncodeAll(buf.Bytes(), nil), nil
}

func decodeProfile(data []byte) (*profile.Profile, error) {
	raw, err := zstdDecoder.DecodeAll(data, nil)
	if err != nil {
		return nil, err
	}
	return profile.ParseUncompressed(raw)
}
