package lodestar_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/resolver"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// backend is a real net/http server on 127.0.0.1 that answers with its name.
type backend struct {
	name string
	srv  *httptest.Server
	// hold, when set, blocks each request until the channel is closed.
	mu      sync.Mutex
	hold    chan struct{}
	entered chan struct{} // receives one value per request that is held
	closed  chan net.Conn // receives connections the server saw close
}

func newBackend(t *testing.T, name string) *backend {
	t.Helper()
	b := &backend{name: name, entered: make(chan struct{}, 100), closed: make(chan net.Conn, 100)}
	b.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		hold := b.hold
		b.mu.Unlock()
		if hold != nil {
			b.entered <- struct{}{}
			select {
			case <-hold:
			case <-r.Context().Done():
				return
			}
		}
		w.Header().Set("X-Backend", name)
		w.Header().Set("X-Seen-Host", r.Host)
		io.WriteString(w, name)
	}))
	b.srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			select {
			case b.closed <- c:
			default: // nobody is counting closes past the buffer
			}
		}
	}
	b.srv.Start()
	t.Cleanup(b.srv.Close)
	return b
}

func (b *backend) addr() string { return b.srv.Listener.Addr().String() }

func (b *backend) holdRequests() (release func()) {
	ch := make(chan struct{})
	b.mu.Lock()
	b.hold = ch
	b.mu.Unlock()
	return func() {
		b.mu.Lock()
		b.hold = nil
		b.mu.Unlock()
		close(ch)
	}
}

func backends(t *testing.T, n int) ([]*backend, []resolver.Endpoint) {
	bs := make([]*backend, n)
	eps := make([]resolver.Endpoint, n)
	for i := range bs {
		bs[i] = newBackend(t, fmt.Sprintf("b%d", i))
		eps[i] = resolver.Endpoint{Address: bs[i].addr()}
	}
	return bs, eps
}

// seeded returns a concurrency-safe random source with a fixed seed.
func seeded(seed uint64) func() uint64 {
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	return func() uint64 {
		mu.Lock()
		defer mu.Unlock()
		return r.Uint64()
	}
}

func newTransport(t *testing.T, feed resolver.Feed, cfg balancer.Config, mod ...func(*lodestar.Options)) *lodestar.Transport {
	t.Helper()
	opts := lodestar.Options{Services: map[string]lodestar.Service{"svc": {Feed: feed, Config: cfg}}, Rand: seeded(1)}
	for _, m := range mod {
		m(&opts)
	}
	tr, err := lodestar.NewTransport(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() }) // a static feed is in force already: no wait
	return tr
}

