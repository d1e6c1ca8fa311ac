package grpcpolicy_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	grpcbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/grpcpolicy"
	"github.com/lodestar-go/lodestar/resolver"
	"github.com/lodestar-go/lodestar/resolver/grpcresolver"
)

// siteServer is a real gRPC server on 127.0.0.1 (the interop TestService and
// the health service) that can be stopped and started again on the same
// address: one endpoint of a multi-site fleet.
type siteServer struct {
	testgrpc.UnimplementedTestServiceServer
	name string
	addr string
	prio int
	loc  resolver.Locality

	mu   sync.Mutex
	srv  *grpc.Server
	done chan struct{}
}

func (s *siteServer) EmptyCall(context.Context, *testgrpc.Empty) (*testgrpc.Empty, error) {
	return &testgrpc.Empty{}, nil
}

func (s *siteServer) start(t *testing.T) {
	t.Helper()
	addr := s.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("%s: listen %s: %v", s.name, addr, err)
	}
	s.addr = lis.Addr().String()
	srv := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(srv, s)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(lis)
	}()
	s.mu.Lock()
	s.srv, s.done = srv, done
	s.mu.Unlock()
}

func (s *siteServer) stop() {
	s.mu.Lock()
	srv, done := s.srv, s.done
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.Stop()
		<-done
	}
}

// multiSite starts 8 servers: two clouds (priority 0 in us-east-1, priority
// 1 in us-west-2) × two zones × two servers. The caller is in us-east-1a.
func multiSite(t *testing.T) []*siteServer {
	var ss []*siteServer
	for prio, region := range []string{"us-east-1", "us-west-2"} {
		for _, z := range []string{"a", "b"} {
			for i := range 2 {
				s := &siteServer{name: fmt.Sprintf("%s%s-%d", region, z, i+1), prio: prio,
					loc: resolver.Locality{Region: region, Zone: region + z}}
				s.start(t)
				t.Cleanup(s.stop)
				ss = append(ss, s)
			}
		}
	}
	return ss
}

const multiSitePolicy = "lodestar_multisite"

// multiSiteSeed seeds the policy's random source.
const multiSiteSeed = 12

var (
	multiSiteOnce sync.Once
	multiSiteEngs = &engines{m: map[string]*balancer.Engine{}}
)

func registerMultiSitePolicy() {
	multiSiteOnce.Do(func() {
		var mu sync.Mutex
		src := rand.New(rand.NewPCG(multiSiteSeed, multiSiteSeed+1))
		grpcbalancer.Register(grpcpolicy.NewBuilder(grpcpolicy.Options{
			Name: multiSitePolicy,
			Rand: func() uint64 {
				mu.Lock()
				defer mu.Unlock()
				return src.Uint64()
			},
			OnEngine: multiSiteEngs.record,
		}))
	})
}

