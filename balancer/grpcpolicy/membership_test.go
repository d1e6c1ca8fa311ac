package grpcpolicy_test

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	gresolver "google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/resolver"
)

// Issue 14 item 3: addresses without a port, which grpc's own resolvers
// produce and pick_first and round_robin reach, are reached through lodestar
// too. The engine knows such an endpoint as "[address]:1".
func TestPortlessAddresses(t *testing.T) {
	registerTestPolicy()
	for _, tc := range []struct {
		name string
		// listen returns a listener, the target that names it and the
		// address grpc's resolver makes of the target.
		listen func(t *testing.T) (lis net.Listener, target, addr string)
	}{
		{"unix", func(t *testing.T) (net.Listener, string, string) {
			path := filepath.Join(t.TempDir(), "grpc.sock")
			lis, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			return lis, "unix://" + path, path
		}},
		{"unix-abstract", func(t *testing.T) (net.Listener, string, string) {
			if runtime.GOOS != "linux" {
				t.Skip("abstract unix sockets are Linux only")
			}
			name := fmt.Sprintf("lodestar-test-%d", time.Now().UnixNano())
			lis, err := net.Listen("unix", "@"+name)
			if err != nil {
				t.Fatal(err)
			}
			return lis, "unix-abstract:" + name, "@" + name
		}},
		{"passthrough name, custom dialer", func(t *testing.T) (net.Listener, string, string) {
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			return lis, "passthrough:///backend-a", "backend-a"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lis, target, addr := tc.listen(t)
			s := serve(t, lis)
			var opts []grpc.DialOption
			if strings.HasPrefix(target, "passthrough:") {
				opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
					if a != addr {
						return nil, fmt.Errorf("unexpected address %q", a)
					}
					var d net.Dialer
					return d.DialContext(ctx, "tcp", lis.Addr().String())
				}))
			}
			cc := dial(t, target, serviceConfig(testPolicy, `{}`), opts...)
			client := testgrpc.NewTestServiceClient(cc)
			// Fail-fast RPCs on a fresh channel: they wait while it connects.
			for range 20 {
				if _, err := client.EmptyCall(context.Background(), &testgrpc.Empty{}); err != nil {
					t.Fatalf("RPC to %s: %v", target, err)
				}
			}
			if n := s.calls.Load(); n != 20 {
				t.Errorf("server got %d RPCs, want 20", n)
			}
			u, err := url.Parse(target)
			if err != nil {
				t.Fatal(err)
			}
			service := gresolver.Target{URL: *u}.Endpoint()
			eng := testEngines.get(service)
			if eng == nil {
				t.Fatalf("no engine for %q", service)
			}
			ep := eng.Endpoint("[" + addr + "]:1")
			if ep == nil {
				t.Fatalf("engine endpoints %v, want [%s]:1", eng.Endpoints(), addr)
			}
			if n := ep.Outcomes(outcome.Success); n != 20 {
				t.Errorf("engine counted %d successes, want 20", n)
			}
		})
	}
}

// manualClient starts a channel over a manual resolver whose first state is
// eps with the test policy configured by cfg.
func manualClient(t *testing.T, scheme string, eps []gresolver.Endpoint, cfg string) (*grpc.ClientConn, *manual.Resolver) {
	t.Helper()
	registerTestPolicy()
	r := manual.NewBuilderWithScheme(scheme)
	r.BuildCallback = func(_ gresolver.Target, cc gresolver.ClientConn, _ gresolver.BuildOptions) {
		cc.UpdateState(gresolver.State{Endpoints: eps, ServiceConfig: cc.ParseServiceConfig(serviceConfig(testPolicy, cfg))})
	}
	cc := dial(t, scheme+":///"+scheme, `{}`, grpc.WithResolvers(r))
	cc.Connect()
	return cc, r
}

// state returns a resolver state with eps and the test policy configured by cfg.
func state(r *manual.Resolver, eps []gresolver.Endpoint, cfg string) gresolver.State {
	return gresolver.State{Endpoints: eps, ServiceConfig: r.CC().ParseServiceConfig(serviceConfig(testPolicy, cfg))}
}

func grpcEndpoints(ss []*testServer) []gresolver.Endpoint {
	eps := make([]gresolver.Endpoint, len(ss))
	for i, s := range ss {
		eps[i] = gresolver.Endpoint{Addresses: []gresolver.Address{{Addr: s.addr}}}
	}
	return eps
}

// Issue 14 item 4: an empty resolver update that comes with a config change
// is judged by the set in force, not by a fresh engine's empty one: the
// endpoints stay, and no RPC fails.
func TestConfigChangeWithEmptyUpdateKeepsTheSet(t *testing.T) {
	ss := startServers(t, 2)
	cc, r := manualClient(t, "cfgempty", grpcEndpoints(ss), `{"algorithm":"round_robin"}`)
	waitEligible(t, "cfgempty", 2)
	client := testgrpc.NewTestServiceClient(cc)

	var failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := client.EmptyCall(context.Background(), &testgrpc.Empty{}); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	for i, alg := range []string{"least_request", "random", "round_robin"} {
		// Empty, with a new config.
		r.UpdateState(state(r, nil, fmt.Sprintf(`{"algorithm":%q}`, alg)))
		eng := testEngines.get("cfgempty")
		if a := eng.Config().Algorithm; a == nil || a.Name() != alg {
			t.Fatalf("change %d: the engine runs %v, want %s", i, a, alg)
		}
		if n := len(eng.Endpoints()); n != 2 {
			t.Fatalf("change %d: the engine has %d endpoints after an empty update with a config change, want the 2 it had", i, n)
		}
		resetCounts(ss)
		eventually(t, "RPCs on both servers", 10*time.Second, func() bool {
			c := counts(ss)
			return c[0] > 20 && c[1] > 20
		})
	}
	close(stop)
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d RPCs failed across config changes with empty updates; first: %v", n, firstErr.Load())
	}

	// allowEmpty in the new config: the empty answer is believed.
	r.UpdateState(state(r, nil, `{"allowEmpty":true}`))
	_, err := client.EmptyCall(context.Background(), &testgrpc.Empty{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "discovery has found no endpoints") {
		t.Fatalf("RPC after an empty update with allowEmpty: %v", err)
	}
}

