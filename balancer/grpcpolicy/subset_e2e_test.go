package grpcpolicy_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	grpcbalancer "google.golang.org/grpc/balancer"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/grpcpolicy"
	"github.com/lodestar-go/lodestar/resolver"
)

// countingListener counts the connections a server accepts, and those still
// open.
type countingListener struct {
	net.Listener
	n, open atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return c, err
	}
	l.n.Add(1)
	l.open.Add(1)
	return &countedConn{Conn: c, l: l}, nil
}

type countedConn struct {
	net.Conn
	l    *countingListener
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}

// subsetPolicy is the lodestar policy registered with an OnEngine hook that
// keeps every engine it makes, by the subset's client id.
const subsetPolicy = "lodestar_subset_test"

var (
	subsetPolicyOnce sync.Once
	subsetEnginesMu  sync.Mutex
	subsetEngines    = map[string]*balancer.Engine{}
)

func registerSubsetPolicy() {
	subsetPolicyOnce.Do(func() {
		grpcbalancer.Register(grpcpolicy.NewBuilder(grpcpolicy.Options{
			Name: subsetPolicy,
			OnEngine: func(_ string, e *balancer.Engine) {
				subsetEnginesMu.Lock()
				defer subsetEnginesMu.Unlock()
				subsetEngines[e.Config().Subset.ClientID] = e
			},
		}))
	})
}

func subsetEngine(id string) *balancer.Engine {
	subsetEnginesMu.Lock()
	defer subsetEnginesMu.Unlock()
	return subsetEngines[id]
}

