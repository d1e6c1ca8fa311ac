package grpcpolicy

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"sync"
	"testing"

	grpcbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/connectivity"
	gresolver "google.golang.org/grpc/resolver"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/resolver"
)

// fakeSubConn is a SubConn whose state the test drives.
type fakeSubConn struct {
	grpcbalancer.SubConn // methods not listed panic
	addr                 string
	listener             func(grpcbalancer.SubConnState)
	health               func(grpcbalancer.SubConnState)
}

func (*fakeSubConn) Connect()                            {}
func (*fakeSubConn) Shutdown()                           {}
func (*fakeSubConn) UpdateAddresses([]gresolver.Address) {}

// RegisterHealthListener keeps the listener: pick_first registers it under
// its lock, so the test calls it afterwards.
func (sc *fakeSubConn) RegisterHealthListener(f func(grpcbalancer.SubConnState)) { sc.health = f }

// ready takes sc to READY, through pick_first's health listener.
func (sc *fakeSubConn) ready() {
	sc.listener(grpcbalancer.SubConnState{ConnectivityState: connectivity.Ready})
	sc.health(grpcbalancer.SubConnState{ConnectivityState: connectivity.Ready})
}

// fakeCC is the channel side of the policy: it makes fake SubConns and keeps
// the pickers the policy publishes.
type fakeCC struct {
	grpcbalancer.ClientConn // methods not listed panic
	mu                      sync.Mutex
	subConns                map[string]*fakeSubConn // by address, the latest
	state                   grpcbalancer.State
}

func newFakeCC() *fakeCC { return &fakeCC{subConns: map[string]*fakeSubConn{}} }

func (cc *fakeCC) NewSubConn(addrs []gresolver.Address, opts grpcbalancer.NewSubConnOptions) (grpcbalancer.SubConn, error) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	sc := &fakeSubConn{addr: addrs[0].Addr, listener: opts.StateListener}
	cc.subConns[sc.addr] = sc
	return sc, nil
}

func (cc *fakeCC) UpdateState(s grpcbalancer.State) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.state = s
}

func (*fakeCC) ResolveNow(gresolver.ResolveNowOptions) {}

func (cc *fakeCC) subConn(t *testing.T, addr string) *fakeSubConn {
	t.Helper()
	cc.mu.Lock()
	defer cc.mu.Unlock()
	sc := cc.subConns[addr]
	if sc == nil {
		t.Fatalf("no SubConn for %s", addr)
	}
	return sc
}

func (cc *fakeCC) current() grpcbalancer.State {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.state
}

// newTestPolicy builds the policy over a fake channel and records its engine.
func newTestPolicy(t *testing.T) (*policy, *fakeCC, func() *balancer.Engine) {
	t.Helper()
	var mu sync.Mutex
	var eng *balancer.Engine
	b := NewBuilder(Options{Name: "unit", OnEngine: func(_ string, e *balancer.Engine) {
		mu.Lock()
		eng = e
		mu.Unlock()
	}})
	cc := newFakeCC()
	u, _ := url.Parse("test:///unit")
	p := b.Build(cc, grpcbalancer.BuildOptions{Target: gresolver.Target{URL: *u}}).(*policy)
	t.Cleanup(p.Close)
	return p, cc, func() *balancer.Engine {
		mu.Lock()
		defer mu.Unlock()
		return eng
	}
}

func endpoint(addrs ...string) gresolver.Endpoint {
	var ep gresolver.Endpoint
	for _, a := range addrs {
		ep.Addresses = append(ep.Addresses, gresolver.Address{Addr: a})
	}
	return ep
}

func update(t *testing.T, p *policy, cfg string, eps ...gresolver.Endpoint) error {
	t.Helper()
	lc, err := (&builder{}).ParseConfig([]byte(cfg))
	if err != nil {
		t.Fatal(err)
	}
	return p.UpdateClientConnState(grpcbalancer.ClientConnState{
		ResolverState:  gresolver.State{Endpoints: eps},
		BalancerConfig: lc,
	})
}

func pick(p grpcbalancer.Picker) (grpcbalancer.PickResult, error) {
	return p.Pick(grpcbalancer.PickInfo{Ctx: context.Background(), FullMethodName: "/svc/M"})
}