// Issue 14 item 4: a config change keeps the endpoints' statistics (outcome
// counters, requests in flight). It needs an engine that takes a new config
// in place.
func TestConfigChangeKeepsStatistics(t *testing.T) {
	ss := startServers(t, 1)
	cc, r := manualClient(t, "cfgstats", grpcEndpoints(ss), `{}`)
	eng := waitEligible(t, "cfgstats", 1)
	if _, ok := any(eng).(interface{ Reconfigure(balancer.Config) error }); !ok {
		t.Skip("balancer.Engine has no Reconfigure: a config change builds a new engine, and statistics restart")
	}
	client := testgrpc.NewTestServiceClient(cc)
	for range 5 {
		if _, err := client.EmptyCall(context.Background(), &testgrpc.Empty{}); err != nil {
			t.Fatal(err)
		}
	}
	held := make(chan error, 1)
	go func() {
		_, err := client.UnaryCall(context.Background(), &testgrpc.SimpleRequest{FillServerId: true})
		held <- err
	}()
	ep := eng.Endpoint(ss[0].addr)
	eventually(t, "the held RPC in flight", 5*time.Second, func() bool { return ep.InFlight() == 1 })

	r.UpdateState(state(r, grpcEndpoints(ss), `{"algorithm":"least_request"}`))
	if e := testEngines.get("cfgstats"); e != eng || e.Config().Algorithm == nil || e.Config().Algorithm.Name() != "least_request" {
		t.Fatalf("after the config change: engine %p running %v, want %p reconfigured", e, e.Config().Algorithm, eng)
	}
	if got := eng.Endpoint(ss[0].addr); got != ep || ep.InFlight() != 1 || ep.Outcomes(outcome.Success) != 5 {
		t.Errorf("endpoint after the config change: %p in flight %d, %d successes; want %p, 1, 5", got, ep.InFlight(), ep.Outcomes(outcome.Success), ep)
	}
	close(ss[0].hold)
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	eventually(t, "in flight back to 0", 5*time.Second, func() bool { return ep.InFlight() == 0 })
}

// Issue 9: after Static.Set returns, no new RPC goes to an endpoint it
// removed. The static feed delivers to the channel synchronously.
func TestStaticSetTakesEffectBeforeItReturns(t *testing.T) {
	ss := startServers(t, 3)
	cc, feed := staticClient(t, "staticset", ss, `{"algorithm":"round_robin"}`)
	waitEligible(t, "staticset", 3)
	client := testgrpc.NewTestServiceClient(cc)
	all := make([]resolver.Endpoint, len(ss))
	for i, s := range ss {
		all[i] = resolver.Endpoint{Address: s.addr}
	}
	for i := range 9 {
		gone := i % len(ss)
		rest := make([]resolver.Endpoint, 0, len(ss)-1)
		for j, ep := range all {
			if j != gone {
				rest = append(rest, ep)
			}
		}
		if err := feed.Set(rest...); err != nil {
			t.Fatal(err)
		}
		before := ss[gone].calls.Load()
		for range 20 {
			if _, err := client.EmptyCall(context.Background(), &testgrpc.Empty{}); err != nil {
				t.Fatal(err)
			}
		}
		if n := ss[gone].calls.Load() - before; n != 0 {
			t.Fatalf("round %d: the endpoint Set removed got %d of 20 RPCs sent after Set returned", i, n)
		}
		if err := feed.Set(all...); err != nil {
			t.Fatal(err)
		}
		waitEligible(t, "staticset", 3)
	}
}

// Issue 9: a target whose scheme grpc does not know falls back to grpc's DNS
// resolver, which resolves the whole string; the policy says what happened.
// A manual "dns" resolver stands in for grpc's, answering with a real server.
func TestUnknownSchemeFallingBackToDNSIsNamed(t *testing.T) {
	ss := startServers(t, 1)
	r := manual.NewBuilderWithScheme("dns")
	r.InitialState(gresolver.State{Endpoints: grpcEndpoints(ss)})
	cc := dial(t, "cnsul://127.0.0.1:8500/web?token=s3cret", serviceConfig("lodestar", `{}`), grpc.WithResolvers(r))
	client := testgrpc.NewTestServiceClient(cc)
	for _, opts := range [][]grpc.CallOption{nil, {grpc.WaitForReady(true)}} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := client.EmptyCall(ctx, &testgrpc.Empty{}, opts...)
		cancel()
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), `scheme "cnsul" is not registered with grpc`) ||
			!strings.Contains(err.Error(), "static") {
			t.Fatalf("RPC (options %v): %v, want UNAVAILABLE naming the scheme", opts, err)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("error shows the token: %v", err)
		}
	}
	if n := ss[0].calls.Load(); n != 0 {
		t.Errorf("the address DNS found got %d RPCs", n)
	}
}
