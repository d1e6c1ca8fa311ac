package lodestar_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/resolver"
)

// expectedSubset computes a client's subset with an engine of its own.
func expectedSubset(t *testing.T, sc balancer.SubsetConfig, eps []resolver.Endpoint) []string {
	t.Helper()
	e, err := balancer.NewEngine(balancer.Config{Subset: &sc}, balancer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	e.Update(eps)
	var out []string
	for _, ep := range e.Eligible() {
		out = append(out, ep.Address())
	}
	return out
}

// Each Transport opens connections to exactly its subset: 12 servers, three
// transports with different client ids, subset 4.
func TestSubsetHTTPConnectsOnlyToSubset(t *testing.T) {
	const servers, size = 12, 4
	srvs, eps, byAddr := probeServers(t, servers)
	want := map[string]int64{} // connections per server: the subsets holding it
	for _, id := range []string{"http-a", "http-b", "http-c"} {
		js := fmt.Sprintf(`{"subset": {"size": %d, "clientId": %q}}`, size, id)
		cfg, err := balancer.ParseConfig([]byte(js))
		if err != nil {
			t.Fatal(err)
		}
		subset := expectedSubset(t, *cfg.Subset, eps)
		if len(subset) != size {
			t.Fatalf("%s: computed subset %v", id, subset)
		}
		for _, a := range subset {
			want[a]++
		}
		st, err := resolver.NewStatic(eps...)
		if err != nil {
			t.Fatal(err)
		}
		tr, err := lodestar.NewTransport(lodestar.Options{Services: map[string]lodestar.Service{"svc": {Feed: st, Config: cfg}}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		client := &http.Client{Transport: tr}
		seen := map[string]bool{}
		for range 8 * size { // round robin: every member serves some
			resp, err := client.Get("http://svc/")
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		for _, ep := range tr.Engine("svc").Eligible() {
			seen[ep.Address()] = true
		}
		for _, a := range subset {
			if !seen[a] {
				t.Fatalf("%s: transport's subset lacks %s of the computed %v", id, a, subset)
			}
		}
	}
	for a, s := range byAddr {
		if got := s.conns.Load(); got != want[a] {
			t.Errorf("server %s accepted %d connections, want %d (the number of subsets holding it)", a, got, want[a])
		}
	}
	held := 0
	for _, n := range want {
		held += int(n)
	}
	if held != 3*size {
		t.Fatalf("subsets hold %d places, want %d", held, 3*size)
	}
	t.Logf("connections per server: %v", slices.Collect(func(yield func(int64) bool) {
		for _, s := range srvs {
			if !yield(s.conns.Load()) {
				return
			}
		}
	}))
}

// probeServer is a real HTTP server on 127.0.0.1 that counts health probes
// (GET /healthz, answered with the status in health) and connections.
type probeServer struct {
	srv    *httptest.Server
	conns  atomic.Int64
	probes atomic.Int64
	health atomic.Int64 // status /healthz answers
}

func newProbeServer(t *testing.T) *probeServer {
	t.Helper()
	s := &probeServer{}
	s.health.Store(http.StatusOK)
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			s.probes.Add(1)
			w.WriteHeader(int(s.health.Load()))
			return
		}
		io.WriteString(w, "ok")
	}))
	s.srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.conns.Add(1)
		}
	}
	s.srv.Start()
	t.Cleanup(s.srv.Close)
	return s
}

// probeServers starts n probe servers and returns them, their endpoints and
// a map from address to server.
func probeServers(t *testing.T, n int) ([]*probeServer, []resolver.Endpoint, map[string]*probeServer) {
	t.Helper()
	srvs := make([]*probeServer, n)
	eps := make([]resolver.Endpoint, n)
	byAddr := map[string]*probeServer{}
	for i := range srvs {
		srvs[i] = newProbeServer(t)
		eps[i] = resolver.Endpoint{Address: srvs[i].srv.Listener.Addr().String()}
		byAddr[eps[i].Address] = srvs[i]
	}
	return srvs, eps, byAddr
}

// Active health checks run only on the subset's candidates: 12 real servers,
// subset 4, HTTP checks every 20 ms. Until a member fails, the 8 servers
// outside the subset see no probe and no connection at all. A member whose
// /healthz turns 503 is replaced by the next-ranked server (which starts
// being probed and serving) and is itself still probed, so it comes back
// when it answers 200 again. Eventually-true states are polled (10 s).
func TestSubsetHTTPHealthChecksOnlyCandidates(t *testing.T) {
	const servers, size = 12, 4
	_, eps, byAddr := probeServers(t, servers)
	tr, e := transportJSON(t, eps, fmt.Sprintf(`{"subset": {"size": %d, "clientId": "probe-a"},
		"healthCheck": {"http": {"path": "/healthz"}, "interval": "20ms", "noTrafficInterval": "20ms", "unhealthyThreshold": 1, "healthyThreshold": 1}}`, size))
	members := map[string]bool{}
	for _, ep := range e.Eligible() {
		members[ep.Address()] = true
	}
	if len(members) != size {
		t.Fatalf("%d members, want %d", len(members), size)
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !ok(); {
			if time.Now().After(deadline) {
				t.Fatalf("10 s and still not: %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("every member probed 3 times", func() bool {
		for a := range members {
			if byAddr[a].probes.Load() < 3 {
				return false
			}
		}
		return true
	})
	for a, s := range byAddr {
		if !members[a] && (s.probes.Load() != 0 || s.conns.Load() != 0) {
			t.Fatalf("server %s, outside the subset: %d probes, %d connections", a, s.probes.Load(), s.conns.Load())
		}
	}

	// A member fails its checks: the next-ranked server replaces it.
	var failing string
	for a := range members {
		failing = a
		break
	}
	byAddr[failing].health.Store(http.StatusServiceUnavailable)
	var replacement string
	waitFor("a replacement joins the members", func() bool {
		for _, ep := range e.Eligible() {
			if !members[ep.Address()] {
				replacement = ep.Address()
				return len(e.Eligible()) == size
			}
		}
		return false
	})
	client := &http.Client{Transport: tr}
	for range 4 * size {
		resp, err := client.Get("http://svc/")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if byAddr[replacement].probes.Load() == 0 || byAddr[replacement].conns.Load() == 0 {
		t.Fatalf("replacement %s: %d probes, %d connections", replacement, byAddr[replacement].probes.Load(), byAddr[replacement].conns.Load())
	}
	before := byAddr[failing].probes.Load()
	waitFor("the failing member still probed", func() bool { return byAddr[failing].probes.Load() >= before+2 })

	// It recovers and takes its place back.
	byAddr[failing].health.Store(http.StatusOK)
	waitFor("the recovered member is back", func() bool {
		for _, ep := range e.Eligible() {
			if ep.Address() == failing {
				return len(e.Eligible()) == size
			}
		}
		return false
	})
	for a, s := range byAddr {
		if !members[a] && a != replacement && (s.probes.Load() != 0 || s.conns.Load() != 0) {
			t.Fatalf("server %s, never a candidate: %d probes, %d connections", a, s.probes.Load(), s.conns.Load())
		}
	}
}