// waitFor polls cond until it holds or 5s pass (a bound for eventual states
// that have no signal of their own).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// get sends a GET for http://svc/ and returns the backend's name.
func get(t *testing.T, c *http.Client) string {
	t.Helper()
	resp, err := c.Get("http://svc/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

func TestRoundRobinExact(t *testing.T) {
	bs, eps := backends(t, 3)
	feed, _ := resolver.NewStatic(eps...)
	c := &http.Client{Transport: newTransport(t, feed, balancer.Config{})}
	counts := map[string]int{}
	var seq []string
	for range 300 {
		name := get(t, c)
		counts[name]++
		seq = append(seq, name)
	}
	for _, b := range bs {
		if counts[b.name] != 100 {
			t.Errorf("%s got %d of 300 requests, want exactly 100 (counts %v)", b.name, counts[b.name], counts)
		}
	}
	// Round robin is a fixed cycle: every request goes to the backend three before it went to.
	for i := 3; i < len(seq); i++ {
		if seq[i] != seq[i-3] {
			t.Fatalf("request %d went to %s, request %d to %s: not a cycle of 3", i, seq[i], i-3, seq[i-3])
		}
	}
}

func TestLeastRequestUniformWhenIdle(t *testing.T) {
	// Seed 1 (Options.Rand). With no request in flight, P2C's choices are uniform:
	// chi-square over 4 backends with 3 degrees of freedom must stay under 16.27
	// (p = 0.001), so this fails only if the distribution is skewed.
	bs, eps := backends(t, 4)
	feed, _ := resolver.NewStatic(eps...)
	c := &http.Client{Transport: newTransport(t, feed, balancer.Config{Algorithm: &balancer.LeastRequest{}})}
	const n = 4000
	counts := map[string]int{}
	for range n {
		counts[get(t, c)]++
	}
	chi2 := 0.0
	for _, b := range bs {
		d := float64(counts[b.name]) - n/4
		chi2 += d * d / (n / 4)
	}
	if chi2 > 16.27 {
		t.Errorf("chi-square %.2f > 16.27 (p=0.001, 3 dof): counts %v", chi2, counts)
	}
}

func TestLeastRequestAvoidsBusyEndpoint(t *testing.T) {
	// P2C compares two distinct endpoints, so an endpoint with requests in flight
	// loses every comparison against idle ones: it must get none of the new requests.
	bs, eps := backends(t, 4)
	feed, _ := resolver.NewStatic(eps...)
	tr := newTransport(t, feed, balancer.Config{Algorithm: &balancer.LeastRequest{}})
	c := &http.Client{Transport: tr}

	busy := bs[0]
	release := busy.holdRequests()
	var wg sync.WaitGroup
	// Send requests until one is held on the busy backend; the others complete.
	// (Once it holds one, P2C sends it no more: the loop below relies on that.)
	for held := false; !held; {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if resp, err := c.Get("http://svc/"); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
		select {
		case <-busy.entered:
			held = true
		case <-time.After(20 * time.Millisecond):
		}
	}
	counts := map[string]int{}
	for range 400 {
		counts[get(t, c)]++
	}
	release()
	wg.Wait()
	if counts[busy.name] != 0 {
		t.Errorf("busy backend got %d of 400 new requests, want 0 (counts %v)", counts[busy.name], counts)
	}
}

func TestRemovedEndpointDrains(t *testing.T) {
	bs, eps := backends(t, 2)
	feed, _ := resolver.NewStatic(eps...)
	tr := newTransport(t, feed, balancer.Config{})
	c := &http.Client{Transport: tr}
	for range 4 { // open a connection to each backend
		get(t, c)
	}
	gone := bs[1]
	release := gone.holdRequests()
	// A request that is in flight on the endpoint when it is removed.
	type result struct {
		body string
		err  error
	}
	inflight := make(chan result, 1)
	go func() {
		for {
			resp, err := c.Get("http://svc/")
			if err != nil {
				inflight <- result{err: err}
				return
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) == gone.name || err != nil {
				inflight <- result{string(b), err}
				return
			}
		}
	}()
	<-gone.entered
	ep := tr.Engine("svc").Endpoint(gone.addr())

	if err := feed.Set(eps[0]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the removal to apply", func() bool { return len(tr.Engine("svc").Eligible()) == 1 })
	for i := range 50 {
		if name := get(t, c); name != bs[0].name {
			t.Fatalf("request %d after removal went to %s", i, name)
		}
	}
	select {
	case <-gone.closed:
		t.Fatal("a connection of the removed endpoint closed while a request was in flight on it")
	default:
	}
	if n := ep.InFlight(); n != 1 {
		t.Fatalf("removed endpoint has %d requests in flight, want 1", n)
	}

	release()
	r := <-inflight
	if r.err != nil || r.body != gone.name {
		t.Fatalf("in-flight request on the removed endpoint: body %q, err %v; want it to finish", r.body, r.err)
	}
	// Drained: its idle connections are closed by the transport.
	select {
	case <-gone.closed:
	case <-time.After(5 * time.Second):
		t.Fatal("removed endpoint's idle connection was not closed after it drained")
	}
	if n := ep.InFlight(); n != 0 {
		t.Fatalf("in flight after drain = %d", n)
	}
}

func TestNoEndpointsFailsFast(t *testing.T) {
	feed, _ := resolver.NewStatic()
	tr := newTransport(t, feed, balancer.Config{})
	_, err := (&http.Client{Transport: tr}).Get("http://svc/x")
	if !errors.Is(err, balancer.ErrNoEndpoints) {
		t.Fatalf("err = %v, want one matching balancer.ErrNoEndpoints", err)
	}
	var ne *balancer.NoEndpointsError
	if !errors.As(err, &ne) || ne.Service != "svc" {
		t.Fatalf("err = %#v, want a *NoEndpointsError for service svc", err)
	}
}

func TestWaitForEndpoints(t *testing.T) {
	feed, _ := resolver.NewStatic()
	tr := newTransport(t, feed, balancer.Config{WaitForEndpoints: time.Minute})
	c := &http.Client{Transport: tr}

	// The caller's deadline bounds the wait: the context's error, not ErrNoEndpoints.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/", nil)
	if _, err := c.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}

	// A request waiting when an endpoint appears goes to it.
	b := newBackend(t, "late")
	got := make(chan string, 1)
	go func() {
		resp, err := c.Get("http://svc/")
		if err != nil {
			got <- err.Error()
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		got <- string(body)
	}()
	if err := feed.Set(resolver.Endpoint{Address: b.addr()}); err != nil {
		t.Fatal(err)
	}
	if g := <-got; g != "late" {
		t.Fatalf("waiting request got %q, want the late endpoint", g)
	}
}

func TestEmptyAnswerKeepsLastSet(t *testing.T) {
	bs, eps := backends(t, 1)
	feed, _ := resolver.NewStatic(eps...)
	tr := newTransport(t, feed, balancer.Config{})
	c := &http.Client{Transport: tr}
	if err := feed.Set(); err != nil {
		t.Fatal(err)
	}
	// The engine reports and ignores the empty answer; requests keep flowing.
	for range 10 {
		if got := get(t, c); got != bs[0].name {
			t.Fatalf("got %q", got)
		}
	}

	allow := newTransport(t, feed, balancer.Config{AllowEmpty: true})
	if _, err := (&http.Client{Transport: allow}).Get("http://svc/"); !errors.Is(err, balancer.ErrNoEndpoints) {
		t.Fatalf("with AllowEmpty an empty answer must empty the set; err = %v", err)
	}
}

func TestCancellation(t *testing.T) {
	bs, eps := backends(t, 1)
	feed, _ := resolver.NewStatic(eps...)
	tr := newTransport(t, feed, balancer.Config{})
	c := &http.Client{Transport: tr}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/", nil)
	if _, err := c.Do(req); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled before: err = %v, want context.Canceled", err)
	}

	release := bs[0].holdRequests()
	defer release()
	ctx, cancel = context.WithCancel(context.Background())
	req, _ = http.NewRequestWithContext(ctx, "GET", "http://svc/", nil)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Do(req)
		errc <- err
	}()
	<-bs[0].entered
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled during: err = %v, want context.Canceled", err)
	}
	ep := tr.Engine("svc").Endpoint(bs[0].addr())
	if ep.InFlight() != 0 || ep.Outcomes(outcome.Canceled) != 1 || ep.Outcomes(outcome.Success) != 0 {
		t.Fatalf("after cancel: in flight %d, canceled %d, success %d; want 0, 1, 0",
			ep.InFlight(), ep.Outcomes(outcome.Canceled), ep.Outcomes(outcome.Success))
	}
}

