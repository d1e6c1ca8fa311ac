package grpcpolicy_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"strings"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/lodestar-go/lodestar/balancer/grpcpolicy"
)

// flaky is a TestService that answers UNAVAILABLE when down is set.
type flaky struct {
	testgrpc.UnimplementedTestServiceServer
	down bool
	n    atomic.Int64
}

func (f *flaky) EmptyCall(context.Context, *testgrpc.Empty) (*testgrpc.Empty, error) {
	f.n.Add(1)
	if f.down {
		return nil, status.Error(codes.Unavailable, "down")
	}
	return &testgrpc.Empty{}, nil
}

// Retries through the gRPC door: the channel's config has a retry section,
// and the interceptors apply it. One of three servers answers UNAVAILABLE;
// each call it gets is retried on another server, so every call succeeds.
// EmptyCall is declared idempotent, so it may be sent again after it reached
// a server.
func ExampleNewRetries() {
	var addrs []string
	servers := []*flaky{{down: true}, {}, {}}
	for _, f := range servers {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			log.Fatal(err)
		}
		s := grpc.NewServer()
		testgrpc.RegisterTestServiceServer(s, f)
		go s.Serve(lis)
		defer s.Stop()
		addrs = append(addrs, lis.Addr().String())
	}

	retries, err := grpcpolicy.NewRetries(grpcpolicy.RetryOptions{
		IdempotentMethods: []string{"/grpc.testing.TestService/EmptyCall"},
	})
	if err != nil {
		log.Fatal(err)
	}
	opts := append(retries.DialOptions(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"lodestar":{
		  "retry": {"maxAttempts": 3, "backoff": {"base": "5ms", "max": "50ms"}}}}]}`))
	conn, err := grpc.NewClient("static:///"+strings.Join(addrs, ","), opts...)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	client := testgrpc.NewTestServiceClient(conn)

	failed := 0
	for range 30 {
		if _, err := client.EmptyCall(context.Background(), &testgrpc.Empty{}, grpc.WaitForReady(true)); err != nil {
			failed++
		}
	}
	// Every call was answered once by a healthy server, including those that
	// went to the bad one first.
	good := servers[1].n.Load() + servers[2].n.Load()
	fmt.Printf("failed: %d, answered by the healthy servers: %d, the bad one was tried and retried away from: %v\n",
		failed, good, servers[0].n.Load() > 0)
	// Output: failed: 0, answered by the healthy servers: 30, the bad one was tried and retried away from: true
}
