package grpcpolicy_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	gresolver "google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/resolver"
	"github.com/lodestar-go/lodestar/resolver/grpcresolver"
)

// staticClient starts a channel over a static feed of the servers, through a
// per-channel resolver, with the test policy configured by cfg.
func staticClient(t *testing.T, service string, ss []*testServer, cfg string, opts ...grpc.DialOption) (*grpc.ClientConn, *resolver.Static) {
	t.Helper()
	registerTestPolicy()
	feed, err := resolver.NewStaticAddrs(addrs(ss)...)
	if err != nil {
		t.Fatal(err)
	}
	opts = append(opts, grpc.WithResolvers(grpcresolver.FeedBuilder("ls", feed)))
	cc := dial(t, "ls:///"+service, serviceConfig(testPolicy, cfg), opts...)
	cc.Connect()
	return cc, feed
}

// spread sends n EmptyCalls from workers goroutines, each with a distinct
// affinity key, and fails the test on any error.
func spread(t *testing.T, cc *grpc.ClientConn, n, workers int) {
	t.Helper()
	client := testgrpc.NewTestServiceClient(cc)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				ctx := balancer.WithAffinityKey(context.Background(), fmt.Sprint("key-", i))
				if _, err := client.EmptyCall(ctx, &testgrpc.Empty{}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// hashing reports whether the algorithm picks by affinity key.
func hashing(name string) bool {
	return strings.Contains(name, "hash") || strings.Contains(name, "maglev") || strings.Contains(name, "bounded")
}

func TestEveryAlgorithmDistributes(t *testing.T) {
	const servers, rpcs = 3, 900
	for _, name := range balancer.Algorithms() {
		t.Run(name, func(t *testing.T) {
			ss := startServers(t, servers)
			cc, _ := staticClient(t, "algo-"+name, ss, fmt.Sprintf(`{"algorithm":%q,"affinity":{"metadata":"x-shard"}}`, name))
			waitEligible(t, "algo-"+name, servers)
			resetCounts(ss)

			// Distinct keys: every algorithm, hashing or not, spreads them.
			spread(t, cc, rpcs, 8)
			got := counts(ss)
			var total int64
			for i, c := range got {
				total += c
				// Expected 300 each; 150 is far outside any fair algorithm's
				// noise at this size (binomial sd ~14) yet loose enough for
				// load- and latency-aware ones.
				if c < rpcs/servers/2 {
					t.Errorf("server %d got %d of %d RPCs (all: %v), want at least %d", i, c, rpcs, got, rpcs/servers/2)
				}
			}
			if total != rpcs {
				t.Errorf("servers saw %d RPCs, want %d", total, rpcs)
			}
			t.Logf("%s: %v", name, got)

			if name == "round_robin" { // sequential round robin is exact
				resetCounts(ss)
				client := testgrpc.NewTestServiceClient(cc)
				for range 300 {
					if _, err := client.EmptyCall(context.Background(), &testgrpc.Empty{}); err != nil {
						t.Fatal(err)
					}
				}
				if got := counts(ss); got[0] != 100 || got[1] != 100 || got[2] != 100 {
					t.Errorf("round robin: %v, want 100 each", got)
				}
			}

			if hashing(name) { // one key sticks to one endpoint, from metadata too
				resetCounts(ss)
				client := testgrpc.NewTestServiceClient(cc)
				ctx := metadata.AppendToOutgoingContext(context.Background(), "x-shard", "user-42")
				for range 50 {
					if _, err := client.EmptyCall(ctx, &testgrpc.Empty{}); err != nil {
						t.Fatal(err)
					}
				}
				got := counts(ss)
				if max(got[0], got[1], got[2]) != 50 {
					t.Errorf("%s with one affinity key spread over %v, want all 50 on one endpoint", name, got)
				}
			}
		})
	}
}

func TestServerGoneGetsNothingWaitForReadyKeepsSucceeding(t *testing.T) {
	ss := startServers(t, 3)
	cc, _ := staticClient(t, "gone", ss, `{"algorithm":"round_robin"}`)
	// Client-side health checking (grpc's health listener in pick_first).
	eng := waitEligible(t, "gone", 3)
	client := testgrpc.NewTestServiceClient(cc)

	// RPCs run throughout; none may fail.
	stop := make(chan struct{})
	var failed atomic.Int64
	var firstErr atomic.Value
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
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := client.EmptyCall(ctx, &testgrpc.Empty{}, grpc.WaitForReady(true))
				cancel()
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}

	// Server 0 stops gracefully while traffic flows.
	ss[0].srv.GracefulStop()
	eventually(t, "the stopped server to leave the eligible set", 10*time.Second, func() bool {
		return len(eng.Eligible()) == 2
	})
	gone := ss[0].calls.Load()
	before := counts(ss)
	eventually(t, "traffic on the remaining servers", 10*time.Second, func() bool {
		c := counts(ss)
		return c[1] > before[1]+100 && c[2] > before[2]+100
	})
	close(stop)
	wg.Wait()
	if n := ss[0].calls.Load(); n != gone {
		t.Errorf("stopped server got %d RPCs after it was gone", n-gone)
	}
	if n := failed.Load(); n > 0 {
		t.Errorf("%d wait-for-ready RPCs failed; first: %v", n, firstErr.Load())
	}
	ep := eng.Endpoint(ss[0].addr)
	if ep == nil || ep.Conditions()&balancer.NotConnected == 0 {
		t.Errorf("stopped server's endpoint %v is not marked NotConnected", ep)
	}
}

func TestUnhealthyServerGetsNothing(t *testing.T) {
	ss := startServers(t, 3)
	registerTestPolicy()
	feed, _ := resolver.NewStaticAddrs(addrs(ss)...)
	sc := `{"loadBalancingConfig":[{"lodestar_test":{}}],"healthCheckConfig":{"serviceName":""}}`
	cc := dial(t, "ls:///unhealthy", sc, grpc.WithResolvers(grpcresolver.FeedBuilder("ls", feed)))
	cc.Connect()
	eng := waitEligible(t, "unhealthy", 3)

	ss[1].health.SetServingStatus("", 2) // NOT_SERVING
	eventually(t, "the unhealthy server to leave the eligible set", 10*time.Second, func() bool {
		return len(eng.Eligible()) == 2
	})
	resetCounts(ss)
	client := testgrpc.NewTestServiceClient(cc)
	for range 200 {
		if _, err := client.EmptyCall(context.Background(), &testgrpc.Empty{}); err != nil {
			t.Fatal(err)
		}
	}
	if got := counts(ss); got[1] != 0 || got[0]+got[2] != 200 {
		t.Errorf("counts %v: the NOT_SERVING server got traffic", got)
	}
	ss[1].health.SetServingStatus("", 1) // SERVING again
	waitEligible(t, "unhealthy", 3)
}

func TestEndpointAddedThroughResolverGetsTraffic(t *testing.T) {
	ss := startServers(t, 3)
	cc, feed := staticClient(t, "added", ss[:2], `{"algorithm":"round_robin"}`)
	waitEligible(t, "added", 2)
	if err := feed.Set(resolver.Endpoint{Address: ss[0].addr}, resolver.Endpoint{Address: ss[1].addr}, resolver.Endpoint{Address: ss[2].addr}); err != nil {
		t.Fatal(err)
	}
	waitEligible(t, "added", 3)
	client := testgrpc.NewTestServiceClient(cc)
	for range 30 {
		if _, err := client.EmptyCall(context.Background(), &testgrpc.Empty{}); err != nil {
			t.Fatal(err)
		}
	}
	if n := ss[2].calls.Load(); n != 10 {
		t.Errorf("added server got %d of 30 round robin RPCs, want 10", n)
	}

	// And removed: it drains and gets nothing more.
	if err := feed.Set(resolver.Endpoint{Address: ss[0].addr}, resolver.Endpoint{Address: ss[1].addr}); err != nil {
		t.Fatal(err)
	}
	waitEligible(t, "added", 2)
	n := ss[2].calls.Load()
	for range 30 {
		if _, err := client.EmptyCall(context.Background(), &testgrpc.Empty{}); err != nil {
			t.Fatal(err)
		}
	}
	if m := ss[2].calls.Load(); m != n {
		t.Errorf("removed server got %d RPCs after removal", m-n)
	}
}

func TestGlobalSchemeAndDefaultPolicy(t *testing.T) {
	ss := startServers(t, 2)
	target := "static:///" + strings.Join(addrs(ss), ",")
	cc := dial(t, target, `{"loadBalancingConfig":[{"lodestar":{"algorithm":"round_robin"}}]}`)
	client := testgrpc.NewTestServiceClient(cc)
	eventually(t, "both servers to answer", 10*time.Second, func() bool {
		if _, err := client.EmptyCall(context.Background(), &testgrpc.Empty{}, grpc.WaitForReady(true)); err != nil {
			t.Fatal(err)
		}
		c := counts(ss)
		return c[0] > 0 && c[1] > 0
	})
}

func TestOutcomesReachTheEngine(t *testing.T) {
	ss := startServers(t, 1)
	cc, _ := staticClient(t, "outcomes", ss, `{}`)
	eng := waitEligible(t, "outcomes", 1)
	client := testgrpc.NewTestServiceClient(cc)
	call := func(code codes.Code) {
		_, err := client.UnaryCall(context.Background(), &testgrpc.SimpleRequest{ResponseStatus: &testgrpc.EchoStatus{Code: int32(code)}})
		if status.Code(err) != code {
			t.Fatalf("UnaryCall asking for %v: %v", code, err)
		}
	}
	for range 5 {
		call(codes.OK)
	}
	call(codes.NotFound)
	call(codes.ResourceExhausted)
	call(codes.Internal)
	call(codes.Unavailable)
	ep := eng.Endpoint(ss[0].addr)
	want := map[outcome.Class]uint64{
		outcome.Success: 5, outcome.ClientError: 1, outcome.Overloaded: 1,
		outcome.ServerError: 1, outcome.GatewayError: 1,
	}
	eventually(t, "outcomes to be reported", 5*time.Second, func() bool { return ep.InFlight() == 0 })
	for c := outcome.Success; c <= outcome.NotSent; c++ {
		if got := ep.Outcomes(c); got != want[c] {
			t.Errorf("Outcomes(%v) = %d, want %d", c, got, want[c])
		}
	}

	// The caller's own deadline is Canceled, not the endpoint's Timeout.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := client.EmptyCall(ctx, &testgrpc.Empty{}); status.Code(err) != codes.Canceled {
		t.Fatalf("canceled call: %v", err)
	}
	if got := ep.Outcomes(outcome.Timeout) + ep.Outcomes(outcome.ServerError); got != 1 {
		t.Errorf("a canceled call was counted against the endpoint")
	}
}

