package benchmarks

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	_ "google.golang.org/grpc/balancer/leastrequest" // least_request_experimental
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	_ "github.com/lodestar-go/lodestar/balancer/grpcpolicy"   // "lodestar"
	_ "github.com/lodestar-go/lodestar/resolver/grpcresolver" // "static:///"
)

// benchServer is a loopback gRPC server (TestService and health) counting
// the EmptyCalls it answers.
type benchServer struct {
	testgrpc.UnimplementedTestServiceServer
	calls atomic.Int64
}

func (s *benchServer) EmptyCall(context.Context, *testgrpc.Empty) (*testgrpc.Empty, error) {
	s.calls.Add(1)
	return &testgrpc.Empty{}, nil
}

// startBenchServers starts n servers on 127.0.0.1; they stop at the end of b.
func startBenchServers(b *testing.B, n int) ([]*benchServer, string) {
	b.Helper()
	ss := make([]*benchServer, n)
	addrs := make([]string, n)
	for i := range ss {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		srv := grpc.NewServer()
		ss[i] = &benchServer{}
		testgrpc.RegisterTestServiceServer(srv, ss[i])
		h := health.NewServer()
		healthpb.RegisterHealthServer(srv, h)
		done := make(chan struct{})
		go func() { defer close(done); srv.Serve(lis) }()
		b.Cleanup(func() { srv.Stop(); <-done })
		addrs[i] = lis.Addr().String()
	}
	return ss, "static:///" + strings.Join(addrs, ",")
}

// grpcPolicies are the configurations compared, lodestar's next to the
// grpc-go policy it matches.
var grpcPolicies = []struct{ name, lbConfig string }{
	{"grpc_round_robin", `{"round_robin":{}}`},
	{"lodestar_round_robin", `{"lodestar":{"algorithm":"round_robin"}}`},
	{"grpc_least_request", `{"least_request_experimental":{"choiceCount":2}}`},
	{"lodestar_least_request", `{"lodestar":{"algorithm":"least_request"}}`},
	{"lodestar_peak_ewma", `{"lodestar":{"algorithm":"peak_ewma"}}`},
}

// BenchmarkGRPCUnary sends unary RPCs (EmptyCall) in parallel over three
// loopback servers through each policy, all against the same servers in one
// run. Compare ns/op (or rpcs/s) and allocs/op between a lodestar policy and
// its grpc-go counterpart; the servers' own costs are in both.
func BenchmarkGRPCUnary(b *testing.B) {
	const servers = 3
	ss, target := startBenchServers(b, servers)
	for _, p := range grpcPolicies {
		b.Run(p.name, func(b *testing.B) {
			conn, err := grpc.NewClient(target,
				grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithDefaultServiceConfig(fmt.Sprintf(`{"loadBalancingConfig":[%s]}`, p.lbConfig)))
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			client := testgrpc.NewTestServiceClient(conn)
			warmUp(b, client, ss)

			b.ReportAllocs()
			b.SetParallelism(16) // keep several RPCs in flight per CPU
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				in := &testgrpc.Empty{}
				for pb.Next() {
					if _, err := client.EmptyCall(ctx, in); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rpcs/s")
		})
	}
}

// warmUp waits until every server has answered (all connections READY).
func warmUp(b *testing.B, client testgrpc.TestServiceClient, ss []*benchServer) {
	b.Helper()
	start := make([]int64, len(ss))
	for i, s := range ss {
		start[i] = s.calls.Load()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		all := true
		for i, s := range ss {
			all = all && s.calls.Load() > start[i]
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			b.Fatal("servers not all reached within 10s")
		}
		if _, err := client.EmptyCall(context.Background(), &testgrpc.Empty{}, grpc.WaitForReady(true)); err != nil {
			b.Fatal(err)
		}
	}
}
