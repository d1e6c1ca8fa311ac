package grpcpolicy_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"strings"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	// In a program: blank imports register the policy ("lodestar") and the
	// resolver schemes ("static", ...) with grpc.
	_ "github.com/lodestar-go/lodestar/balancer/grpcpolicy"
	_ "github.com/lodestar-go/lodestar/resolver/grpcresolver"
)

// counter is a TestService that counts its calls.
type counter struct {
	testgrpc.UnimplementedTestServiceServer
	n atomic.Int64
}

func (c *counter) EmptyCall(context.Context, *testgrpc.Empty) (*testgrpc.Empty, error) {
	c.n.Add(1)
	return &testgrpc.Empty{}, nil
}

// A client balancing over three servers with lodestar's round robin, the
// endpoints named by a "static" target.
func Example() {
	var addrs []string
	var servers [3]counter
	for i := range servers {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			log.Fatal(err)
		}
		s := grpc.NewServer()
		testgrpc.RegisterTestServiceServer(s, &servers[i])
		go s.Serve(lis)
		defer s.Stop()
		addrs = append(addrs, lis.Addr().String())
	}

	conn, err := grpc.NewClient("static:///"+strings.Join(addrs, ","),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"lodestar":{"algorithm":"round_robin"}}]}`))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	client := testgrpc.NewTestServiceClient(conn)

	// Wait until every server is connected and has answered once.
	ready := func() bool { return servers[0].n.Load() > 0 && servers[1].n.Load() > 0 && servers[2].n.Load() > 0 }
	for !ready() {
		if _, err := client.EmptyCall(context.Background(), &testgrpc.Empty{}, grpc.WaitForReady(true)); err != nil {
			log.Fatal(err)
		}
	}
	for i := range servers {
		servers[i].n.Store(0)
	}

	for range 30 {
		if _, err := client.EmptyCall(context.Background(), &testgrpc.Empty{}); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Println(servers[0].n.Load(), servers[1].n.Load(), servers[2].n.Load())
	// Output: 10 10 10
}