// computedSubset is a client's subset, from an engine of its own.
func computedSubset(t *testing.T, sc balancer.SubsetConfig, addrs []string) map[string]bool {
	t.Helper()
	e, err := balancer.NewEngine(balancer.Config{Subset: &sc}, balancer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	eps := make([]resolver.Endpoint, len(addrs))
	for i, a := range addrs {
		eps[i] = resolver.Endpoint{Address: a}
	}
	e.Update(eps)
	out := map[string]bool{}
	for _, ep := range e.Eligible() {
		out[ep.Address()] = true
	}
	return out
}

// Three gRPC channels with different client ids, subset 4 of 12 real
// servers: each connects to exactly its subset (SubConns only for the
// candidates); ejecting a member connects to its replacement.
func TestSubsetGRPCConnectsOnlyToSubset(t *testing.T) {
	registerSubsetPolicy()
	const servers, size = 12, 4
	lis := make([]*countingListener, servers)
	addrList := make([]string, servers)
	byAddr := map[string]*countingListener{}
	for i := range lis {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lis[i] = &countingListener{Listener: l}
		serve(t, lis[i])
		addrList[i] = l.Addr().String()
		byAddr[addrList[i]] = lis[i]
	}
	target := "static:///" + strings.Join(addrList, ",")
	want := map[string]int64{}
	ids := []string{"grpc-a", "grpc-b", "grpc-c"}
	subsets := map[string]map[string]bool{}
	clients := map[string]testgrpc.TestServiceClient{}
	for _, id := range ids {
		cfg := fmt.Sprintf(`{"subset": {"size": %d, "clientId": %q}}`, size, id)
		subsets[id] = computedSubset(t, balancer.SubsetConfig{Size: size, ClientID: id}, addrList)
		for a := range subsets[id] {
			want[a]++
		}
		cc := dial(t, target, serviceConfig(subsetPolicy, cfg))
		clients[id] = testgrpc.NewTestServiceClient(cc)
		cc.Connect()
	}
	for _, id := range ids {
		id := id
		eventually(t, id+": its 4 subset members READY", 10*time.Second, func() bool {
			e := subsetEngine(id)
			return e != nil && len(e.Eligible()) == size
		})
		for _, ep := range subsetEngine(id).Eligible() {
			if !subsets[id][ep.Address()] {
				t.Fatalf("%s: eligible %s is not in the computed subset %v", id, ep.Address(), subsets[id])
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		for range 2 * size {
			if _, err := clients[id].EmptyCall(ctx, &testgrpc.Empty{}); err != nil {
				t.Fatal(err)
			}
		}
		cancel()
	}
	for a, l := range byAddr {
		if got := l.n.Load(); got != want[a] {
			t.Errorf("server %s accepted %d connections, want %d (the subsets holding it)", a, got, want[a])
		}
	}
	if t.Failed() {
		return
	}

	// Eject one of grpc-a's members: the next-ranked endpoint joins, and the
	// channel connects to it; the ejected one keeps its connection (it is
	// still a candidate, to come back).
	e := subsetEngine("grpc-a")
	before := map[string]bool{}
	for _, ep := range e.Eligible() {
		before[ep.Address()] = true
	}
	ejected := e.Eligible()[0].Address()
	e.SetConditionWhy(ejected, balancer.Ejected, true, "test")
	var joined string
	eventually(t, "a replacement READY", 10*time.Second, func() bool {
		el := e.Eligible()
		for _, ep := range el {
			if !before[ep.Address()] {
				joined = ep.Address()
			}
		}
		return len(el) == size && joined != ""
	})
	if got := byAddr[joined].n.Load(); got != want[joined]+1 {
		t.Fatalf("replacement %s accepted %d connections, want %d (one more)", joined, got, want[joined]+1)
	}
	cand, _ := e.SubsetCandidates()
	if len(cand) != size+1 {
		t.Fatalf("%d candidates, want the %d members and the ejected one", len(cand), size)
	}
	// RPCs reach the replacement, never the ejected one's server... and
	// servers outside every candidate set still have no connection.
	for a, l := range byAddr {
		in := want[a] > 0 || a == joined
		if !in && l.n.Load() != 0 {
			t.Fatalf("server %s, in no subset, accepted %d connections", a, l.n.Load())
		}
	}
	// Clear: the original member comes back, the replacement leaves and its
	// connection (grpc-a's) is closed by endpointsharding.
	e.SetConditionWhy(ejected, balancer.Ejected, false, "test")
	eventually(t, "the original members back", 10*time.Second, func() bool {
		el := e.Eligible()
		if len(el) != size {
			return false
		}
		for _, ep := range el {
			if !before[ep.Address()] {
				return false
			}
		}
		return true
	})
	// grpc-a's connection to the replacement closes: only the other
	// channels' (if they hold it) stay open.
	eventually(t, "the replacement's connection from grpc-a closed", 10*time.Second, func() bool {
		return byAddr[joined].open.Load() == want[joined]
	})
}

// The gRPC policy's ParseConfig reads the subset section as the HTTP side
// does, and rejects what balancer.ParseConfig rejects.
func TestSubsetGRPCParseConfig(t *testing.T) {
	parser := grpcbalancer.Get(grpcpolicy.Name).(grpcbalancer.ConfigParser)
	js := `{"subset": {"size": 20, "mode": "deterministic", "clientIndex": 3, "clientCount": 10}}`
	if _, err := parser.ParseConfig([]byte(js)); err != nil {
		t.Fatalf("%s: %v", js, err)
	}
	want, err := balancer.ParseConfig([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	if *want.Subset.ClientIndex != 3 || want.Subset.Size != 20 {
		t.Fatalf("parsed %+v", *want.Subset)
	}
	for _, bad := range []string{
		`{"subset": {"size": 0}}`,
		`{"subset": {"mode": "deterministic"}}`,
		`{"subset": {"mode": "sticky"}}`,
		`{"subset": {"clientIndex": 5, "clientCount": 5, "mode": "deterministic"}}`,
	} {
		_, gerr := parser.ParseConfig([]byte(bad))
		_, herr := balancer.ParseConfig([]byte(bad))
		if gerr == nil || herr == nil || gerr.Error() != herr.Error() {
			t.Errorf("%s: gRPC error %v, HTTP error %v: want the same error", bad, gerr, herr)
		}
	}
}
