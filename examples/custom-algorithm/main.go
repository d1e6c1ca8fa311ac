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
// half of its requests, and the algorithm steers traffic away from it.
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
const config = `{"algorithm": "fewest_failures", "waitForEndpoints": "5s"}`

func main() {
	if err := run(os.Stdout); err != nil {
		log.Fatal(err)
	}
}

func run(out io.Writer) error {
	if err := runHTTP(out); err != nil {
		return err
	}
	return runGRPC(out)
}

func runHTTP(out io.Writer) error {
	var addrs [3]string
	var served [3]atomic.Int64
	for i := range addrs {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			served[i].Add(1)
			if i == 2 && rand.IntN(2) == 0 { // backend 2 fails half the time
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
	for range 600 {
		resp, err := client.Get("http://api/")
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	fmt.Fprintf(out, "HTTP, 600 requests with %s: healthy %d, %d; failing %d\n",
		config, served[0].Load(), served[1].Load(), served[2].Load())
	return nil
}

type testServer struct {
	testgrpc.UnimplementedTestServiceServer
	calls   atomic.Int64
	failing bool
}

func (s *testServer) EmptyCall(context.Context, *testgrpc.Empty) (*testgrpc.Empty, error) {
	s.calls.Add(1)
	if s.failing && rand.IntN(2) == 0 {
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
	for range 600 {
		_, err := client.EmptyCall(context.Background(), &testgrpc.Empty{}, grpc.WaitForReady(true))
		if status.Code(err) != codes.OK && status.Code(err) != codes.Internal {
			return err
		}
	}
	fmt.Fprintf(out, "gRPC, 600 RPCs with the same config:   healthy %d, %d; failing %d\n",
		servers[0].calls.Load(), servers[1].calls.Load(), servers[2].calls.Load())
	return nil
}