// The multi-site scenario through the gRPC door: a static feed carrying
// Locality, Priority and Metadata through grpcresolver into the policy's
// engine; the lodestar config is the policy's loadBalancingConfig, and
// retries are grpc's own retryPolicy on UNAVAILABLE. All healthy, every RPC
// stays in the caller's zone; half the local zone stopped, Envoy's formula
// (2/3 local) within ±3 points over 10,000 RPCs (seed 12); the whole primary
// stopped, no RPC fails and the primary is out of picks within a second;
// back, traffic returns gradually and ends all local again.
func TestE2EMultiSiteGRPC(t *testing.T) {
	registerMultiSitePolicy()
	ss := multiSite(t)
	eps := make([]resolver.Endpoint, len(ss))
	byAddr := map[string]*siteServer{}
	for i, s := range ss {
		eps[i] = resolver.Endpoint{Address: s.addr, Priority: s.prio, Locality: s.loc, Metadata: map[string]string{"site": s.loc.Region}}
		byAddr[s.addr] = s
	}
	feed, err := resolver.NewStatic(eps...)
	if err != nil {
		t.Fatal(err)
	}
	sc := fmt.Sprintf(`{
	  "loadBalancingConfig": [{%q: {
	    "algorithm": {"round_robin": {"slowStart": {"window": "1s"}}},
	    "locality": {"zone": "us-east-1a", "region": "us-east-1", "minLocalEndpoints": 1, "spillWhenLoaded": 1.5},
	    "priority": {"overprovisioningFactor": 1.4}
	  }}],
	  "methodConfig": [{"name": [{"service": "grpc.testing.TestService"}],
	    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.005s", "maxBackoff": "0.05s",
	                    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]
	}`, multiSitePolicy)
	target := "multisite:///svc"
	cc := dial(t, target, sc, grpc.WithResolvers(grpcresolver.FeedBuilder("multisite", feed)),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 200 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}))
	client := testgrpc.NewTestServiceClient(cc)
	cc.Connect()
	var eng *balancer.Engine
	eventually(t, "8 connected endpoints", 10*time.Second, func() bool {
		eng = multiSiteEngs.get("svc") // the policy names engines by the target's endpoint
		return eng != nil && len(eng.Eligible()) > 0 && allConnected(eng)
	})
	// The feed's attributes reached the engine.
	for _, ep := range eng.Endpoints() {
		s := byAddr[ep.Address()]
		if info := ep.Info(); info.Priority != s.prio || info.Locality != s.loc || info.Metadata["site"] != s.loc.Region {
			t.Fatalf("%s: engine has %+v; want priority %d, locality %+v, metadata site=%s", ep.Address(), info, s.prio, s.loc, s.loc.Region)
		}
	}
	call := func() (*siteServer, error) {
		var p peer.Peer
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := client.EmptyCall(ctx, &testgrpc.Empty{}, grpc.Peer(&p)); err != nil {
			return nil, err
		}
		return byAddr[p.Addr.String()], nil
	}
	run := func(n int) (byZone map[string]int, failed int, first error) {
		byZone = map[string]int{}
		for range n {
			s, err := call()
			if err != nil {
				if failed++; first == nil {
					first = err
				}
				continue
			}
			byZone[s.loc.Zone]++
		}
		return byZone, failed, first
	}

	// 1. Everything healthy: 100% in the caller's zone.
	z, failed, first := run(2000)
	if failed != 0 || z["us-east-1a"] != 2000 {
		t.Fatalf("all healthy: %v (%d failed, first %v); want all 2000 in us-east-1a", z, failed, first)
	}

	// 2. Half the local zone stopped: not connected, and the spill matches
	// the formula.
	ss[0].stop()
	eventually(t, ss[0].name+" out of picks", 10*time.Second, func() bool { return eng.Endpoint(ss[0].addr).Conditions() != 0 })
	z, failed, first = run(10_000)
	local := float64(z["us-east-1a"]) / 10_000
	t.Logf("half the local zone down: %.2f%% local (formula 66.67%%), %v", local*100, z)
	if failed != 0 || local < 2.0/3-0.03 || local > 2.0/3+0.03 || z["us-east-1a"]+z["us-east-1b"] != 10_000 {
		t.Fatalf("half the local zone down: %v, %d failed (first %v); want 2/3±0.03 local, the rest in us-east-1b", z, failed, first)
	}

	// 3. The primary cloud goes dark while RPCs run.
	var wg sync.WaitGroup
	stopLoad := make(chan struct{})
	var loadFailed, loadCalls int
	var loadFirst error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stopLoad:
				return
			default:
			}
			_, err := call()
			loadCalls++
			if err != nil {
				if loadFailed++; loadFirst == nil {
					loadFirst = err
				}
			}
		}
	}()
	dark := time.Now()
	for _, s := range ss[1:4] {
		s.stop()
	}
	eventually(t, "the primary out of picks", 10*time.Second, func() bool {
		for _, ep := range eng.Eligible() {
			if byAddr[ep.Address()].prio == 0 {
				return false
			}
		}
		return true
	})
	failover := time.Since(dark)
	z, failed, first = run(1000)
	close(stopLoad)
	wg.Wait()
	t.Logf("primary dark: out of picks %v after it stopped; %d RPCs during the failover, %d failed", failover.Round(time.Microsecond), loadCalls, loadFailed)
	if loadFailed != 0 || failed != 0 {
		t.Fatalf("primary dark: %d of %d RPCs failed during the failover (first %v), %d of 1000 after (first %v)", loadFailed, loadCalls, loadFirst, failed, first)
	}
	if z["us-west-2a"]+z["us-west-2b"] != 1000 {
		t.Fatalf("primary dark: %v; want all on the passive site", z)
	}
	if failover > 5*time.Second {
		t.Errorf("the primary was still picked %v after it stopped", failover)
	}

	// 4. The primary comes back: traffic returns gradually over the 1s slow
	// start window, and ends all in the local zone.
	for _, s := range ss[:4] {
		s.start(t)
	}
	back := time.Now()
	type result struct {
		at      time.Time
		primary bool
	}
	var results []result
	for time.Since(back) < 3*time.Second {
		s, err := call()
		if err != nil {
			t.Fatalf("failback: %v", err)
		}
		results = append(results, result{time.Now(), s.prio == 0})
	}
	firstPrimary := -1
	for i, r := range results {
		if r.primary {
			firstPrimary = i
			break
		}
	}
	if firstPrimary < 0 {
		t.Fatal("failback: no RPC went back to the primary within 3s")
	}
	early, earlyPrimary := 0, 0
	for _, r := range results[firstPrimary:] {
		if r.at.Sub(results[firstPrimary].at) > 400*time.Millisecond {
			break
		}
		early++
		if r.primary {
			earlyPrimary++
		}
	}
	t.Logf("failback: first primary RPC %v after restart; %d of %d RPCs on the primary in the 400ms after it",
		results[firstPrimary].at.Sub(back).Round(time.Millisecond), earlyPrimary, early)
	if early < 20 || float64(earlyPrimary) > 0.75*float64(early) {
		t.Errorf("failback not gradual: %d of %d RPCs on the primary in the 400ms after its return", earlyPrimary, early)
	}
	eventually(t, "every endpoint connected again", 10*time.Second, func() bool { return allConnected(eng) })
	z, failed, first = run(500)
	if failed != 0 || z["us-east-1a"] != 500 {
		t.Errorf("after failback: %v (%d failed, %v); want all 500 in us-east-1a", z, failed, first)
	}
}

func allConnected(eng *balancer.Engine) bool {
	eps := eng.Endpoints()
	for _, ep := range eps {
		if ep.Conditions() != 0 {
			return false
		}
	}
	return len(eps) == 8
}
