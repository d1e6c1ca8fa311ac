// Command grpc shows lodestar's gRPC front door: it starts four real gRPC
// servers (with the standard health service) on 127.0.0.1 and a client that
// balances over them with the "lodestar" policy and lodestar's resolver
// schemes, and prints how the RPCs spread.
//
//	go run ./examples/grpc
//
// It shows round robin and least request over a "static:///" target, sticky
// routing with ring_hash and a metadata affinity key, a server that turns
// NOT_SERVING leaving the rotation (client-side health checking), and an
// weighted endpoint added at run time through a lodestar feed used as a
// per-channel resolver.
package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"

	_ "github.com/lodestar-go/lodestar/balancer/grpcpolicy" // registers the "lodestar" policy
	"github.com/lodestar-go/lodestar/resolver"
	"github.com/lodestar-go/lodestar/resolver/grpcresolver" // registers "static:///" and the other feed schemes
)

// server is one backend: the interop TestService, counting its calls, and
// grpc's health service.
type server struct {
	testgrpc.UnimplementedTestServiceServer
	name   string
	addr   string
	calls  atomic.Int64
	health *health.Server
	srv    *grpc.Server
}

func (s *server) EmptyCall(context.Context, *testgrpc.Empty) (*testgrpc.Empty, error) {
	s.calls.Add(1)
	return &testgrpc.Empty{}, nil
}

func start(name string) *server {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	s := &server{name: name, addr: lis.Addr().String(), health: health.NewServer(), srv: grpc.NewServer()}
	testgrpc.RegisterTestServiceServer(s.srv, s)
	healthpb.RegisterHealthServer(s.srv, s.health)
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	go s.srv.Serve(lis)
	return s
}

type fleet []*server

func (f fleet) reset() {
	for _, s := range f {
		s.calls.Store(0)
	}
}

func (f fleet) String() string {
	var b strings.Builder
	for _, s := range f {
		fmt.Fprintf(&b, "  %s:%4d", s.name, s.calls.Load())
	}
	return b.String()
}

func (f fleet) addrs() []string {
	a := make([]string, len(f))
	for i, s := range f {
		a[i] = s.addr
	}
	return a
}

// dial opens a channel with the lodestar policy configured by cfg (the same
// JSON the HTTP transport takes) and client-side health checking.
func dial(target, cfg string, opts ...grpc.DialOption) (*grpc.ClientConn, testgrpc.TestServiceClient) {
	sc := fmt.Sprintf(`{"loadBalancingConfig":[{"lodestar":%s}],"healthCheckConfig":{"serviceName":""}}`, cfg)
	opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultServiceConfig(sc))
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		log.Fatal(err)
	}
	return conn, testgrpc.NewTestServiceClient(conn)
}

// call sends n RPCs from 8 goroutines, with ctx's metadata.
func call(ctx context.Context, client testgrpc.TestServiceClient, n int) {
	var next atomic.Int64
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			for next.Add(1) <= int64(n) {
				if _, err := client.EmptyCall(ctx, &testgrpc.Empty{}, grpc.WaitForReady(true)); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			log.Fatal(err)
		}
	}
}

// warm waits until every server in f has answered once.
func warm(client testgrpc.TestServiceClient, f fleet) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		all := true
		for _, s := range f {
			all = all && s.calls.Load() > 0
		}
		if all || time.Now().After(deadline) {
			f.reset()
			return
		}
		call(context.Background(), client, 1)
	}
}

func main() {
	servers := fleet{start("a"), start("b"), start("c"), start("d")}
	defer func() {
		for _, s := range servers {
			s.srv.Stop()
		}
	}()
	target := "static:///" + strings.Join(servers.addrs(), ",")
	fmt.Println("target:", target)

	for _, alg := range []string{"round_robin", "least_request", "peak_ewma"} {
		conn, client := dial(target, fmt.Sprintf(`{"algorithm":%q}`, alg))
		warm(client, servers)
		call(context.Background(), client, 2000)
		fmt.Printf("%-28s%v\n", alg+", 2000 RPCs:", servers)
		servers.reset()
		conn.Close()
	}

	// Sticky routing: ring_hash keyed by the "x-user" metadata.
	conn, client := dial(target, `{"algorithm":"ring_hash","affinity":{"metadata":"x-user"}}`)
	warm(client, servers)
	for _, user := range []string{"alice", "bob", "carol"} {
		ctx := metadata.AppendToOutgoingContext(context.Background(), "x-user", user)
		call(ctx, client, 300)
		fmt.Printf("%-28s%v\n", "ring_hash, x-user="+user+":", servers)
		servers.reset()
	}
	conn.Close()

	// Health: server c reports NOT_SERVING and leaves the rotation; no RPC fails.
	conn, client = dial(target, `{"algorithm":"round_robin"}`)
	warm(client, servers)
	servers[2].health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	deadline := time.Now().Add(10 * time.Second)
	for servers.reset(); ; servers.reset() { // until a window without c
		call(context.Background(), client, 100)
		if servers[2].calls.Load() == 0 || time.Now().After(deadline) {
			break
		}
	}
	servers.reset()
	call(context.Background(), client, 2000)
	fmt.Printf("%-28s%v\n", "c NOT_SERVING, 2000 RPCs:", servers)
	servers[2].health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	conn.Close()

	// A lodestar feed as this channel's resolver: start with a and b, then add
	// d with weight 2 (weighted round robin).
	feed, err := resolver.NewStaticAddrs(servers[0].addr, servers[1].addr)
	if err != nil {
		log.Fatal(err)
	}
	conn, client = dial("demo:///backend", `{"algorithm":"weighted_round_robin"}`, grpc.WithResolvers(grpcresolver.FeedBuilder("demo", feed)))
	warm(client, servers[:2])
	servers.reset()
	call(context.Background(), client, 1000)
	fmt.Printf("%-28s%v\n", "feed {a,b}, 1000 RPCs:", servers)
	if err := feed.Set(resolver.Endpoint{Address: servers[0].addr}, resolver.Endpoint{Address: servers[1].addr},
		resolver.Endpoint{Address: servers[3].addr, Weight: 2}); err != nil {
		log.Fatal(err)
	}
	warm(client, fleet{servers[3]})
	servers.reset()
	call(context.Background(), client, 1000)
	fmt.Printf("%-28s%v\n", "feed {a,b,d(weight 2)}:", servers)
	conn.Close()
}
