package grpcpolicy_test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	grpcbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/grpcpolicy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testServer is a real gRPC server on 127.0.0.1 with grpc's health service and
// the interop TestService: EmptyCall counts, UnaryCall answers with the
// status the request asks for, after waiting for hold to close when the
// request asks for the server ID.
type testServer struct {
	testgrpc.UnimplementedTestServiceServer
	addr   string
	srv    *grpc.Server
	health *health.Server
	calls  atomic.Int64
	done   chan struct{}
	hold   chan struct{}
}

func (s *testServer) EmptyCall(context.Context, *testgrpc.Empty) (*testgrpc.Empty, error) {
	s.calls.Add(1)
	return &testgrpc.Empty{}, nil
}

func (s *testServer) UnaryCall(ctx context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	s.calls.Add(1)
	if req.GetFillServerId() {
		select {
		case <-s.hold:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if st := req.GetResponseStatus(); st != nil && st.GetCode() != 0 {
		return nil, status.Error(codes.Code(st.GetCode()), st.GetMessage())
	}
	return &testgrpc.SimpleResponse{}, nil
}

// startServers starts n servers on 127.0.0.1; they stop at the end of the test.
func startServers(t testing.TB, n int) []*testServer {
	t.Helper()
	ss := make([]*testServer, n)
	for i := range ss {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ss[i] = serve(t, lis)
	}
	return ss
}

// serve starts a test server on lis; it stops at the end of the test.
func serve(t testing.TB, lis net.Listener) *testServer {
	t.Helper()
	s := &testServer{addr: lis.Addr().String(), srv: grpc.NewServer(), health: health.NewServer(),
		done: make(chan struct{}), hold: make(chan struct{})}
	testgrpc.RegisterTestServiceServer(s.srv, s)
	healthpb.RegisterHealthServer(s.srv, s.health)
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	go func() {
		defer close(s.done)
		s.srv.Serve(lis)
	}()
	t.Cleanup(func() {
		s.srv.Stop()
		<-s.done
	})
	return s
}

func addrs(ss []*testServer) []string {
	a := make([]string, len(ss))
	for i, s := range ss {
		a[i] = s.addr
	}
	return a
}

func counts(ss []*testServer) []int64 {
	c := make([]int64, len(ss))
	for i, s := range ss {
		c[i] = s.calls.Load()
	}
	return c
}

func resetCounts(ss []*testServer) {
	for _, s := range ss {
		s.calls.Store(0)
	}
}

// serviceConfig returns a service config selecting policy with cfg (JSON).
func serviceConfig(policy, cfg string) string {
	return fmt.Sprintf(`{"loadBalancingConfig":[{%q:%s}]}`, policy, cfg)
}

// dial opens a client; it closes at the end of the test.
func dial(t testing.TB, target, sc string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(sc),
	}, opts...)
	cc, err := grpc.NewClient(target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// engines records the engines of a test policy, by target.
type engines struct {
	mu sync.Mutex
	m  map[string]*balancer.Engine
}

func (e *engines) record(target string, eng *balancer.Engine) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.m[target] = eng
}

func (e *engines) get(target string) *balancer.Engine {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.m[target]
}

var (
	testPolicyOnce sync.Once
	testEngines    = &engines{m: map[string]*balancer.Engine{}}
)

// testPolicy is the lodestar policy registered under another name, with an
// OnEngine hook that records engines.
const testPolicy = "lodestar_test"

func registerTestPolicy() {
	testPolicyOnce.Do(func() {
		grpcbalancer.Register(grpcpolicy.NewBuilder(grpcpolicy.Options{
			Name:     testPolicy,
			OnEngine: testEngines.record,
		}))
	})
}

// eventually polls cond every 5ms until it holds or the deadline passes.
func eventually(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitEligible waits until the engine for target has n eligible endpoints.
func waitEligible(t testing.TB, target string, n int) *balancer.Engine {
	t.Helper()
	var eng *balancer.Engine
	eventually(t, fmt.Sprintf("%d eligible endpoints for %s", n, target), 10*time.Second, func() bool {
		eng = testEngines.get(target)
		return eng != nil && len(eng.Eligible()) == n
	})
	return eng
}
