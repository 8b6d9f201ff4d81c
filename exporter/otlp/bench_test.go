package otlp

import (
	"bytes"
	"compress/gzip"
	"context"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/pprofile/pprofileotlp"

	"github.com/cgscope/cgscope/exporter"
	"github.com/cgscope/cgscope/internal/pipeline"
)

// The target: one interval's conversion and send under 5 ms of CPU for
// 5,000 unique stacks.
const benchStacks, benchProcs, benchDepth = 5000, 200, 16

func BenchmarkConvert5000Stacks(b *testing.B) {
	w := []*pipeline.Window{synthWindow(benchProcs, benchStacks, benchDepth, 7)}
	c := NewConverter("bench")
	b.ReportAllocs()
	cpu := cpuTime()
	for b.Loop() {
		c.Convert(w)
	}
	b.ReportMetric(float64((cpuTime()-cpu).Microseconds())/1000/float64(b.N), "cpu-ms/op")
}

// BenchmarkConvertAndSend5000Stacks converts and exports over loopback
// gRPC with gzip to the collector's receiver code. The CPU figure is the
// whole process's, so it includes the receiver decoding the request.
func BenchmarkConvertAndSend5000Stacks(b *testing.B) {
	r := startReceiver(b, nil)
	conn, err := dialGRPC(&Config{Insecure: true}, endpoint{hostport: r.addr})
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	send := grpcProfilesSender(conn)
	w := []*pipeline.Window{synthWindow(benchProcs, benchStacks, benchDepth, 7)}
	c := NewConverter("bench")
	ctx := context.Background()
	b.ReportAllocs()
	cpu := cpuTime()
	for b.Loop() {
		if err := send(ctx, c.Convert(w)); err != nil {
			b.Fatal(err)
		}
		r.mu.Lock()
		r.profiles = r.profiles[:0]
		r.mu.Unlock()
	}
	b.ReportMetric(float64((cpuTime()-cpu).Microseconds())/1000/float64(b.N), "cpu-ms/op")
}

// BenchmarkWireBytesPerMinute compares the bytes one minute of profiles
// takes on the wire: OTLP (protobuf, gzip as gRPC sends it) against gzip
// pprof of the same windows. The host: 200 processes, 19 Hz, 8 busy CPUs,
// 10 s intervals: 1,520 samples per interval over ~1,000 unique stacks of
// depth 24.
func BenchmarkWireBytesPerMinute(b *testing.B) {
	var windows []*pipeline.Window
	for i := range 6 {
		windows = append(windows, synthWindow(200, 1000, 24, uint64(100+i%2))) // stacks recur across intervals
	}
	var otlpBytes, pprofBytes int
	for b.Loop() {
		otlpBytes, pprofBytes = 0, 0
		c := NewConverter("bench")
		for _, w := range windows {
			body, err := pprofileotlp.NewExportRequestFromProfiles(c.Convert([]*pipeline.Window{w})).MarshalProto()
			if err != nil {
				b.Fatal(err)
			}
			otlpBytes += gzipLen(body)
			var buf bytes.Buffer
			if err := exporter.BuildProfile([]*pipeline.Window{w}, exporter.Filter{}).Write(&buf); err != nil {
				b.Fatal(err)
			}
			pprofBytes += buf.Len()
		}
	}
	b.ReportMetric(float64(otlpBytes), "otlp-gzip-B/min")
	b.ReportMetric(float64(pprofBytes), "pprof-gzip-B/min")
}

func gzipLen(p []byte) int {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(p)
	zw.Close()
	return buf.Len()
}

// cpuTime is this process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