// The race of issue 14 item 2, step by step: the endpoint set is replaced
// while the picker grpc holds is the old one. The engine's membership changes
// first (the new endpoint is not connected yet); a pick with the old picker
// must then wait for the next picker, not fail.
func TestReplacedSetQueuesOnTheOldPicker(t *testing.T) {
	p, cc, _ := newTestPolicy(t)
	if err := update(t, p, `{}`, endpoint("10.0.0.1:80")); err != nil {
		t.Fatal(err)
	}
	cc.subConn(t, "10.0.0.1:80").ready()
	old := cc.current()
	if old.ConnectivityState != connectivity.Ready {
		t.Fatalf("state %v, want READY", old.ConnectivityState)
	}
	res, err := pick(old.Picker)
	if err != nil || res.SubConn != cc.subConn(t, "10.0.0.1:80") {
		t.Fatalf("pick: %v, %v", res.SubConn, err)
	}
	res.Done(grpcbalancer.DoneInfo{BytesSent: true, BytesReceived: true})

	// Replace the set: the new endpoint connects.
	if err := update(t, p, `{}`, endpoint("10.0.0.2:80")); err != nil {
		t.Fatal(err)
	}
	if _, err := pick(old.Picker); err != grpcbalancer.ErrNoSubConnAvailable {
		t.Fatalf("pick with the picker from before the change: %v, want ErrNoSubConnAvailable (the RPC waits)", err)
	}
	cur := cc.current()
	if cur.ConnectivityState != connectivity.Connecting {
		t.Errorf("state %v, want CONNECTING", cur.ConnectivityState)
	}
	if _, err := pick(cur.Picker); err != grpcbalancer.ErrNoSubConnAvailable {
		t.Fatalf("pick while the new endpoint connects: %v, want ErrNoSubConnAvailable", err)
	}

	// It fails to connect: now RPCs fail, saying why, as round_robin's do.
	cc.subConn(t, "10.0.0.2:80").listener(grpcbalancer.SubConnState{
		ConnectivityState: connectivity.TransientFailure,
		ConnectionError:   errors.New("connection refused"),
	})
	cur = cc.current()
	if cur.ConnectivityState != connectivity.TransientFailure {
		t.Errorf("state %v, want TRANSIENT_FAILURE", cur.ConnectivityState)
	}
	_, err = pick(cur.Picker)
	if err == grpcbalancer.ErrNoSubConnAvailable || !errors.Is(err, balancer.ErrNoEndpoints) ||
		!strings.Contains(err.Error(), "1 not connected") || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("pick with every endpoint failed: %v, want the engine's error and the connection error", err)
	}
	if _, err := pick(old.Picker); err == grpcbalancer.ErrNoSubConnAvailable {
		t.Errorf("the old picker still queues when every endpoint failed")
	}

	// It connects after all.
	cc.subConn(t, "10.0.0.2:80").ready()
	if res, err := pick(cc.current().Picker); err != nil || res.SubConn != cc.subConn(t, "10.0.0.2:80") {
		t.Fatalf("pick after the new endpoint is READY: %v, %v", res.SubConn, err)
	} else {
		res.Done(grpcbalancer.DoneInfo{})
	}
}

// An endpoint's identity is its set of addresses: reordering them keeps the
// engine's endpoint (its statistics) and its connection.
func TestReorderedAddressesKeepTheEndpoint(t *testing.T) {
	p, cc, engine := newTestPolicy(t)
	if err := update(t, p, `{}`, endpoint("10.0.0.2:80", "10.0.0.1:80"), endpoint("10.0.0.3:80")); err != nil {
		t.Fatal(err)
	}
	cc.subConn(t, "10.0.0.2:80").ready() // pick_first connects to the first address
	cc.subConn(t, "10.0.0.3:80").ready()
	eng := engine()
	ep := eng.Endpoint("10.0.0.1:80") // the lowest address names it
	if ep == nil {
		t.Fatalf("engine endpoints %v, want one at 10.0.0.1:80", eng.Endpoints())
	}
	for range 10 {
		res, err := pick(cc.current().Picker)
		if err != nil {
			t.Fatal(err)
		}
		res.Done(grpcbalancer.DoneInfo{BytesSent: true, BytesReceived: true})
	}
	before := ep.Outcomes(outcome.Success)
	if before == 0 {
		t.Fatal("no RPC went to the two-address endpoint")
	}
	old := cc.current()

	if err := update(t, p, `{}`, endpoint("10.0.0.1:80", "10.0.0.2:80"), endpoint("10.0.0.3:80")); err != nil {
		t.Fatal(err)
	}
	if got := eng.Endpoint("10.0.0.1:80"); got != ep || ep.Removed() {
		t.Fatalf("after reordering: endpoint %p (removed %v), want the same %p", got, ep.Removed(), ep)
	}
	if got := ep.Outcomes(outcome.Success); got != before {
		t.Errorf("statistics after reordering: %d successes, want %d", got, before)
	}
	if n := len(eng.Eligible()); n != 2 {
		t.Errorf("%d eligible endpoints after reordering, want 2", n)
	}
	for _, pk := range []grpcbalancer.Picker{old.Picker, cc.current().Picker} {
		for range 4 {
			res, err := pick(pk)
			if err != nil {
				t.Fatalf("pick after reordering: %v", err)
			}
			res.Done(grpcbalancer.DoneInfo{BytesSent: true, BytesReceived: true})
		}
	}
}

