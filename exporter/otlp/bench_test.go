package otlp

import (
	"bytes"
	stdgzip "compress/gzip"
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	kgzip "github.com/klauspost/compress/gzip"

	"github.com/cgscope/cgscope/exporter/pprof"
	"github.com/cgscope/cgscope/internal/pipeline"
)

// The target: one interval's conversion and send under 5 ms of CPU for
// 5,000 unique stacks (200 processes, 16 frames each, 4,000 functions in
// 20 objects).
const benchStacks, benchProcs, benchDepth = 5000, 200, 16

// BenchmarkConvert5000Stacks is the conversion alone: windows to the
// request's protobuf, written into the memory of the last request as the
// daemon does once a request is sent.
func BenchmarkConvert5000Stacks(b *testing.B) {
	w := []*pipeline.Window{synthWindow(benchProcs, benchStacks, benchDepth, 7)}
	c := NewConverter("bench")
	b.ReportAllocs()
	cpu := cpuTime()
	for b.Loop() {
		c.Release(mustEncode(b, c, w))
	}
	b.ReportMetric(float64((cpuTime()-cpu).Microseconds())/1000/float64(b.N), "cpu-ms/op")
}

// BenchmarkConvertAndSend5000Stacks is one reporting interval as the
// daemon runs it: convert, encode, compress (gRPC gzip), send over
// loopback and wait for the answer. The receiver (the collector's pdata
// server code) runs in a child process, so cpu-ms/op is this process's
// user+system time alone: all of the sender's cost, its garbage
// collection included, and none of the receiver's.
func BenchmarkConvertAndSend5000Stacks(b *testing.B) {
	benchConvertAndSend(b, []*pipeline.Window{synthWindow(benchProcs, benchStacks, benchDepth, 7)}, benchStacks)
}

// BenchmarkConvertAndSendRealCapture is BenchmarkConvertAndSend5000Stacks
// on real data: the samples of 5,000 unique stacks of a whole-host
// capture (testdata/real-capture-5000-stacks.pb.gz, see
// TestRealCaptureTestdata).
func BenchmarkConvertAndSendRealCapture(b *testing.B) {
	benchConvertAndSend(b, []*pipeline.Window{loadRealCapture(b)}, realCaptureStacks)
}

func benchConvertAndSend(b *testing.B, w []*pipeline.Window, stacks int) {
	addr := startReceiverProcess(b)
	conn, err := dialGRPC(&Transport{target: endpoint{hostport: addr}, Compression: CompressionGzip})
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	c := NewConverter("bench")
	send := grpcProfilesSender(conn, c.Release)
	ctx := context.Background()
	var encoding, sending time.Duration // CPU time of each phase
	interval := func() (size int) {
		start := cpuTime()
		var bodies [][]byte
		if err := c.Requests(w, DefaultMaxRequestSize, func(body []byte) { bodies = append(bodies, body) }); err != nil {
			b.Fatal(err)
		}
		encoded := cpuTime()
		for _, body := range bodies {
			size += len(body)
			if err := send(ctx, body); err != nil {
				b.Fatal(err)
			}
		}
		encoding += encoded - start
		sending += cpuTime() - encoded
		return size
	}
	if n := convert(b, NewConverter("bench"), w).Dictionary().StackTable().Len() - 1; n != stacks {
		b.Fatalf("%d unique stacks in the request, want %d", n, stacks)
	}
	size := interval() // connects: not part of an interval's cost
	encoding, sending = 0, 0
	b.ReportAllocs()
	cpu := cpuTime()
	for b.Loop() {
		interval()
	}
	b.ReportMetric(float64((cpuTime()-cpu).Microseconds())/1000/float64(b.N), "cpu-ms/op")
	// The two phases: converting and encoding, then gzip and gRPC (this
	// process's share of the send, its gRPC goroutines included).
	b.ReportMetric(float64(encoding.Microseconds())/1000/float64(b.N), "encode-cpu-ms/op")
	b.ReportMetric(float64(sending.Microseconds())/1000/float64(b.N), "send-cpu-ms/op")
	b.ReportMetric(float64(size), "request-B")
	b.ReportMetric(float64(gzipLen(mustEncode(b, c, w), gzipLevel)), "gzip-B")
}

