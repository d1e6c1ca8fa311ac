package lodestar_test

import (
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/resolver"
)

// named answers every request with name.
func named(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) })
}

func getBody(t *testing.T, c *http.Client, u string) string {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestUpgradedConnectionOutlivesRemoval (issue 14 item 5): an upgraded
// connection (101 Switching Protocols) counts in flight until its caller
// closes it, so removing its endpoint from discovery leaves it working and the
// endpoint draining; once the caller closes it, the endpoint drains and its
// idle connection is closed.
func TestUpgradedConnectionOutlivesRemoval(t *testing.T) {
	handlerDone := make(chan struct{})
	ws := upgradeEcho(func() { close(handlerDone) })
	a := newCompatServer(t, kindH1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "" {
			ws(w, r)
			return
		}
		io.WriteString(w, "a")
	}))
	b := newCompatServer(t, kindH1, named("b"))
	c := newCompatServer(t, kindH1, named("c"))
	epOf := func(s *compatServer) resolver.Endpoint { return resolver.Endpoint{Address: s.addr()} }

	feed, _ := resolver.NewStatic(epOf(a))
	tr := newTransport(t, feed, balancer.Config{})
	client := &http.Client{Transport: tr}
	epA := tr.Engine("svc").Endpoint(a.addr())

	_, conn := upgrade(t, client, "http://svc/ws")
	defer conn.Close()
	echo(t, conn, "first")
	if n := epA.InFlight(); n != 1 {
		t.Fatalf("in flight with a live upgraded connection: %d, want 1", n)
	}
	if n := epA.Outcomes(outcome.Success); n != 0 {
		t.Fatalf("the 101 was reported (%d successes) before its connection was closed", n)
	}
	// An ordinary request opens a second connection to a (the first is the
	// caller's now), which stays idle.
	if got := getBody(t, client, "http://svc/"); got != "a" {
		t.Fatalf("request went to %q, want a", got)
	}
	aOrdinary := uint64(1)
	a.waitConns(t, "a's second connection", func(opened, open int) bool { return opened == 2 && open == 1 })

	// c joins and gets an idle connection too.
	if err := feed.Set(epOf(a), epOf(c)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "c to join", func() bool { return len(tr.Engine("svc").Eligible()) == 2 })
	for i := 0; ; i++ {
		if _, open := c.counts(); open == 1 {
			break
		}
		if i == 4 {
			t.Fatal("no request went to c")
		}
		if getBody(t, client, "http://svc/") == "a" {
			aOrdinary++
		}
	}

	// Remove a and c; b stays.
	if err := feed.Set(epOf(b)); err != nil {
		t.Fatal(err)
	}
	// c had nothing in flight: it drained and its connection was closed.
	c.waitConns(t, "c's drain to close its connection", func(_, open int) bool { return open == 0 })
	// a has the upgraded connection in flight: it is still draining, its
	// upgraded connection works and its idle connection is open.
	if !epA.Removed() || epA.InFlight() != 1 {
		t.Fatalf("a: removed %v, in flight %d; want removed with 1 in flight", epA.Removed(), epA.InFlight())
	}
	echo(t, conn, "still here after the removal")
	if _, open := a.counts(); open != 1 {
		t.Fatalf("a has %d open idle connections while draining, want 1", open)
	}
	for range 3 {
		if got := getBody(t, client, "http://svc/"); got != "b" {
			t.Fatalf("request after the removal went to %q, want b", got)
		}
	}

	// The caller is done with the upgraded connection: a drains, and its
	// idle connection is closed.
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-handlerDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the server never saw the upgraded connection close")
	}
	a.waitConns(t, "a's idle connection to close once a drained", func(_, open int) bool { return open == 0 })
	if n := epA.InFlight(); n != 0 {
		t.Fatalf("a still has %d in flight", n)
	}
	if n := epA.Outcomes(outcome.Success); n != aOrdinary+1 { // the ordinary requests and the 101
		t.Fatalf("a has %d successes, want %d", n, aOrdinary+1)
	}
	if _, open := b.counts(); open != 1 {
		t.Fatalf("b has %d open connections, want 1", open)
	}
}

// TestUpgradedBodyIsWritable: through lodestar the 101 body is still an
// io.ReadWriteCloser, also over a base that is not an *http.Transport, and it
// counts in flight until closed.
func TestUpgradedBodyIsWritable(t *testing.T) {
	a := newCompatServer(t, kindH1, upgradeEcho(nil))
	feed, _ := resolver.NewStaticAddrs(a.addr())
	wrapped := struct{ http.RoundTripper }{&http.Transport{}}
	tr := newTransport(t, feed, balancer.Config{}, func(o *lodestar.Options) { o.Base = wrapped })
	defer wrapped.RoundTripper.(*http.Transport).CloseIdleConnections()
	_, conn := upgrade(t, &http.Client{Transport: tr}, "http://svc/ws")
	echo(t, conn, "hello")
	ep := tr.Engine("svc").Endpoint(a.addr())
	if n := ep.InFlight(); n != 1 {
		t.Fatalf("in flight %d, want 1", n)
	}
	conn.Close()
	conn.Close() // a second Close reports nothing more
	if n, m := ep.InFlight(), ep.Outcomes(outcome.Success); n != 0 || m != 1 {
		t.Fatalf("after Close: in flight %d, successes %d; want 0 and 1", n, m)
	}
}

// rwcBody is an empty, writable response body that costs no allocation.
type rwcBody struct{}

func (rwcBody) Read([]byte) (int, error)    { return 0, io.EOF }
func (rwcBody) Write(p []byte) (int, error) { return len(p), nil }
func (rwcBody) Close() error                { return nil }

// fixedTransport answers every request with status at once, without I/O.
type fixedTransport struct{ status int }

func (f fixedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: f.status, Body: rwcBody{}, Request: req}, nil
}

// TestRoundTripAllocatesOnce: lodestar adds exactly one allocation (its call)
// to a request, for an ordinary response and for a 101 alike.
func TestRoundTripAllocatesOnce(t *testing.T) {
	for _, status := range []int{http.StatusOK, http.StatusSwitchingProtocols} {
		base := fixedTransport{status}
		feed, _ := resolver.NewStaticAddrs("10.0.0.1:80", "10.0.0.2:80")
		tr := newTransport(t, feed, balancer.Config{}, func(o *lodestar.Options) { o.Base = base })
		lsReq, _ := http.NewRequest("GET", "http://svc/x", nil)
		bareReq, _ := http.NewRequest("GET", "http://10.0.0.1:80/x", nil)
		var buf [8]byte
		run := func(rt http.RoundTripper, req *http.Request) func() {
			return func() {
				resp, err := rt.RoundTrip(req)
				if err != nil {
					panic(err)
				}
				resp.Body.Read(buf[:])
				resp.Body.Close()
			}
		}
		bare := testing.AllocsPerRun(200, run(base, bareReq))
		ls := testing.AllocsPerRun(200, run(tr, lsReq))
		if ls-bare != 1 {
			t.Errorf("status %d: lodestar %.1f allocations per request, the base alone %.1f; want exactly one more", status, ls, bare)
		}
	}
}
