package otlp

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/collector/pdata/pprofile"
	"go.opentelemetry.io/collector/pdata/pprofile/pprofileotlp"
	"google.golang.org/grpc"

	"github.com/cgscope/cgscope/exporter/queue"
	"github.com/cgscope/cgscope/internal/every"
	"github.com/cgscope/cgscope/internal/pipeline"
)

// maxPendingWindows bounds the windows held between two reporting ticks
// (more than 10 s / 1 s plus on-demand captures would be unusual).
const maxPendingWindows = 256

// profilesExporter collects pipeline windows and, every interval, converts
// what it collected into one OTLP request for its queue.
type profilesExporter struct {
	interval time.Duration
	conv     *Converter
	q        *queue.Queue[pprofile.Profiles]

	mu      sync.Mutex
	pending []*pipeline.Window
	lost    int // windows pushed out of pending
}

// onWindow is the pipeline subscriber: it runs on the drain goroutine, so
// it only keeps a reference (windows are read-only once delivered).
func (e *profilesExporter) onWindow(w *pipeline.Window) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.pending) >= maxPendingWindows {
		e.pending = e.pending[1:]
		e.lost++
	}
	e.pending = append(e.pending, w)
}

func (e *profilesExporter) take() ([]*pipeline.Window, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	w, lost := e.pending, e.lost
	e.pending, e.lost = nil, 0
	return w, lost
}

// run converts on every tick until ctx ends; the queue sends.
func (e *profilesExporter) run(ctx context.Context) {
	every.Run(ctx, e.interval, e.tick)
}

// tick turns the windows collected since the last tick into one batch.
func (e *profilesExporter) tick() {
	windows, lost := e.take()
	if lost > 0 {
		slog.Warn("OTLP profiles: windows arrived faster than the reporting interval; oldest left out", "windows", lost)
	}
	if len(windows) == 0 {
		return
	}
	pd := e.conv.Convert(windows)
	if pd.ResourceProfiles().Len() == 0 {
		return
	}
	e.q.Push(pd)
}

// grpcProfilesSender exports over gRPC (gzip is the connection's default).
func grpcProfilesSender(conn *grpc.ClientConn) queue.SendFunc[pprofile.Profiles] {
	client := pprofileotlp.NewGRPCClient(conn)
	return func(ctx context.Context, pd pprofile.Profiles) error {
		resp, err := client.Export(ctx, pprofileotlp.NewExportRequestFromProfiles(pd))
		if err != nil {
			return classifyGRPC(err)
		}
		logPartial("profiles", resp.PartialSuccess().RejectedProfiles(), resp.PartialSuccess().ErrorMessage())
		return nil
	}
}

// httpProfilesSender exports over OTLP/HTTP to the development path of
// the profiles signal.
func httpProfilesSender(h *httpClient, base string) queue.SendFunc[pprofile.Profiles] {
	url := base + "/v1development/profiles"
	return func(ctx context.Context, pd pprofile.Profiles) error {
		body, err := pprofileotlp.NewExportRequestFromProfiles(pd).MarshalProto()
		if err != nil {
			return queue.Permanent(err)
		}
		return h.postProto(ctx, url, body)
	}
}

// logPartial reports data the backend accepted the request but refused.
func logPartial(signal string, rejected int64, msg string) {
	if rejected > 0 || msg != "" {
		slog.Warn("OTLP backend refused part of a request", "signal", signal, "rejected", rejected, "message", msg)
	}
}
