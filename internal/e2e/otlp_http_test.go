package e2e

import (
	"bytes"
	"compress/gzip"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/pmetric/pmetricotlp"
	"go.opentelemetry.io/collector/pdata/pprofile/pprofileotlp"
)

// --- OTLP/HTTP: pdata's request types behind net/http on loopback ---

// startOTLPHTTPReceiver serves OTLP/HTTP as the collector's receiver does,
// decoding with pdata's request types: profiles at
// /v1development/profiles, metrics at /v1/metrics and at each of
// extraMetricPaths.
func startOTLPHTTPReceiver(t *testing.T, extraMetricPaths ...string) *otlpReceiver {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &otlpReceiver{addr: l.Addr().String()}
	mux := http.NewServeMux()
	mux.Handle("POST /v1development/profiles", otlpHTTPHandler(t, func(body []byte, h http.Header) ([]byte, error) {
		if v := h.Get(pprofileotlp.DevelopmentVersionHeader); v != "" && v != pprofileotlp.DevelopmentVersion {
			t.Errorf("profiles development version %q", v)
		}
		req := pprofileotlp.NewExportRequest()
		if err := req.UnmarshalProto(body); err != nil {
			return nil, err
		}
		r.received("profiles", lowerKeys(h), func() { r.profiles = append(r.profiles, req.Profiles()) })
		return pprofileotlp.NewExportResponse().MarshalProto()
	}))
	metrics := otlpHTTPHandler(t, func(body []byte, h http.Header) ([]byte, error) {
		req := pmetricotlp.NewExportRequest()
		if err := req.UnmarshalProto(body); err != nil {
			return nil, err
		}
		r.received("metrics", lowerKeys(h), func() { r.metrics = append(r.metrics, req.Metrics()) })
		return pmetricotlp.NewExportResponse().MarshalProto()
	})
	for _, p := range append([]string{"/v1/metrics"}, extraMetricPaths...) {
		mux.Handle("POST "+p, metrics)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return r
}

// otlpHTTPHandler reads an OTLP/HTTP protobuf request (gzip or plain, as
// Content-Encoding says), hands its body to decode and answers with the
// encoded response, or 400 with the reason.
func otlpHTTPHandler(t *testing.T, decode func([]byte, http.Header) ([]byte, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if ct := req.Header.Get("Content-Type"); ct != "application/x-protobuf" {
			t.Errorf("%s: Content-Type %q", req.URL.Path, ct)
		}
		var body io.Reader = req.Body
		switch enc := req.Header.Get("Content-Encoding"); enc {
		case "gzip":
			zr, err := gzip.NewReader(req.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			body = zr
		case "":
		default:
			http.Error(w, "unknown Content-Encoding "+enc, http.StatusUnsupportedMediaType)
			return
		}
		raw, err := io.ReadAll(io.LimitReader(body, 64<<20))
		if err == nil {
			raw, err = decode(raw, req.Header)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.Write(raw)
	})
}

func lowerKeys(h http.Header) map[string][]string {
	out := make(map[string][]string, len(h))
	for k, v := range h {
		out[strings.ToLower(k)] = v
	}
	return out
}

// The same checks as TestOTLPProfilesAndMetrics, over OTLP/HTTP (gzip
// protobuf) to a base URL.
func TestOTLPHTTPProfilesAndMetrics(t *testing.T) {
	r := startOTLPHTTPReceiver(t)
	checkOTLPExport(t, r, "--otlp.endpoint=http://"+r.addr, "--otlp.protocol=http/protobuf")
	if enc := r.header("profiles", "Content-Encoding"); enc != "gzip" {
		t.Errorf("profiles sent with Content-Encoding %q, want gzip", enc)
	}
}

// OTLP configured by the standard variables alone: profiles over gRPC to
// the general endpoint, metrics over HTTP, uncompressed, to the signal's
// own URL, both with the general headers.
func TestOTLPEnvironmentOnly(t *testing.T) {
	grpcR := startOTLPReceiver(t, "")
	httpR := startOTLPHTTPReceiver(t, "/custom/metrics")
	for k, v := range map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT":            "http://" + grpcR.addr, // http: plaintext gRPC
		"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL":    "http/protobuf",
		"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT":    "http://" + httpR.addr + "/custom/metrics",
		"OTEL_EXPORTER_OTLP_METRICS_COMPRESSION": "none",
		"OTEL_EXPORTER_OTLP_HEADERS":             "x-cgscope-test=from%20env",
		"OTEL_EXPORTER_OTLP_TIMEOUT":             "4000",
	} {
		t.Setenv(k, v) // inherited by the daemon
	}
	d := startCgscope(t, t.Cleanup, "--profiling.interval=1s", "--otlp.interval=1s")
	w := workload(t, filepath.Join(artifacts(t), "gosplit"), "-duration=3s")
	waitUntil(t, 20*time.Second, func() bool {
		return grpcR.pidSamples(w.Process.Pid, "") > 0 && httpR.header("metrics", "x-cgscope-test") != ""
	})
	if _, ok := httpR.metric("container.cpu.time"); !ok {
		t.Error("no container.cpu.time at the metrics URL")
	}
	if p, _ := httpR.counts(); p != 0 {
		t.Errorf("%d profiles requests at the metrics receiver", p)
	}
	if _, m := grpcR.counts(); m != 0 {
		t.Errorf("%d metrics requests at the general endpoint; the signal's own wins", m)
	}
	for _, c := range []struct {
		r      *otlpReceiver
		signal string
	}{{grpcR, "profiles"}, {httpR, "metrics"}} {
		if v := c.r.header(c.signal, "x-cgscope-test"); v != "from env" {
			t.Errorf("%s: header x-cgscope-test=%q, want \"from env\"", c.signal, v)
		}
	}
	if enc := httpR.header("metrics", "Content-Encoding"); enc != "" {
		t.Errorf("metrics sent with Content-Encoding %q despite OTEL_EXPORTER_OTLP_METRICS_COMPRESSION=none", enc)
	}
	if !strings.Contains(d.stderr.String(), "from=OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") {
		t.Errorf("start-up log does not say where the metrics endpoint came from:\n%s", d.stderr)
	}
}

// A bad OTLP variable stops the start with a message naming it, before
// anything is attached.
func TestBadOTLPEnvironment(t *testing.T) {
	bin := filepath.Join(artifacts(t), "cgscope")
	for _, c := range []struct {
		env  []string
		name string
	}{
		{[]string{"OTEL_EXPORTER_OTLP_ENDPOINT=collector"}, "OTEL_EXPORTER_OTLP_ENDPOINT"},
		{[]string{"OTEL_EXPORTER_OTLP_ENDPOINT=127.0.0.1:4317", "OTEL_EXPORTER_OTLP_TIMEOUT=10s"}, "OTEL_EXPORTER_OTLP_TIMEOUT"},
		{[]string{"OTEL_EXPORTER_OTLP_ENDPOINT=127.0.0.1:4317", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL=http/json"}, "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"},
		{[]string{"OTEL_EXPORTER_OTLP_ENDPOINT=127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROFILES_COMPRESSION=zstd"}, "OTEL_EXPORTER_OTLP_PROFILES_COMPRESSION"},
		{[]string{"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=http://127.0.0.1:4318/v1/metrics", "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE=/no/such/ca.pem"}, "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE"},
	} {
		cmd := exec.Command(bin, "--web.listen-address="+freeAddr(t))
		cmd.Env = append(os.Environ(), c.env...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		if exit, ok := err.(*exec.ExitError); !ok || exit.ExitCode() == 0 {
			t.Errorf("%v: err=%v, want a non-zero exit", c.env, err)
			continue
		}
		if !strings.Contains(out.String(), c.name) {
			t.Errorf("%v: message does not name %s: %s", c.env, c.name, out.String())
		}
		if strings.Contains(out.String(), "cpus=") {
			t.Errorf("%v: attached before refusing: %s", c.env, out.String())
		}
	}
}
