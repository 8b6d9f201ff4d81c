package main

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/alecthomas/units"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cgscope/cgscope/exporter/history"
	"github.com/cgscope/cgscope/internal/pipeline"
	"github.com/cgscope/cgscope/internal/store"
)

// historyFlags configure the profile history: the store behind
// /api/v1/profile, /api/v1/targets and the web UI.
type historyFlags struct {
	path        string
	memoryLimit units.Base2Bytes
	sizeLimit   units.Base2Bytes
	retention   time.Duration
}

func addHistoryFlags(cmd *kingpin.CmdClause) *historyFlags {
	f := &historyFlags{}
	cmd.Flag("storage.path", "Directory of the on-disk profile history; empty keeps the history in memory only.").
		StringVar(&f.path)
	cmd.Flag("storage.memory-limit", "Bytes of profile history kept in memory (without --storage.path); the oldest windows are evicted first.").
		Default("256MiB").BytesVar(&f.memoryLimit)
	cmd.Flag("storage.retention", "How long the on-disk profile history is kept.").
		Default("24h").DurationVar(&f.retention)
	cmd.Flag("storage.size-limit", "Most bytes the on-disk profile history may use; the oldest windows are deleted first.").
		Default("1GiB").BytesVar(&f.sizeLimit)
	return f
}

func (f *historyFlags) validate() error {
	switch {
	case f.path == "" && f.memoryLimit < 1<<20:
		return fmt.Errorf("--storage.memory-limit=%s: want at least 1MiB", f.memoryLimit)
	case f.path != "" && f.sizeLimit < 1<<20:
		return fmt.Errorf("--storage.size-limit=%s: want at least 1MiB", f.sizeLimit)
	case f.retention < time.Minute:
		return fmt.Errorf("--storage.retention=%s: want at least 1m", f.retention)
	}
	return nil
}

func (f *historyFlags) open() (store.Store, error) {
	if f.path == "" {
		return store.NewMemory(int64(f.memoryLimit)), nil
	}
	return store.OpenDisk(store.DiskOptions{Dir: f.path, Retention: f.retention, MaxBytes: int64(f.sizeLimit)})
}

// startHistory opens the store, stores every pipeline window in it and
// registers its self-metrics; the server answers queries from it. stop
// stores what is still queued and closes the store; call it after the
// pipeline's last flush.
func startHistory(f *historyFlags, reg prometheus.Registerer, p *pipeline.Pipeline) (*history.History, func(), error) {
	st, err := f.open()
	if err != nil {
		return nil, nil, err
	}
	h := history.New(history.Options{Store: st})
	reg.MustRegister(h)
	h.Start()
	cancel := p.Subscribe(h.Offer)
	slog.Info("profile history on", "path", f.path, "memory_limit", f.memoryLimit, "size_limit", f.sizeLimit, "retention", f.retention)
	stop := func() {
		cancel()
		h.Stop()
		if err := st.Close(); err != nil {
			slog.Warn("closing the profile history", "err", err)
		}
	}
	return h, stop, nil
}