func TestOutcomesReported(t *testing.T) {
	codes := []int{200, 404, 429, 500, 503}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var code int
		fmt.Sscan(strings.TrimPrefix(r.URL.Path, "/"), &code)
		w.WriteHeader(code)
		io.WriteString(w, "x")
	}))
	defer srv.Close()
	feed, _ := resolver.NewStaticAddrs(srv.Listener.Addr().String())
	tr := newTransport(t, feed, balancer.Config{})
	c := &http.Client{Transport: tr}
	for _, code := range codes {
		resp, err := c.Get(fmt.Sprintf("http://svc/%d", code))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	ep := tr.Engine("svc").Endpoint(srv.Listener.Addr().String())
	for c, want := range map[outcome.Class]uint64{outcome.Success: 1, outcome.ClientError: 1, outcome.Overloaded: 1, outcome.ServerError: 1, outcome.GatewayError: 1} {
		if got := ep.Outcomes(c); got != want {
			t.Errorf("outcomes[%v] = %d, want %d", c, got, want)
		}
	}

	// A connection that cannot be made is a ConnectError, and the error names the endpoint.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := l.Addr().String()
	l.Close()
	feed.Set(resolver.Endpoint{Address: dead})
	waitFor(t, "the dead endpoint", func() bool { return tr.Engine("svc").Endpoint(dead) != nil })
	_, err := c.Get("http://svc/")
	if err == nil || !strings.Contains(err.Error(), dead) {
		t.Fatalf("err = %v, want it to name %s", err, dead)
	}
	if got := tr.Engine("svc").Endpoint(dead).Outcomes(outcome.ConnectError); got != 1 {
		t.Fatalf("connect errors = %d, want 1", got)
	}
}

