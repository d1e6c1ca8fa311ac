package grpcpolicy_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	grpcbalancer "google.golang.org/grpc/balancer"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"github.com/lodestar-go/lodestar/balancer/grpcpolicy"
)

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A retry section through the gRPC door is accepted (one config for both
// doors) but not applied yet: the policy says so in a warning, and RPCs work.
func TestRetrySectionWarnsThroughGRPC(t *testing.T) {
	var logs syncBuffer
	grpcbalancer.Register(grpcpolicy.NewBuilder(grpcpolicy.Options{Name: "lodestar_retrywarn",
		Logger: slog.New(slog.NewTextHandler(&logs, nil))}))
	ss := startServers(t, 2)
	cc := dial(t, "static:///"+strings.Join(addrs(ss), ","),
		serviceConfig("lodestar_retrywarn", `{"retry": {"maxAttempts": 2}}`))
	if _, err := testgrpc.NewTestServiceClient(cc).EmptyCall(context.Background(), &testgrpc.Empty{}, grpc.WaitForReady(true)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "retry section is not applied through the gRPC door") {
		t.Fatalf("logs %q: want the warning", logs.String())
	}
}
