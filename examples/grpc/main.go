// Command grpc shows lodestar's gRPC front door: it starts four real gRPC
// servers (with the standard health service) on 127.0.0.1 and a client that
// balances over them with the "lodestar" policy and lodestar's resolver
// schemes, and prints how the RPCs spread.
//
//	go run ./examples/grpc
//
// It shows round robin and least request over a "static:///" target, sticky
// routing with ring_hash and a metadata affinity key (24 users, each sticking
// to one backend, spread over the four), a server that turns NOT_SERVING
// leaving the rotation (client-side health checking), and a weighted endpoint
// added at run time through a lodestar feed used as a per-channel resolver.
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strconv"
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

func start(name string) (*server, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &server{name: name, addr: lis.Addr().String(), health: health.NewServer(), srv: grpc.NewServer()}
	testgrpc.RegisterTestServiceServer(s.srv, s)
	healthpb.RegisterHealthServer(s.srv, s.health)
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	go s.srv.Serve(lis)
	return s, nil
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
func dial(target, cfg string, opts ...grpc.DialOption) (*grpc.ClientConn, testgrpc.TestServiceClient, error) {
	sc := fmt.Sprintf(`{"loadBalancingConfig":[{"lodestar":%s}],"healthCheckConfig":{"serviceName":""}}`, cfg)
	opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultServiceConfig(sc))
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, nil, err
	}
	return conn, testgrpc.NewTestServiceClient(conn), nil
}

// call sends n RPCs from 8 goroutines, with ctx's metadata.
func call(ctx context.Context, client testgrpc.TestServiceClient, n int) error {
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
	var first error
	for range 8 {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// warm sends RPCs until every server in f has answered once, then resets the
// counts. It does not wait for discovery (a static target's list is in force
// as soon as the channel is built); it waits for connections: the channel
// connects to the backends in the background, RPCs go only to connected ones,
// and the counts below are meant to start with all of them in the rotation.
func warm(client testgrpc.TestServiceClient, f fleet) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		all := true
		for _, s := range f {
			all = all && s.calls.Load() > 0
		}
		if all {
			f.reset()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not every server answered within 10s:%v", f)
		}
		if err := call(context.Background(), client, 1); err != nil {
			return err
		}
	}
}