func TestEngineKeys(t *testing.T) {
	none := func(string) bool { return false }
	for _, tc := range []struct {
		addrs []string
		want  string
	}{
		{[]string{"10.0.0.1:80"}, "10.0.0.1:80"},
		{[]string{"[::1]:80"}, "[::1]:80"},
		{[]string{"10.0.0.2:80", "10.0.0.1:80"}, "10.0.0.1:80"},
		{[]string{"/tmp/grpc.sock"}, "[/tmp/grpc.sock]:1"},
		{[]string{"@abstract"}, "[@abstract]:1"},
		{[]string{"localhost"}, "[localhost]:1"},
		{[]string{"/tmp/a:b[1].sock"}, "[/tmp/a:b(1).sock]:1"},
		{[]string{""}, "[-]:1"},
		{[]string{"no-port", "10.0.0.9:1"}, "10.0.0.9:1"},
	} {
		k := engineKey(endpoint(tc.addrs...), none)
		if k != tc.want {
			t.Errorf("engineKey(%q) = %q, want %q", tc.addrs, k, tc.want)
		}
		if err := (resolver.Endpoint{Address: k}).Validate(); err != nil {
			t.Errorf("engineKey(%q) = %q, which the engine rejects: %v", tc.addrs, k, err)
		}
	}
	// An address two endpoints share: the second one gets another key.
	taken := map[string]bool{"10.0.0.1:80": true}
	if k := engineKey(endpoint("10.0.0.1:80", "10.0.0.2:80"), func(k string) bool { return taken[k] }); k != "10.0.0.2:80" {
		t.Errorf("with 10.0.0.1:80 taken: %q", k)
	}
	taken["10.0.0.2:80"] = true
	if k := engineKey(endpoint("10.0.0.1:80", "10.0.0.2:80"), func(k string) bool { return taken[k] }); k != "[10.0.0.1:80#2]:1" {
		t.Errorf("with both taken: %q", k)
	}
}

// A fail-fast RPC on a fresh channel waits while its endpoint connects, and
// does not fail when the endpoint becomes READY between the pick's read of
// the engine (nothing eligible) and its read of the gate (the policy has
// readmitted the endpoint and lowered the gate to 0 meanwhile). That window
// failed 1 in ~1,000 fresh channels on a loaded machine
// (TestPortlessAddresses in CI); the hook holds it open.
func TestPickReadsTheEngineAgainWhenTheGateDrops(t *testing.T) {
	p, cc, _ := newTestPolicy(t)
	if err := update(t, p, `{}`, endpoint("10.0.0.1:80")); err != nil {
		t.Fatal(err)
	}
	sc := cc.subConn(t, "10.0.0.1:80")
	old := cc.current().Picker
	if _, err := pick(old); !errors.Is(err, grpcbalancer.ErrNoSubConnAvailable) {
		t.Fatalf("pick while connecting: %v, want to wait (ErrNoSubConnAvailable)", err)
	}
	var once sync.Once
	p.testHookNoEndpoint = func() { once.Do(sc.ready) }
	res, err := pick(old)
	if err != nil {
		t.Fatalf("pick as the endpoint became READY: %v, want the endpoint", err)
	}
	if res.SubConn != sc {
		t.Fatalf("picked %v, want the endpoint's SubConn", res.SubConn)
	}
	if res.Done != nil {
		res.Done(grpcbalancer.DoneInfo{})
	}
}
