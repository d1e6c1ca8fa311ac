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

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/resolver"
)

// connServer is a real HTTP server on 127.0.0.1 that counts the connections
// it accepts.
type connServer struct {
	srv   *httptest.Server
	conns atomic.Int64
}

func newConnServer(t *testing.T) *connServer {
	t.Helper()
	s := &connServer{}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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
	srvs := make([]*connServer, servers)
	eps := make([]resolver.Endpoint, servers)
	byAddr := map[string]*connServer{}
	for i := range srvs {
		srvs[i] = newConnServer(t)
		eps[i] = resolver.Endpoint{Address: srvs[i].srv.Listener.Addr().String()}
		byAddr[eps[i].Address] = srvs[i]
	}
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