func TestHostHeader(t *testing.T) {
	bs, eps := backends(t, 1)
	_ = bs
	feed, _ := resolver.NewStatic(eps...)
	for _, tc := range []struct {
		host, reqHost, want string
	}{
		{"", "", "svc"},
		{"", "caller.example", "caller.example"},
		{"api.internal", "", "api.internal"},
		{"api.internal", "caller.example", "api.internal"},
	} {
		tr, err := lodestar.NewTransport(lodestar.Options{Services: map[string]lodestar.Service{"svc": {Feed: feed, Host: tc.host}}})
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, "endpoints", func() bool { return len(tr.Engine("svc").Eligible()) == 1 })
		req, _ := http.NewRequest("GET", "http://svc/", nil)
		req.Host = tc.reqHost
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("X-Seen-Host"); got != tc.want {
			t.Errorf("Service.Host %q, req.Host %q: backend saw Host %q, want %q", tc.host, tc.reqHost, got, tc.want)
		}
		if resp.Request != req {
			t.Error("resp.Request is not the caller's request")
		}
		tr.Close()
	}
}

func TestTLSServerName(t *testing.T) {
	// httptest's certificate is valid for example.com (and 127.0.0.1), not for "users".
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer srv.Close()
	base := srv.Client().Transport.(*http.Transport)
	feed, _ := resolver.NewStaticAddrs(srv.Listener.Addr().String())
	for _, tc := range []struct {
		name, serverName string
		ok               bool
	}{
		{"example.com", "", true}, // verified against the service name
		{"users", "example.com", true},
		{"users", "", false}, // "users" is not in the certificate
	} {
		tr, err := lodestar.NewTransport(lodestar.Options{Base: base, Services: map[string]lodestar.Service{
			tc.name: {Feed: feed, TLSServerName: tc.serverName},
		}})
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, "endpoints", func() bool { return len(tr.Engine(tc.name).Eligible()) == 1 })
		resp, err := (&http.Client{Transport: tr}).Get("https://" + tc.name + "/")
		if tc.ok != (err == nil) {
			t.Errorf("service %q, TLSServerName %q: err = %v, want ok=%v", tc.name, tc.serverName, err, tc.ok)
		}
		if err == nil {
			resp.Body.Close()
		}
		tr.Close()
	}
}

