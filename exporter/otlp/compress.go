package otlp

import (
	"bufio"
	"bytes"
	"io"
	"sync"

	"github.com/klauspost/compress/gzip"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/gzip" // registered first, so that ours below replaces it
)

// gzipLevel is the compression level of every OTLP request. Level 1 of
// klauspost/compress takes about a tenth of the CPU of the standard
// library's default level for about 10% more bytes on a profiles request
// (BenchmarkGzipLevels): the CPU budget of one interval is 5 ms, and the
// stdlib's default alone used 19 ms of it for 5,000 stacks.
const gzipLevel = gzip.BestSpeed

// grpcGzip is gRPC's "gzip" compressor made with klauspost/compress at
// gzipLevel. It replaces grpc-go's own (standard library, default level)
// for the whole process; the wire format is the same gzip, so any OTLP
// receiver reads it.
type grpcGzip struct {
	writers, readers sync.Pool
}

func init() {
	encoding.RegisterCompressor(&grpcGzip{})
}

// gzipName is the compressor's name in gRPC and its grpc-encoding.
const gzipName = "gzip"

func (*grpcGzip) Name() string { return gzipName }

// gzipOutputBuffer is how much compressed output a gRPC compressor
// collects before passing it on: the largest HTTP/2 frame gRPC sends.
// gRPC copies every write of a compressor into a buffer of its own, and
// the gzip writer writes a few hundred bytes at a time: unbuffered, a
// 5,000-stack request was some 1,700 small buffers, allocated and framed
// one by one.
const gzipOutputBuffer = 16 << 10

type pooledWriter struct {
	*gzip.Writer
	out  *bufio.Writer
	pool *sync.Pool
}

func (w *pooledWriter) Close() error {
	defer w.pool.Put(w)
	err := w.Writer.Close()
	if err == nil {
		err = w.out.Flush()
	}
	w.out.Reset(nil) // gRPC's buffers are not ours to keep
	return err
}

func (c *grpcGzip) Compress(w io.Writer) (io.WriteCloser, error) {
	if z, ok := c.writers.Get().(*pooledWriter); ok {
		z.out.Reset(w)
		z.Reset(z.out)
		return z, nil
	}
	out := bufio.NewWriterSize(w, gzipOutputBuffer)
	z, err := gzip.NewWriterLevel(out, gzipLevel)
	if err != nil {
		return nil, err
	}
	return &pooledWriter{Writer: z, out: out, pool: &c.writers}, nil
}

// pooledReader goes back to the pool when gRPC closes it at the end of a
// message.
type pooledReader struct {
	*gzip.Reader
	pool *sync.Pool
}

func (r *pooledReader) Close() error {
	defer r.pool.Put(r)
	return r.Reader.Close()
}

func (c *grpcGzip) Decompress(r io.Reader) (io.Reader, error) {
	if z, ok := c.readers.Get().(*pooledReader); ok {
		if err := z.Reset(r); err != nil {
			c.readers.Put(z)
			return nil, err
		}
		return z, nil
	}
	z, err := gzip.NewReader(r)
	if err != nil {
		return nil, err
	}
	return &pooledReader{Reader: z, pool: &c.readers}, nil
}

// httpGzipWriters compress OTLP/HTTP bodies at the same level.
var httpGzipWriters = sync.Pool{New: func() any {
	w, _ := gzip.NewWriterLevel(io.Discard, gzipLevel)
	return w
}}

// gzipBody compresses body into a new buffer.
func gzipBody(body []byte) (*bytes.Buffer, error) {
	var buf bytes.Buffer
	buf.Grow(len(body)/2 + 512)
	zw := httpGzipWriters.Get().(*gzip.Writer)
	defer httpGzipWriters.Put(zw)
	zw.Reset(&buf)
	if _, err := zw.Write(body); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return &buf, nil
}
