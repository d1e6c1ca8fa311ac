package debugpage_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	_ "github.com/lodestar-go/lodestar/balancer/grpcpolicy" // policy "lodestar"
	"github.com/lodestar-go/lodestar/resolver"
	_ "github.com/lodestar-go/lodestar/resolver/grpcresolver" // scheme static:///
)

// fixture is a process with two balancers on real loopback servers: an HTTP
// Transport service "users" over four backends (two healthy in two zones, one
// answering 503 until the outlier detector ejects it, one answering 500 until
// its circuit breaker opens) and a gRPC channel with the lodestar policy over
// three gRPC servers.
type fixture struct {
	tr                         *lodestar.Transport
	eng                        *balancer.Engine
	ok1, ok2, ejected, tripped string
	grpcAddrs                  []string
	grpcTarget                 string
}

// usersConfig ejects on 5 consecutive gateway errors (503) for 10 minutes and
// opens a breaker at half of at least 10 requests failing (the 500s, which
// the detector does not count; the 503s stop at 5, when their endpoint is
// ejected), for 10 minutes: both stay put while the test
// looks. At most half of the endpoints may be ejected.
const usersConfig = `{
  "algorithm": "round_robin",
  "outlierDetection": {"consecutiveFailures": 0, "consecutiveGatewayFailures": 5, "baseEjectionTime": "10m", "maxEjectionPercent": 50},
  "circuitBreaker": {"consecutiveFailures": 0, "failureRatio": 0.5, "minRequests": 10, "window": "1m", "openTimeout": "10m"}
}`

func backend(t *testing.T, status int, delay time.Duration) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if delay > 0 {
			time.Sleep(delay) // the backend's service time, not synchronisation
		}
		w.WriteHeader(status)
		io.WriteString(w, "hello")
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

type grpcServer struct {
	testgrpc.UnimplementedTestServiceServer
}

func (grpcServer) EmptyCall(context.Context, *testgrpc.Empty) (*testgrpc.Empty, error) {
	return &testgrpc.Empty{}, nil
}

func startGRPC(t *testing.T) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(srv, grpcServer{})
	healthpb.RegisterHealthServer(srv, health.NewServer())
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return lis.Addr().String()
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{
		ok1: backend(t, 200, 0), ok2: backend(t, 200, 2*time.Millisecond),
		ejected: backend(t, 503, 0), tripped: backend(t, 500, 0),
	}
	feed, err := resolver.NewStatic(
		resolver.Endpoint{Address: f.ok1, Locality: resolver.Locality{Region: "eu-west", Zone: "eu-west-1a"}, Weight: 2},
		resolver.Endpoint{Address: f.ok2, Locality: resolver.Locality{Region: "eu-west", Zone: "eu-west-1b"}},
		resolver.Endpoint{Address: f.ejected, Locality: resolver.Locality{Region: "eu-west", Zone: "eu-west-1a"}},
		resolver.Endpoint{Address: f.tripped, Locality: resolver.Locality{Region: "us-east", Zone: "us-east-1a"}, Priority: 1},
	)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := balancer.ParseConfig([]byte(usersConfig))
	if err != nil {
		t.Fatal(err)
	}
	f.tr, err = lodestar.NewTransport(lodestar.Options{
		Services: map[string]lodestar.Service{"users": {Feed: feed, Config: cfg}},
		Logger:   slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.tr.Close() })
	f.eng = f.tr.Engine("users")

	// Traffic until one endpoint is ejected and the other's breaker is open.
	client := &http.Client{Transport: f.tr}
	deadline := time.Now().Add(20 * time.Second)
	for sent := 0; ; sent++ {
		ej, br := f.eng.Endpoint(f.ejected), f.eng.Endpoint(f.tripped)
		if ej.Conditions()&balancer.Ejected != 0 && br.Conditions()&balancer.BreakerOpen != 0 && sent >= 60 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %d requests: %s is %v, %s is %v; want ejected and breaker open", sent, f.ejected, ej.Conditions(), f.tripped, br.Conditions())
		}
		resp, err := client.Get("http://users/profile")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}

	// A gRPC channel with the lodestar policy.
	f.grpcAddrs = []string{startGRPC(t), startGRPC(t), startGRPC(t)}
	f.grpcTarget = fmt.Sprintf("static:///%s,%s,%s", f.grpcAddrs[0], f.grpcAddrs[1], f.grpcAddrs[2])
	cc, err := grpc.NewClient(f.grpcTarget, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"lodestar":{"algorithm":"least_request"}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	tc := testgrpc.NewTestServiceClient(cc)
	for range 30 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := tc.EmptyCall(ctx, &testgrpc.Empty{}, grpc.WaitForReady(true))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	return f
}