func TestUnknownServiceAndPassThrough(t *testing.T) {
	_, eps := backends(t, 1)
	feed, _ := resolver.NewStatic(eps...)
	tr := newTransport(t, feed, balancer.Config{})
	_, err := (&http.Client{Transport: tr}).Get("http://other/")
	var ue *lodestar.UnknownServiceError
	if !errors.As(err, &ue) || ue.Host != "other" || !strings.Contains(err.Error(), "svc") {
		t.Fatalf("err = %v, want an UnknownServiceError naming other and listing svc", err)
	}

	direct := newBackend(t, "direct")
	pt := newTransport(t, feed, balancer.Config{}, func(o *lodestar.Options) { o.PassThrough = true })
	resp, err := (&http.Client{Transport: pt}).Get(direct.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("X-Backend") != "direct" {
		t.Fatal("pass-through request did not reach its own host")
	}
	// A port on the service name still names the service.
	resp, err = (&http.Client{Transport: pt}).Get("http://svc:8080/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

func TestBadConfiguration(t *testing.T) {
	feed, _ := resolver.NewStatic()
	for _, tc := range []struct {
		opts lodestar.Options
		want string
	}{
		{lodestar.Options{}, "Options.Services"},
		{lodestar.Options{Services: map[string]lodestar.Service{"svc": {}}}, `service "svc": set Feed or Target`},
		{lodestar.Options{Services: map[string]lodestar.Service{"svc": {Target: "nosuch:///x"}}}, `unknown scheme "nosuch"`},
		{lodestar.Options{Services: map[string]lodestar.Service{"svc": {Target: "static:///x"}}}, "want host:port"},
		{lodestar.Options{Services: map[string]lodestar.Service{"a/b": {Feed: feed}}}, "not a valid host name"},
		{lodestar.Options{Services: map[string]lodestar.Service{"svc": {Feed: feed, Config: balancer.Config{Algorithm: &balancer.LeastRequest{ChoiceCount: 1}}}}}, "choiceCount"},
		{lodestar.Options{Services: map[string]lodestar.Service{"svc": {Feed: feed, Config: balancer.Config{WaitForEndpoints: -1}}}}, "waitForEndpoints"},
	} {
		tr, err := lodestar.NewTransport(tc.opts)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewTransport(%+v) = %v, want an error mentioning %q", tc.opts, err, tc.want)
		}
		if tr != nil {
			t.Error("a Transport was returned with the error")
		}
	}
}

func TestConfigJSON(t *testing.T) {
	cfg, err := balancer.ParseConfig([]byte(`{"algorithm": {"least_request": {"choiceCount": 3}}, "waitForEndpoints": "250ms"}`))
	if err != nil {
		t.Fatal(err)
	}
	lr, ok := cfg.Algorithm.(*balancer.LeastRequest)
	if !ok || lr.ChoiceCount != 3 || cfg.WaitForEndpoints != 250*time.Millisecond {
		t.Fatalf("parsed %+v", cfg)
	}
	for js, want := range map[string]string{
		`{"algoritm": "round_robin"}`:                          `unknown field "algoritm"`,
		`{"algorithm": "fastest"}`:                             `unknown name "fastest"`,
		`{"algorithm": {"least_request": {"choices": 3}}}`:     `unknown field "choices"`,
		`{"algorithm": {"least_request": {"choiceCount": 1}}}`: "choiceCount: 1 is out of range [2, 100]",
		`{"waitForEndpoints": "soon"}`:                         "waitForEndpoints",
	} {
		if _, err := balancer.ParseConfig([]byte(js)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseConfig(%s) = %v, want an error mentioning %q", js, err, want)
		}
	}
	// Round trip through MarshalJSON.
	js, err := cfg.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	again, err := balancer.ParseConfig(js)
	if err != nil || again.Algorithm.(*balancer.LeastRequest).ChoiceCount != 3 {
		t.Fatalf("round trip of %s: %+v, %v", js, again, err)
	}
}

func TestCloseStopsEverything(t *testing.T) {
	_, eps := backends(t, 2)
	before := goleak.IgnoreCurrent() // the backends' listeners
	feed, _ := resolver.NewStatic(eps...)
	tr, err := lodestar.NewTransport(lodestar.Options{Services: map[string]lodestar.Service{"svc": {Feed: feed}}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "endpoints", func() bool { return len(tr.Engine("svc").Eligible()) == 2 })
	c := &http.Client{Transport: tr}
	for range 4 {
		get(t, c)
	}
	tr.Close()
	if _, err := c.Get("http://svc/"); !errors.Is(err, balancer.ErrClosed) {
		t.Fatalf("after Close: err = %v, want ErrClosed", err)
	}
	// No goroutine of the transport (feed watchers, connection read and write
	// loops) survives Close; only the backends' server-side goroutines remain.
	if err := goleak.Find(before, goleak.IgnoreAnyFunction("net/http.(*conn).serve")); err != nil {
		t.Fatalf("goroutines left after Close: %v", err)
	}
}

func TestLeastRequestDistributionIsNotRoundRobin(t *testing.T) {
	// Guard against the P2C test passing for a picker that ignores load: the
	// seed-1 P2C sequence over 4 idle backends is not a fixed cycle.
	_, eps := backends(t, 4)
	feed, _ := resolver.NewStatic(eps...)
	c := &http.Client{Transport: newTransport(t, feed, balancer.Config{Algorithm: &balancer.LeastRequest{}})}
	seq := make([]string, 40)
	for i := range seq {
		seq[i] = get(t, c)
	}
	cyclic := true
	for i := 4; i < len(seq); i++ {
		cyclic = cyclic && seq[i] == seq[i-4]
	}
	if cyclic {
		t.Fatal("P2C picks form a fixed cycle")
	}
}

func TestCallFitsWithoutMallocHeader(t *testing.T) {
	if n := lodestar.CallSize(); n > 512 {
		t.Fatalf("call is %d bytes; above 512 Go allocates it with a malloc header (slower)", n)
	}
}