func TestNoEndpointsFailsFastUnlessWaitForReady(t *testing.T) {
	// Two addresses nothing listens on.
	ss := startServers(t, 2)
	dead := addrs(ss)
	for _, s := range ss {
		s.srv.Stop()
		<-s.done
	}
	registerTestPolicy()
	feed, _ := resolver.NewStaticAddrs(dead...)
	cc := dial(t, "ls:///deadsvc", serviceConfig(testPolicy, `{}`), grpc.WithResolvers(grpcresolver.FeedBuilder("ls", feed)))
	client := testgrpc.NewTestServiceClient(cc)

	start := time.Now()
	_, err := client.EmptyCall(context.Background(), &testgrpc.Empty{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("RPC with every endpoint down: %v, want UNAVAILABLE", err)
	}
	msg := status.Convert(err).Message()
	for _, want := range []string{`no endpoints available for "deadsvc"`, "2 not connected", "last connection error"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not say %q", msg, want)
		}
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("failing took %v", d)
	}

	// A wait-for-ready RPC waits (here until its deadline).
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = client.EmptyCall(ctx, &testgrpc.Empty{}, grpc.WaitForReady(true))
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("wait-for-ready RPC: %v, want DEADLINE_EXCEEDED", err)
	}

	// An empty set believed with allowEmpty says discovery found nothing.
	empty, _ := resolver.NewStatic()
	cc2 := dial(t, "ls2:///emptysvc", serviceConfig(testPolicy, `{"allowEmpty":true}`), grpc.WithResolvers(grpcresolver.FeedBuilder("ls2", empty)))
	_, err = testgrpc.NewTestServiceClient(cc2).EmptyCall(context.Background(), &testgrpc.Empty{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "discovery has found no endpoints") {
		t.Fatalf("RPC with no endpoints: %v", err)
	}
}

