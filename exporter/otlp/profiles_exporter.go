package otlp

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/collector/pdata/pprofile/pprofileotlp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"

	"github.com/cgscope/cgscope/exporter/queue"
	"github.com/cgscope/cgscope/internal/every"
	"github.com/cgscope/cgscope/internal/pipeline"
)

// maxPendingWindows is how many windows make the exporter convert before
// its tick: more than 10 s / 1 s plus on-demand captures would be unusual,
// but a long --otlp.interval over a short --profiling.interval makes more.
// Twice as many wait at most, should the exporter fall behind (besides
// those it is converting); beyond, the oldest are left out, logged and
// counted as one dropped batch per conversion.
const maxPendingWindows = 256

// profilesExporter collects pipeline windows and, every interval, converts
// what it collected into encoded OTLP requests for its queue. The queue
// holds encoded requests: nothing is encoded twice when a send is retried,
// and a request sent is given back to the converter (Release) for the
// next interval to be written into.
type profilesExporter struct {
	interval   time.Duration
	maxRequest int // bytes of one request at most; larger intervals are split
	conv       *Converter
	q          *queue.Queue[*queue.Parts[[]byte]] // an interval's requests are one batch
	full       chan struct{}                      // maxPendingWindows are waiting: convert now

	convMu  sync.Mutex // one conversion at a time: conv is not safe for concurrent use
	mu      sync.Mutex
	pending []*pipeline.Window
	lost    int // windows left out since the last conversion
}

func newProfilesExporter(interval time.Duration, maxRequest int, conv *Converter, q *queue.Queue[*queue.Parts[[]byte]]) *profilesExporter {
	return &profilesExporter{interval: interval, maxRequest: maxRequest, conv: conv, q: q, full: make(chan struct{}, 1)}
}

// onWindow is the pipeline subscriber. It runs on the drain goroutine,
// which must not wait for a conversion: it keeps a reference (windows are
// read-only once delivered) and, when maxPendingWindows are waiting, asks
// the exporter's goroutine to convert them before its tick.
func (e *profilesExporter) onWindow(w *pipeline.Window) {
	e.mu.Lock()
	if len(e.pending) >= 2*maxPendingWindows {
		e.pending[0] = nil
		e.pending = e.pending[1:]
		e.lost++
	}
	e.pending = append(e.pending, w)
	full := len(e.pending) >= maxPendingWindows
	e.mu.Unlock()
	if full {
		select {
		case e.full <- struct{}{}:
		default: // asked already
		}
	}
}

func (e *profilesExporter) take() ([]*pipeline.Window, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	w, lost := e.pending, e.lost
	e.pending, e.lost = nil, 0
	return w, lost
}

// run converts on every tick, and when windows pile up, until ctx ends;
// the queue sends.
func (e *profilesExporter) run(ctx context.Context) {
	every.RunOrWake(ctx, e.interval, e.full, e.tick)
}

// tick turns the windows collected since the last tick into one batch:
// one request, or several when one would be larger than maxRequest.
func (e *profilesExporter) tick() {
	e.convMu.Lock()
	defer e.convMu.Unlock()
	windows, lost := e.take()
	if lost > 0 {
		e.q.Drop()
		slog.Warn("OTLP profiles: windows arrived faster than they could be converted; oldest left out", "windows", lost)
	}
	if len(windows) == 0 {
		return
	}
	var bodies [][]byte
	err := e.conv.Requests(windows, e.maxRequest, func(body []byte) { bodies = append(bodies, body) })
	if err != nil {
		e.q.Drop()
		slog.Error("OTLP profiles: part of an interval cannot be sent", "err", err)
	}
	if len(bodies) > 0 {
		e.q.Push(queue.NewParts(bodies))
	}
}

// profilesExportMethod is the OTLP profiles service's one RPC.
const profilesExportMethod = "/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export"

// grpcProfilesSender exports encoded requests over gRPC (gzip is the
// connection's default). pprofileotlp's client would need the request as
// pdata and encode it again on every attempt; the bytes are sent as they
// are instead. A request sent is passed to release: once the server
// answered it has read the whole request, and gRPC holds none of it.
func grpcProfilesSender(conn *grpc.ClientConn, release func([]byte)) queue.SendFunc[[]byte] {
	md := metadata.Pairs(pprofileotlp.DevelopmentVersionHeader, pprofileotlp.DevelopmentVersion)
	codec := grpc.ForceCodecV2(encodedCodec{})
	return func(ctx context.Context, body []byte) error {
		resp := pprofileotlp.NewExportResponse()
		err := conn.Invoke(metadata.NewOutgoingContext(ctx, md), profilesExportMethod, encodedRequest(body), &resp, codec)
		if err != nil {
			return classifyGRPC(err)
		}
		release(body)
		logPartial("profiles", resp.PartialSuccess().RejectedProfiles(), resp.PartialSuccess().ErrorMessage())
		return nil
	}
}

// encodedRequest is a request already in protobuf.
type encodedRequest []byte

// encodedCodec sends an encodedRequest as it is and decodes the
// ExportProfilesServiceResponse with pdata. Its name is "proto", so the
// content type is the usual application/grpc+proto.
type encodedCodec struct{}

func (encodedCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, ok := v.(encodedRequest)
	if !ok {
		return nil, fmt.Errorf("encodedCodec: cannot send a %T", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func (encodedCodec) Unmarshal(data mem.BufferSlice, v any) error {
	r, ok := v.(*pprofileotlp.ExportResponse)
	if !ok {
		return fmt.Errorf("encodedCodec: cannot decode into a %T", v)
	}
	return r.UnmarshalProto(data.Materialize())
}

func (encodedCodec) Name() string { return "proto" }

// httpProfilesSender exports encoded requests over OTLP/HTTP to url. With
// gzip, a request sent is passed to release (the transport read its
// compressed copy); without, net/http may still be reading the request
// after the response came, so it is left to the garbage collector.
func httpProfilesSender(h *httpClient, url string, release func([]byte)) queue.SendFunc[[]byte] {
	version := map[string]string{pprofileotlp.DevelopmentVersionHeader: pprofileotlp.DevelopmentVersion}
	return func(ctx context.Context, body []byte) error {
		err := h.postProto(ctx, url, body, version)
		if err == nil && h.gzip {
			release(body)
		}
		return err
	}
}

// logPartial reports data the backend accepted the request but refused.
func logPartial(signal string, rejected int64, msg string) {
	if rejected > 0 || msg != "" {
		slog.Warn("OTLP backend refused part of a request", "signal", signal, "rejected", rejected, "message", msg)
	}
}
