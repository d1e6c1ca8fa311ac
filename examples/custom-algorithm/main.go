// Command custom-algorithm shows that an algorithm written outside lodestar,
// against its public interface, plugs in exactly like a built-in one: it is
// registered by name, named from JSON configuration, and used by both the HTTP
// transport and the gRPC policy.
//
//	go run ./examples/custom-algorithm
//
// The algorithm, "fewest_failures", samples two endpoints at random and picks
// the one with fewer failed requests so far (from the outcome counters the
// engine keeps on every endpoint). Three backends serve each door; one fails
// half of its requests, and the algorithm steers traffic away from it. The
// program prints what it sets up, what each backend got, and why.
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	_ "github.com/lodestar-go/lodestar/balancer/grpcpolicy" // the "lodestar" gRPC policy
	"github.com/lodestar-go/lodestar/balancer/outcome"
	_ "github.com/lodestar-go/lodestar/resolver/grpcresolver" // "static:///" for gRPC
)

// FewestFailures is the custom algorithm's options struct (it has none).
type FewestFailures struct{}

func init() {
	balancer.Register("fewest_failures", func() balancer.Algorithm { return &FewestFailures{} })
}

// Name returns the name the algorithm is registered under.
func (*FewestFailures) Name() string { return "fewest_failures" }

// Validate has nothing to check.
func (*FewestFailures) Validate() error { return nil }

// Build returns a picker over the eligible endpoints. It runs off the hot path.
func (*FewestFailures) Build(info balancer.BuildInfo) balancer.Picker {
	return &picker{eps: info.Endpoints, rand: info.Rand}
}

type picker struct {
	eps  []*balancer.Endpoint
	rand func() uint64
}

// Pick is called concurrently: it only reads atomics and allocates nothing.
func (p *picker) Pick(balancer.PickInfo) (*balancer.Endpoint, error) {
	n := uint64(len(p.eps))
	a, b := p.eps[p.rand()%n], p.eps[p.rand()%n]
	if failures(b) < failures(a) {
		return b, nil
	}
	return a, nil
}

func failures(ep *balancer.Endpoint) uint64 {
	var f uint64
	for c := outcome.Success; c <= outcome.NotSent; c++ {
		if c.Failure() {
			f += ep.Outcomes(c)
		}
	}
	return f
}

// config is plain JSON: the same text configures HTTP and gRPC.
const config = `{"algorithm": "fewest_failures"}`

// requests is how many requests (RPCs) each door sends.
const requests = 600

func main() {
	if err := run(os.Stdout); err != nil {
		log.Fatal(err)
	}
}

func run(out io.Writer) error {
	fmt.Fprintf(out, "fewest_failures is an algorithm written outside lodestar and registered by name.\n")
	fmt.Fprintf(out, "Each pick draws two of the backends at random and takes the one with fewer failed requests so far.\n")
	fmt.Fprintf(out, "Each door gets 3 backends: two healthy ones and a failing one that answers half its requests with an error;\n")
	fmt.Fprintf(out, "%d requests each, one at a time, so a fair share would be %d per backend.\n\n", requests, requests/3)
	if err := runHTTP(out); err != nil {
		return err
	}
	if err := runGRPC(out); err != nil {
		return err
	}
	fmt.Fprintf(out, "\nWhy those numbers: once the failing backend has failed once, it loses every draw that includes a\n")
	fmt.Fprintf(out, "healthy backend, so it is picked only when both draws are itself: 1 pick in 9, about %d of %d, plus\n", requests/9, requests)
	fmt.Fprintf(out, "a few picks before its first failure. The healthy two tie at 0 failures (a tie takes the first draw),\n")
	fmt.Fprintf(out, "so each gets 4 picks in 9, about %d, give or take the randomness of the draws.\n", requests*4/9)
	return nil
}

func runHTTP(out io.Writer) error {
	var addrs [3]string
	var served, failed [3]atomic.Int64
	for i := range addrs {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			served[i].Add(1)
			if i == 2 && rand.IntN(2) == 0 { // backend 2 fails half the time
				failed[i].Add(1)
				http.Error(w, "failing", http.StatusInternalServerError)
			}
		}))
		defer srv.Close()
		addrs[i] = srv.Listener.Addr().String()
	}
	cfg, err := balancer.ParseConfig([]byte(config))
	if err != nil {
		return err
	}
	tr, err := lodestar.NewTransport(lodestar.Options{Services: map[string]lodestar.Service{
		"api": {Target: "static:///" + addrs[0] + "," + addrs[1] + "," + addrs[2], Config: cfg},
	}})
	if err != nil {
		return err
	}
	defer tr.Close()
	client := &http.Client{Transport: tr}
	for range requests {
		resp, err := client.Get("http://api/")
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	fmt.Fprintf(out, "HTTP, %d requests with %s: healthy %d, %d; failing %d (%d of them answered 500)\n",
		requests, config, served[0].Load(), served[1].Load(), served[2].Load(), failed[2].Load())
	return nil
}

type testServer struct {
	testgrpc.UnimplementedTestServiceServer
	calls    atomic.Int64
	failures atomic.Int64
	failing  bool
}

func (s *testServer) EmptyCall(context.Context, *testgrpc.Empty) (*testgrpc.Empty, error) {
	s.calls.Add(1)
	if s.failing && rand.IntN(2) == 0 {
		s.failures.Add(1)
		return nil, status.Error(codes.Internal, "failing")
	}
	return &testgrpc.Empty{}, nil
}

func runGRPC(out io.Writer) error {
	var servers [3]*testServer
	target := "static:///"
	for i := range servers {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		servers[i] = &testServer{failing: i == 2}
		gs := grpc.NewServer()
		testgrpc.RegisterTestServiceServer(gs, servers[i])
		go gs.Serve(lis)
		defer gs.Stop()
		if i > 0 {
			target += ","
		}
		target += lis.Addr().String()
	}
	conn, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig": [{"lodestar": `+config+`}]}`))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := testgrpc.NewTestServiceClient(conn)
	emptyCall := func() error {
		_, err := client.EmptyCall(context.Background(), &testgrpc.Empty{})
		if status.Code(err) != codes.OK && status.Code(err) != codes.Internal {
			return err
		}
		return nil
	}
	// The channel connects to the backends in the background, and an RPC goes
	// only to a backend whose connection is ready: until both healthy ones are
	// connected, RPCs go to whichever is (the failing one, some runs). Count
	// from when both have answered, so that both doors start even. (The very
	// first RPC needs no waiting of its own: it waits for a connection.)
	warmup := 0
	deadline := time.Now().Add(10 * time.Second)
	for servers[0].calls.Load() == 0 || servers[1].calls.Load() == 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("gRPC: the healthy backends did not both answer within 10s (%d RPCs)", warmup)
		}
		if err := emptyCall(); err != nil {
			return err
		}
		warmup++
	}
	for _, s := range servers {
		s.calls.Store(0)
		s.failures.Store(0)
	}
	for range requests {
		if err := emptyCall(); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "gRPC, %d RPCs with the same config:   healthy %d, %d; failing %d (%d of them answered INTERNAL)\n",
		requests, servers[0].calls.Load(), servers[1].calls.Load(), servers[2].calls.Load(), servers[2].failures.Load())
	fmt.Fprintf(out, "  (counted after %d warm-up RPC(s): gRPC sends an RPC only to a backend it is connected to, so the\n", warmup)
	fmt.Fprintf(out, "  warm-up lasts until both healthy backends are connected and have answered once)\n")
	return nil
}