func TestServiceConfigErrorsNameTheField(t *testing.T) {
	for cfg, want := range map[string]string{
		`{"algorithm":"nope"}`:                              `unknown name "nope"`,
		`{"algoritm":"round_robin"}`:                        `unknown field "algoritm"`,
		`{"waitForEndpoints":"-1s"}`:                        "waitForEndpoints",
		`{"waitForEndpoints":"soon"}`:                       "waitForEndpoints",
		`{"algorithm":{"least_request":{"choiceCount":1}}}`: "choiceCount",
	} {
		_, err := grpc.NewClient("static:///127.0.0.1:1",
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultServiceConfig(serviceConfig("lodestar", cfg)))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("config %s: NewClient error %v, want one mentioning %q", cfg, err, want)
		}
	}

	// A bad config from the resolver fails the first RPC with the same text.
	ss := startServers(t, 1)
	r := manual.NewBuilderWithScheme("badsc")
	r.BuildCallback = func(_ gresolver.Target, cc gresolver.ClientConn, _ gresolver.BuildOptions) {
		cc.UpdateState(gresolver.State{
			Endpoints:     []gresolver.Endpoint{{Addresses: []gresolver.Address{{Addr: ss[0].addr}}}},
			ServiceConfig: cc.ParseServiceConfig(serviceConfig("lodestar", `{"algorithm":"nope"}`)),
		})
	}
	cc, err := grpc.NewClient("badsc:///svc", grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(r))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	_, err = testgrpc.NewTestServiceClient(cc).EmptyCall(context.Background(), &testgrpc.Empty{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), `unknown name "nope"`) {
		t.Errorf("first RPC with a bad resolver service config: %v", err)
	}
}

