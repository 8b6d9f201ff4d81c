package otlp

import (
	"bytes"
	"io"
	"testing"

	"google.golang.org/grpc/encoding"

	"github.com/cgscope/cgscope/internal/pipeline"
)

// writeSizes records the size of every write.
type writeSizes struct {
	bytes.Buffer
	sizes []int
}

func (w *writeSizes) Write(p []byte) (int, error) {
	w.sizes = append(w.sizes, len(p))
	return w.Buffer.Write(p)
}

// gRPC's "gzip" is ours: what it compresses decompresses to the same
// bytes, and reaches gRPC in writes of gzipOutputBuffer bytes but the last.
func TestGRPCGzip(t *testing.T) {
	c := encoding.GetCompressor(gzipName)
	if _, ok := c.(*grpcGzip); !ok {
		t.Fatalf("gRPC's %q compressor is a %T", gzipName, c)
	}
	body := mustEncode(t, NewConverter("test"), []*pipeline.Window{synthWindow(50, 2000, 16, 8)})
	for range 2 { // a new writer, then a pooled one
		var out writeSizes
		z, err := c.Compress(&out)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := z.Write(body); err != nil {
			t.Fatal(err)
		}
		if err := z.Close(); err != nil {
			t.Fatal(err)
		}
		for i, n := range out.sizes[:len(out.sizes)-1] {
			if n < gzipOutputBuffer {
				t.Fatalf("write %d of %d: %d bytes, want at least %d", i, len(out.sizes), n, gzipOutputBuffer)
			}
		}
		r, err := c.Decompress(&out.Buffer)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("decompressed %d bytes (%v), want the %d compressed", len(got), err, len(body))
		}
	}
}