// BenchmarkSendOnly5000Stacks is the part of an interval no conversion
// can save: the 5,000-stack request, already encoded, compressed (gRPC
// gzip) and sent over loopback to the receiver in another process. Its
// cpu-ms/op is the floor of BenchmarkConvertAndSend5000Stacks's.
func BenchmarkSendOnly5000Stacks(b *testing.B) {
	body := mustEncode(b, NewConverter("bench"), []*pipeline.Window{synthWindow(benchProcs, benchStacks, benchDepth, 7)})
	addr := startReceiverProcess(b)
	conn, err := dialGRPC(&Transport{target: endpoint{hostport: addr}, Compression: CompressionGzip})
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	send := grpcProfilesSender(conn, func([]byte) {}) // the same body every time
	ctx := context.Background()
	if err := send(ctx, body); err != nil { // connects
		b.Fatal(err)
	}
	b.ReportAllocs()
	cpu := cpuTime()
	for b.Loop() {
		if err := send(ctx, body); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64((cpuTime()-cpu).Microseconds())/1000/float64(b.N), "cpu-ms/op")
}

// BenchmarkGzipLevels is what picked gzipLevel: CPU and bytes of
// compressing one 5,000-stack request with the standard library and with
// klauspost/compress at a few levels.
func BenchmarkGzipLevels(b *testing.B) {
	body := mustEncode(b, NewConverter("bench"), []*pipeline.Window{synthWindow(benchProcs, benchStacks, benchDepth, 7)})
	for _, lib := range []string{"stdlib", "klauspost"} {
		for _, level := range []int{1, 3, 6} {
			b.Run(fmt.Sprintf("%s-level%d", lib, level), func(b *testing.B) {
				var n int
				cpu := cpuTime()
				for b.Loop() {
					if lib == "stdlib" {
						n = stdGzipLen(body, level)
					} else {
						n = gzipLen(body, level)
					}
				}
				b.ReportMetric(float64((cpuTime()-cpu).Microseconds())/1000/float64(b.N), "cpu-ms/op")
				b.ReportMetric(float64(n), "gzip-B")
			})
		}
	}
}

// BenchmarkWireBytesPerMinute compares the bytes one minute of profiles
// takes on the wire: OTLP (protobuf, gzip as cgscope sends it) against
// gzip pprof of the same windows. The host: 200 processes, 19 Hz, 8 busy
// CPUs, 10 s intervals: 1,520 samples per interval over ~1,000 unique
// stacks of depth 24.
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
			otlpBytes += gzipLen(mustEncode(b, c, []*pipeline.Window{w}), gzipLevel)
			var buf bytes.Buffer
			if err := pprof.Build([]*pipeline.Window{w}, pprof.Selector{}).Write(&buf); err != nil {
				b.Fatal(err)
			}
			pprofBytes += buf.Len()
		}
	}
	b.ReportMetric(float64(otlpBytes), "otlp-gzip-B/min")
	b.ReportMetric(float64(pprofBytes), "pprof-gzip-B/min")
}

func mustEncode(tb testing.TB, c *Converter, w []*pipeline.Window) []byte {
	tb.Helper()
	body, err := c.Encode(w)
	if err != nil {
		tb.Fatal(err)
	}
	return body
}

func gzipLen(p []byte, level int) int {
	var buf bytes.Buffer
	zw, _ := kgzip.NewWriterLevel(&buf, level)
	zw.Write(p)
	zw.Close()
	return buf.Len()
}

func stdGzipLen(p []byte, level int) int {
	var buf bytes.Buffer
	zw, _ := stdgzip.NewWriterLevel(&buf, level)
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