func TestConfigChangeTakesEffect(t *testing.T) {
	ss := startServers(t, 2)
	registerTestPolicy()
	r := manual.NewBuilderWithScheme("cfgchange")
	eps := []gresolver.Endpoint{
		{Addresses: []gresolver.Address{{Addr: ss[0].addr}}},
		{Addresses: []gresolver.Address{{Addr: ss[1].addr}}},
	}
	var ccMu sync.Mutex
	var rcc gresolver.ClientConn
	r.BuildCallback = func(_ gresolver.Target, cc gresolver.ClientConn, _ gresolver.BuildOptions) {
		ccMu.Lock()
		rcc = cc
		ccMu.Unlock()
		cc.UpdateState(gresolver.State{Endpoints: eps, ServiceConfig: cc.ParseServiceConfig(serviceConfig(testPolicy, `{"algorithm":"round_robin"}`))})
	}
	cc, err := grpc.NewClient("cfgchange:///cfgsvc", grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(r))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	cc.Connect()
	first := waitEligible(t, "cfgsvc", 2)
	if n := first.Config().Algorithm; n != nil && n.Name() != "round_robin" {
		t.Fatalf("first engine runs %s", n.Name())
	}
	ccMu.Lock()
	c := rcc
	ccMu.Unlock()
	c.UpdateState(gresolver.State{Endpoints: eps, ServiceConfig: c.ParseServiceConfig(serviceConfig(testPolicy, `{"algorithm":"least_request"}`))})
	eventually(t, "the engine running least_request", 10*time.Second, func() bool {
		e := testEngines.get("cfgsvc")
		return e.Config().Algorithm != nil && e.Config().Algorithm.Name() == "least_request" && len(e.Eligible()) == 2
	})
	client := testgrpc.NewTestServiceClient(cc)
	for range 20 {
		if _, err := client.EmptyCall(context.Background(), &testgrpc.Empty{}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestWeightsTravelFromTheResolver(t *testing.T) {
	for _, name := range balancer.Algorithms() {
		if !strings.HasPrefix(name, "weighted_") {
			continue
		}
		t.Run(name, func(t *testing.T) {
			ss := startServers(t, 3)
			registerTestPolicy()
			feed, err := resolver.NewStatic(
				resolver.Endpoint{Address: ss[0].addr, Weight: 1},
				resolver.Endpoint{Address: ss[1].addr, Weight: 2},
				resolver.Endpoint{Address: ss[2].addr, Weight: 3},
			)
			if err != nil {
				t.Fatal(err)
			}
			svc := "weights-" + name
			cc := dial(t, "ls:///"+svc, serviceConfig(testPolicy, fmt.Sprintf(`{"algorithm":%q}`, name)), grpc.WithResolvers(grpcresolver.FeedBuilder("ls", feed)))
			cc.Connect()
			eng := waitEligible(t, svc, 3)
			if w := eng.Endpoint(ss[2].addr).Weight(); w != 3 {
				t.Fatalf("engine weight %d, want 3", w)
			}
			resetCounts(ss)
			spread(t, cc, 1200, 4)
			got := counts(ss)
			// Expected 200/400/600; +-25% is over 6 sd for the random ones.
			for i, want := range []int64{200, 400, 600} {
				if got[i] < want*3/4 || got[i] > want*5/4 {
					t.Errorf("weights 1:2:3 gave %v, want about [200 400 600]", got)
					break
				}
			}
			t.Logf("%s: %v", name, got)
		})
	}
}

// brokenFeed fails every discovery call.
type brokenFeed struct{}

func (brokenFeed) Watch(ctx context.Context, s resolver.Sink) error {
	s.ReportError(errors.New("consul: connection refused"))
	<-ctx.Done()
	return ctx.Err()
}

func TestFeedErrorFailsRPCsWithTheCause(t *testing.T) {
	registerTestPolicy()
	cc := dial(t, "broken:///brokensvc", serviceConfig(testPolicy, `{}`), grpc.WithResolvers(grpcresolver.FeedBuilder("broken", brokenFeed{})))
	_, err := testgrpc.NewTestServiceClient(cc).EmptyCall(context.Background(), &testgrpc.Empty{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "consul: connection refused") {
		t.Fatalf("RPC while discovery fails: %v, want UNAVAILABLE naming the feed error", err)
	}
}