func main() {
	if err := run(os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// users and rpcsPerUser size the ring_hash part: enough users that they spread
// over the four backends whatever ports the servers get.
const (
	users       = 24
	rpcsPerUser = 20
)

func run(out io.Writer) error {
	var servers fleet
	defer func() {
		for _, s := range servers {
			s.srv.Stop()
		}
	}()
	for _, name := range []string{"a", "b", "c", "d"} {
		s, err := start(name)
		if err != nil {
			return err
		}
		servers = append(servers, s)
	}
	target := "static:///" + strings.Join(servers.addrs(), ",")
	fmt.Fprintln(out, "target:", target)

	// peak_ewma assumes an endpoint it has not heard from yet costs defaultRTT:
	// set it near the real latency (here loopback, well under a millisecond),
	// or the endpoints that answered first stay cheaper than untried ones.
	algorithms := map[string]string{
		"round_robin":   `"round_robin"`,
		"least_request": `"least_request"`,
		"peak_ewma":     `{"peak_ewma": {"defaultRTT": "100us"}}`,
	}
	for _, alg := range []string{"round_robin", "least_request", "peak_ewma"} {
		conn, client, err := dial(target, fmt.Sprintf(`{"algorithm":%s}`, algorithms[alg]))
		if err != nil {
			return err
		}
		err = warm(client, servers)
		if err == nil {
			err = call(context.Background(), client, 2000)
		}
		conn.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", alg, err)
		}
		fmt.Fprintf(out, "%-28s%v\n", alg+", 2000 RPCs:", servers)
		servers.reset()
	}

	if err := sticky(out, target, servers); err != nil {
		return fmt.Errorf("ring_hash: %w", err)
	}

	// Health: server c reports NOT_SERVING and leaves the rotation; no RPC fails.
	conn, client, err := dial(target, `{"algorithm":"round_robin"}`)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := warm(client, servers); err != nil {
		return err
	}
	servers[2].health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	deadline := time.Now().Add(10 * time.Second)
	for servers.reset(); ; servers.reset() { // until a window without c
		if err := call(context.Background(), client, 100); err != nil {
			return err
		}
		if servers[2].calls.Load() == 0 || time.Now().After(deadline) {
			break
		}
	}
	servers.reset()
	if err := call(context.Background(), client, 2000); err != nil {
		return err
	}
	fmt.Fprintf(out, "%-28s%v\n", "c NOT_SERVING, 2000 RPCs:", servers)
	servers[2].health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	conn.Close()

	// A lodestar feed as this channel's resolver: start with a and b, then add
	// d with weight 2 (weighted round robin).
	feed, err := resolver.NewStaticAddrs(servers[0].addr, servers[1].addr)
	if err != nil {
		return err
	}
	conn, client, err = dial("demo:///backend", `{"algorithm":"weighted_round_robin"}`, grpc.WithResolvers(grpcresolver.FeedBuilder("demo", feed)))
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := warm(client, servers[:2]); err != nil {
		return err
	}
	servers.reset()
	if err := call(context.Background(), client, 1000); err != nil {
		return err
	}
	fmt.Fprintf(out, "%-28s%v\n", "feed {a,b}, 1000 RPCs:", servers)
	if err := feed.Set(resolver.Endpoint{Address: servers[0].addr}, resolver.Endpoint{Address: servers[1].addr},
		resolver.Endpoint{Address: servers[3].addr, Weight: 2}); err != nil {
		return err
	}
	if err := warm(client, fleet{servers[3]}); err != nil { // d's connection
		return err
	}
	servers.reset()
	if err := call(context.Background(), client, 1000); err != nil {
		return err
	}
	fmt.Fprintf(out, "%-28s%v\n", "feed {a,b,d(weight 2)}:", servers)
	return nil
}

// sticky shows ring_hash keyed by the "x-user" metadata: users user-1 to
// user-24 each send a few RPCs; each user's RPCs all go to one backend (it
// fails if not), and the users spread over the backends, each backend owning
// the keys that hash to its arcs of the ring.
func sticky(out io.Writer, target string, servers fleet) error {
	conn, client, err := dial(target, `{"algorithm":"ring_hash","affinity":{"metadata":"x-user"}}`)
	if err != nil {
		return err
	}
	defer conn.Close()
	// All four connected first: a key's backend is its place on the ring
	// among the connected backends.
	if err := warm(client, servers); err != nil {
		return err
	}
	byBackend := map[string][]string{}
	for i := 1; i <= users; i++ {
		user := "user-" + strconv.Itoa(i)
		ctx := metadata.AppendToOutgoingContext(context.Background(), "x-user", user)
		if err := call(ctx, client, rpcsPerUser); err != nil {
			return err
		}
		var got []string
		for _, s := range servers {
			if s.calls.Load() > 0 {
				got = append(got, s.name)
			}
		}
		if len(got) != 1 {
			return fmt.Errorf("%s's %d RPCs went to %d backends:%v", user, rpcsPerUser, len(got), servers)
		}
		byBackend[got[0]] = append(byBackend[got[0]], user)
		servers.reset()
	}
	fmt.Fprintf(out, "ring_hash, x-user=user-1..user-%d, %d RPCs each: every user's RPCs went to one backend, and\n", users, rpcsPerUser)
	spread := fmt.Sprintf("%d of the %d", len(byBackend), len(servers))
	if len(byBackend) == len(servers) {
		spread = fmt.Sprintf("all %d", len(servers))
	}
	fmt.Fprintf(out, "the users spread over %s backends (each owns the keys that hash to its arcs of the ring):\n", spread)
	for _, s := range servers {
		fmt.Fprintf(out, "  %s: %2d users  %s\n", s.name, len(byBackend[s.name]), strings.Join(byBackend[s.name], " "))
	}
	return nil
}
