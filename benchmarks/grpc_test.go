package benchmarks

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
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

	"github.com/lodestar-go/lodestar/balancer/grpcpolicy"     // registers "lodestar"
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
// run. Compare ns/op (or rpcs/s), cpu-ns/op and allocs/op between a lodestar
// policy and its grpc-go counterpart; the servers' own costs are in both. On a
// shared or small machine wall time is noisy: use -count and compare medians.
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
			cpu0 := cpuTime()
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
			// CPU time per RPC (client and servers, user and system) is far
			// less sensitive than wall time to other load on the machine.
			if cpu0 != 0 {
				b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
			}
		})
	}
}

// BenchmarkGRPCHeadToHead runs a lodestar policy and its grpc-go counterpart
// at the same time over the same servers: every iteration sends one RPC through
// each, in alternating order, and times them. Both see the same machine, so
// their latency ratio (the "lodestar/grpc" metric; below 1 means lodestar is
// faster) holds even when other load makes absolute figures swing.
func BenchmarkGRPCHeadToHead(b *testing.B) {
	ss, target := startBenchServers(b, 3)
	for _, pair := range []struct{ name, lodestar, grpc string }{
		{"round_robin", `{"lodestar":{"algorithm":"round_robin"}}`, `{"round_robin":{}}`},
		{"least_request", `{"lodestar":{"algorithm":"least_request"}}`, `{"least_request_experimental":{"choiceCount":2}}`},
		{"peak_ewma_vs_least_request", `{"lodestar":{"algorithm":"peak_ewma"}}`, `{"least_request_experimental":{"choiceCount":2}}`},
	} {
		b.Run(pair.name, func(b *testing.B) {
			var clients [2]testgrpc.TestServiceClient // 0 lodestar, 1 grpc
			for i, cfg := range []string{pair.lodestar, pair.grpc} {
				conn, err := grpc.NewClient(target,
					grpc.WithTransportCredentials(insecure.NewCredentials()),
					grpc.WithDefaultServiceConfig(fmt.Sprintf(`{"loadBalancingConfig":[%s]}`, cfg)))
				if err != nil {
					b.Fatal(err)
				}
				defer conn.Close()
				clients[i] = testgrpc.NewTestServiceClient(conn)
				warmUp(b, clients[i], ss)
			}
			var spent [2]atomic.Int64
			var flip atomic.Uint32
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				in := &testgrpc.Empty{}
				first := int(flip.Add(1) & 1)
				for pb.Next() {
					for k := range 2 {
						i := first ^ k
						t0 := time.Now()
						if _, err := clients[i].EmptyCall(ctx, in); err != nil {
							b.Error(err)
							return
						}
						spent[i].Add(int64(time.Since(t0)))
					}
					first ^= 1
				}
			})
			b.StopTimer()
			l, g := float64(spent[0].Load())/float64(b.N), float64(spent[1].Load())/float64(b.N)
			b.ReportMetric(l, "lodestar-ns/rpc")
			b.ReportMetric(g, "grpc-ns/rpc")
			b.ReportMetric(l/g, "lodestar/grpc")
		})
	}
}

// cpuTime returns the process's user and system CPU time so far, from
// /proc/self/stat (Linux; clock ticks, 10ms). Elsewhere it returns 0 and
// cpu-ns/op is not reported.
func cpuTime() time.Duration {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces) in parentheses:
	// state is field 3, utime 14, stime 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	const tick = 10 * time.Millisecond // USER_HZ is 100 on every Linux ABI
	return time.Duration(ut+st) * tick
}

// warmUp sends RPCs until every server has answered one (so every connection
// is READY before the clock starts), or for a second at most: a latency-aware
// policy such as peak_ewma may keep a light sequential load on the fastest
// endpoint and never try the others.
func warmUp(b *testing.B, client testgrpc.TestServiceClient, ss []*benchServer) {
	b.Helper()
	start := make([]int64, len(ss))
	for i, s := range ss {
		start[i] = s.calls.Load()
	}
	deadline := time.Now().Add(time.Second)
	for {
		if _, err := client.EmptyCall(context.Background(), &testgrpc.Empty{}, grpc.WaitForReady(true)); err != nil {
			b.Fatal(err)
		}
		all := true
		for i, s := range ss {
			all = all && s.calls.Load() > start[i]
		}
		if all || time.Now().After(deadline) {
			return
		}
	}
}

// BenchmarkGRPCRetries measures what retries configured but not triggered
// cost a unary RPC through the gRPC door, in one run against the same
// servers: lodestar's round robin without retries; with a retry section and
// lodestar's retry interceptor (grpcpolicy.NewRetries); and grpc-go's own
// round_robin with a service-config retryPolicy, the peer.
func BenchmarkGRPCRetries(b *testing.B) {
	ss, target := startBenchServers(b, 3)
	retries, err := grpcpolicy.NewRetries(grpcpolicy.RetryOptions{IdempotentMethods: []string{"/grpc.testing.TestService/"}})
	if err != nil {
		b.Fatal(err)
	}
	const grpcRetry = `,"methodConfig":[{"name":[{"service":"grpc.testing.TestService"}],
	  "retryPolicy":{"maxAttempts":3,"initialBackoff":"0.025s","maxBackoff":"1s","backoffMultiplier":2,"retryableStatusCodes":["UNAVAILABLE"]}}]`
	for _, c := range []struct {
		name, sc string
		opts     []grpc.DialOption
	}{
		{"lodestar_no_retry", `{"loadBalancingConfig":[{"lodestar":{}}]}`, nil},
		{"lodestar_retry_interceptor", `{"loadBalancingConfig":[{"lodestar":{"retry":{"maxAttempts":3}}}]}`, retries.DialOptions()},
		{"grpc_round_robin_retryPolicy", `{"loadBalancingConfig":[{"round_robin":{}}]` + grpcRetry + `}`, nil},
	} {
		b.Run(c.name, func(b *testing.B) {
			conn, err := grpc.NewClient(target, append([]grpc.DialOption{
				grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithDefaultServiceConfig(c.sc)}, c.opts...)...)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			client := testgrpc.NewTestServiceClient(conn)
			warmUp(b, client, ss)
			b.ReportAllocs()
			b.SetParallelism(16)
			cpu0 := cpuTime()
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
			if cpu0 != 0 {
				b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
			}
		})
	}
}
