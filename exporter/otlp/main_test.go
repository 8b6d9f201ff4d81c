package otlp

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"

	"go.opentelemetry.io/collector/pdata/pprofile/pprofileotlp"
	"google.golang.org/grpc"
)

// receiverProcessEnv makes the test binary a profiles receiver instead of
// running tests (see startReceiverProcess).
const receiverProcessEnv = "CGSCOPE_OTLP_RECEIVER_PROCESS"

func TestMain(m *testing.M) {
	if os.Getenv(receiverProcessEnv) != "" {
		os.Exit(runReceiverProcess())
	}
	os.Exit(m.Run())
}

// runReceiverProcess serves the collector's pdata profiles server on a
// free loopback port, prints the address, and exits when stdin closes.
// Every request is decoded in full (the server does it) and its samples
// counted, so a malformed request fails the sender.
func runReceiverProcess() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	srv := grpc.NewServer()
	pprofileotlp.RegisterGRPCServer(srv, &countingServer{})
	go srv.Serve(l)
	fmt.Println(l.Addr())
	io.Copy(io.Discard, os.Stdin)
	srv.Stop()
	return 0
}

type countingServer struct {
	pprofileotlp.UnimplementedGRPCServer
}

func (*countingServer) Export(_ context.Context, req pprofileotlp.ExportRequest) (pprofileotlp.ExportResponse, error) {
	if req.Profiles().SampleCount() == 0 {
		return pprofileotlp.NewExportResponse(), fmt.Errorf("no samples")
	}
	return pprofileotlp.NewExportResponse(), nil
}

// startReceiverProcess runs runReceiverProcess in a child process (this
// test binary again) and returns its address; the child ends with tb.
func startReceiverProcess(tb testing.TB) string {
	tb.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), receiverProcessEnv+"=1")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { stdin.Close(); cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		tb.Fatalf("receiver process: %v", err)
	}
	return strings.TrimSpace(line)
}
