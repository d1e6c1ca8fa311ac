package lodestar_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/resolver"
)

// flaky is a real HTTP backend on 127.0.0.1 whose behaviour tests switch:
// status to answer with, /healthz's status, and a count of requests served.
type flaky struct {
	name     string
	srv      *httptest.Server
	status   atomic.Int32 // 0 = 200
	health   atomic.Int32 // 0 = 200
	served   atomic.Int64
	inflight atomic.Int64
	maxSeen  atomic.Int64
	delay    atomic.Int64  // service time in ns: the backend's latency
	pauseMe  atomic.Bool   // answer the next request 503 with Retry-After: 1
	hold     chan struct{} // when not nil, requests wait for it
}

func newFlaky(t *testing.T, name string) *flaky {
	t.Helper()
	f := &flaky{name: name}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			if s := f.health.Load(); s != 0 {
				w.WriteHeader(int(s))
			}
			return
		}
		n := f.inflight.Add(1)
		defer f.inflight.Add(-1)
		for m := f.maxSeen.Load(); n > m && !f.maxSeen.CompareAndSwap(m, n); m = f.maxSeen.Load() {
		}
		f.served.Add(1)
		if f.pauseMe.CompareAndSwap(true, false) {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if d := f.delay.Load(); d > 0 {
			time.Sleep(time.Duration(d)) // service time, not synchronisation
		}
		if f.hold != nil {
			<-f.hold
		}
		if s := f.status.Load(); s != 0 {
			w.WriteHeader(int(s))
		}
		io.WriteString(w, name)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *flaky) addr() string { return f.srv.Listener.Addr().String() }

func flakyFleet(t *testing.T, n int) ([]*flaky, []resolver.Endpoint) {
	fs := make([]*flaky, n)
	eps := make([]resolver.Endpoint, n)
	for i := range fs {
		fs[i] = newFlaky(t, fmt.Sprintf("f%d", i))
		eps[i] = resolver.Endpoint{Address: fs[i].addr()}
	}
	return fs, eps
}

// transportJSON builds a Transport for service "svc" over eps with a JSON config.
func transportJSON(t *testing.T, eps []resolver.Endpoint, js string) (*lodestar.Transport, *balancer.Engine) {
	t.Helper()
	cfg, err := balancer.ParseConfig([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	st, err := resolver.NewStatic(eps...)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := lodestar.NewTransport(lodestar.Options{Services: map[string]lodestar.Service{"svc": {Feed: st, Config: cfg}}, Rand: seeded(3)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr, tr.Engine("svc")
}

// events returns a channel of the engine's events (buffered; tests read what
// they wait for).
func events(t *testing.T, e *balancer.Engine) <-chan balancer.Event {
	ch := make(chan balancer.Event, 1024)
	cancel := e.Subscribe(func(ev balancer.Event) {
		select {
		case ch <- ev:
		default:
		}
	})
	t.Cleanup(cancel)
	return ch
}

// waitEvent waits up to 10s for an event that matches.
func waitEvent(t *testing.T, ch <-chan balancer.Event, what string, match func(balancer.Event) bool) balancer.Event {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev := <-ch:
			if match(ev) {
				return ev
			}
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func send(c *http.Client) (string, int, error) {
	resp, err := c.Get("http://svc/")
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), resp.StatusCode, err
}

// A hard-down endpoint (connections refused) costs at most 5 failed requests
// (consecutive failures 5) before no pick goes to it, and it comes back when
// its ejection time is over.
func TestE2EHardDownEndpointEjected(t *testing.T) {
	fs, eps := flakyFleet(t, 4)
	tr, e := transportJSON(t, eps, `{"outlierDetection": {"interval": "20ms", "baseEjectionTime": "300ms", "maxEjectionPercent": 50}}`)
	evs := events(t, e)
	c := &http.Client{Transport: tr}
	for range 8 {
		if _, _, err := send(c); err != nil {
			t.Fatal(err)
		}
	}
	down := fs[1]
	addr := down.addr()
	down.srv.Close() // refuses connections from now on
	failed := 0
	for range 200 {
		if _, _, err := send(c); err != nil {
			failed++
		}
	}
	if failed == 0 || failed > 5 {
		t.Fatalf("%d requests failed after the endpoint went down; want 1..5", failed)
	}
	ev := waitEvent(t, evs, "the ejection", func(ev balancer.Event) bool {
		return ev.Address == addr && ev.New&balancer.Ejected != 0
	})
	if !strings.Contains(ev.Why, "consecutive") {
		t.Errorf("ejection why = %q", ev.Why)
	}
	// Bring it back on the same address; after the ejection time it serves.
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen on %s again: %v", addr, err)
	}
	back := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "back") })}
	go back.Serve(l)
	defer back.Close()
	waitEvent(t, evs, "the end of the ejection", func(ev balancer.Event) bool {
		return ev.Address == addr && ev.Old&balancer.Ejected != 0 && ev.New&balancer.Ejected == 0
	})
	sawBack := false
	for range 40 {
		body, _, err := send(c)
		if err != nil {
			t.Fatalf("after it came back: %v", err)
		}
		sawBack = sawBack || body == "back"
	}
	if !sawBack {
		t.Fatal("the endpoint got no traffic after its ejection ended")
	}
}

// At most maxEjectionPercent of the fleet is ejected when half of it fails;
// when all of it fails, panic mode spreads over every endpoint (default 50%),
// and with panicThreshold 0 the requests fail fast naming the ejections.
func TestE2EMaxEjectionPercentAndPanic(t *testing.T) {
	fs, eps := flakyFleet(t, 4)
	tr, e := transportJSON(t, eps, `{"outlierDetection": {"consecutiveFailures": 2, "baseEjectionTime": "1m", "maxEjectionPercent": 25}}`)
	c := &http.Client{Transport: tr}
	fs[0].status.Store(503)
	fs[1].status.Store(503)
	for range 100 {
		send(c)
	}
	ejected := 0
	for _, ep := range e.Endpoints() {
		if ep.Conditions()&balancer.Ejected != 0 {
			ejected++
		}
	}
	if ejected != 1 {
		t.Fatalf("%d of 4 ejected with maxEjectionPercent 25; want 1", ejected)
	}

	// All fail: with maxEjectionPercent 100 all are ejected; panic spreads.
	fs2, eps2 := flakyFleet(t, 4)
	tr2, e2 := transportJSON(t, eps2, `{"outlierDetection": {"consecutiveFailures": 2, "baseEjectionTime": "1m", "maxEjectionPercent": 100}}`)
	c2 := &http.Client{Transport: tr2}
	for _, f := range fs2 {
		f.status.Store(503)
	}
	for range 100 {
		send(c2)
	}
	if !e2.Panicking() {
		t.Fatal("every endpoint ejected, and the engine is not in panic")
	}
	for _, f := range fs2 {
		f.served.Store(0)
	}
	for range 40 {
		if _, _, err := send(c2); err != nil {
			t.Fatalf("in panic: %v", err)
		}
	}
	for _, f := range fs2 {
		if f.served.Load() == 0 {
			t.Fatalf("in panic, %s got no request; want spread over all", f.name)
		}
	}

	_, eps3 := flakyFleet(t, 2)
	fs3 := eps3
	tr3, _ := transportJSON(t, fs3, `{"panicThreshold": 0, "outlierDetection": {"consecutiveFailures": 1, "baseEjectionTime": "1m", "maxEjectionPercent": 100}}`)
	c3 := &http.Client{Transport: tr3}
	tr3.Engine("svc").SetCondition(fs3[0].Address, balancer.Ejected, true)
	tr3.Engine("svc").SetCondition(fs3[1].Address, balancer.Ejected, true)
	_, _, err := send(c3)
	if !errors.Is(err, balancer.ErrNoEndpoints) || !strings.Contains(err.Error(), "2 ejected") {
		t.Fatalf("panic off, all ejected: err = %v; want ErrNoEndpoints saying 2 ejected", err)
	}
}

// Active HTTP checks mark an endpoint down after unhealthyThreshold failed
// checks and up after healthyThreshold passed ones; no request goes to it
// while it is down.
func TestE2EActiveHealthCheck(t *testing.T) {
	fs, eps := flakyFleet(t, 2)
	tr, e := transportJSON(t, eps, `{"healthCheck": {"http": {"path": "/healthz"}, "interval": "20ms", "noTrafficInterval": "20ms", "unhealthyThreshold": 2, "healthyThreshold": 2}}`)
	evs := events(t, e)
	c := &http.Client{Transport: tr}
	fs[0].health.Store(503)
	waitEvent(t, evs, "unhealthy", func(ev balancer.Event) bool {
		return ev.Address == fs[0].addr() && ev.New&balancer.Unhealthy != 0
	})
	fs[0].served.Store(0)
	for range 20 {
		if body, _, err := send(c); err != nil || body != "f1" {
			t.Fatalf("while f0 is down: %q, %v; want f1", body, err)
		}
	}
	fs[0].health.Store(0)
	waitEvent(t, evs, "healthy again", func(ev balancer.Event) bool {
		return ev.Address == fs[0].addr() && ev.Old&balancer.Unhealthy != 0 && ev.New&balancer.Unhealthy == 0
	})
	for range 10 {
		send(c)
	}
	if fs[0].served.Load() == 0 {
		t.Fatal("f0 got no request after it was healthy again")
	}
}

// A breaker opens on consecutive failures (no request while open), lets one
// probe through when half-open, and closes after it succeeds.
func TestE2EBreaker(t *testing.T) {
	fs, eps := flakyFleet(t, 2)
	tr, e := transportJSON(t, eps, `{"circuitBreaker": {"consecutiveFailures": 3, "failureRatio": 0, "openTimeout": "200ms", "halfOpenRequests": 1}}`)
	evs := events(t, e)
	c := &http.Client{Transport: tr}
	fs[0].status.Store(500)
	for range 20 {
		send(c)
	}
	waitEvent(t, evs, "breaker open", func(ev balancer.Event) bool {
		return ev.Address == fs[0].addr() && ev.New&balancer.BreakerOpen != 0
	})
	fs[0].served.Store(0)
	for range 10 {
		if body, _, _ := send(c); body != "f1" {
			t.Fatalf("while the breaker is open: %q; want f1", body)
		}
	}
	if n := fs[0].served.Load(); n != 0 {
		t.Fatalf("the open endpoint served %d requests", n)
	}
	fs[0].status.Store(0)
	waitEvent(t, evs, "half-open", func(ev balancer.Event) bool {
		return ev.Address == fs[0].addr() && ev.Old&balancer.BreakerOpen != 0 && ev.New&balancer.BreakerOpen == 0
	})
	for range 20 {
		send(c)
	}
	if fs[0].served.Load() == 0 {
		t.Fatal("no probe reached the half-open endpoint")
	}
	waitEvent(t, evs, "closed", func(ev balancer.Event) bool {
		return ev.Address == fs[0].addr() && strings.Contains(ev.Why, "→ closed")
	})
}

// maxInFlightPerEndpoint holds under 16 concurrent requests: each backend
// sees at most the limit at once, and requests beyond fail fast, typed.
func TestE2EMaxInFlight(t *testing.T) {
	fs, eps := flakyFleet(t, 2)
	hold := make(chan struct{})
	for _, f := range fs {
		f.hold = hold
	}
	tr, _ := transportJSON(t, eps, `{"maxInFlightPerEndpoint": 2}`)
	c := &http.Client{Transport: tr}
	var wg sync.WaitGroup
	var overloaded atomic.Int64
	errs := make(chan error, 16)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, err := send(c)
			if errors.Is(err, balancer.ErrOverloaded) {
				overloaded.Add(1)
			} else if err != nil {
				errs <- err
			}
		}()
	}
	// 4 requests can be held (2 per backend); the other 12 fail at once.
	deadline := time.Now().Add(10 * time.Second)
	for overloaded.Load() < 12 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond) // polling a count: the failures have no signal of their own
	}
	close(hold)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("unexpected error: %v", err)
	}
	if overloaded.Load() != 12 {
		t.Fatalf("%d requests overloaded; want 12 (16 - 2 backends × 2)", overloaded.Load())
	}
	for _, f := range fs {
		if m := f.maxSeen.Load(); m > 2 {
			t.Fatalf("%s saw %d requests at once; the limit is 2", f.name, m)
		}
	}
}

// A 10× slow endpoint among 5 is ejected by the latency detector and its share
// falls below 2%. Load: 200 requests/s from 4 goroutines paced by tickers;
// round robin (no randomness); backends answer in ~1ms, the slow one in ~10ms.
func TestE2ELatencyOutlier(t *testing.T) {
	fs, eps := flakyFleet(t, 5)
	for _, f := range fs {
		f.delay.Store(int64(time.Millisecond))
	}
	// 40 requests/s reach each endpoint: a 500ms interval gives each ~20.
	tr, e := transportJSON(t, eps, `{"outlierDetection": {"consecutiveFailures": 0, "interval": "500ms",
		"baseEjectionTime": "30s", "maxEjectionPercent": 50,
		"latency": {"quantile": 0.9, "factor": 3, "minimumHosts": 3, "requestVolume": 10}}}`)
	evs := events(t, e)
	c := &http.Client{Transport: tr}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(20 * time.Millisecond) // 4 × 50/s = 200 requests/s
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
					send(c)
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	slowAddr := fs[2].addr()
	changed := time.Now()
	fs[2].delay.Store(int64(10 * time.Millisecond))
	ev := waitEvent(t, evs, "the latency ejection", func(ev balancer.Event) bool {
		return ev.Address == slowAddr && ev.New&balancer.Ejected != 0
	})
	took := time.Since(changed)
	if !strings.Contains(ev.Why, "latency") {
		t.Fatalf("ejected for %q, want latency", ev.Why)
	}
	before := make([]int64, len(fs))
	for i, f := range fs {
		before[i] = f.served.Load()
	}
	time.Sleep(time.Second) // a window of load to measure the share over
	var total, slowN int64
	for i, f := range fs {
		n := f.served.Load() - before[i]
		total += n
		if i == 2 {
			slowN = n
		}
	}
	share := float64(slowN) / float64(total)
	t.Logf("ejected %v after the slowdown; share over the next second: %d of %d (%.2f%%)", took, slowN, total, 100*share)
	if total < 50 || share >= 0.02 {
		t.Fatalf("slow endpoint's share after ejection: %d of %d; want < 2%% of a real load", slowN, total)
	}
	if took > 5*time.Second { // the issue asks for 2s; the bound is generous for a loaded CI
		t.Fatalf("ejection took %v", took)
	}
}

// With endEjectionOnHealthy, a passing active check ends an outlier ejection
// early (the ejection time here is a minute).
func TestE2EHealthyCheckEndsEjection(t *testing.T) {
	fs, eps := flakyFleet(t, 3)
	tr, e := transportJSON(t, eps, `{"healthCheck": {"http": {"path": "/healthz"}, "interval": "20ms", "noTrafficInterval": "20ms"},
		"outlierDetection": {"consecutiveFailures": 2, "baseEjectionTime": "1m", "maxEjectionPercent": 50, "endEjectionOnHealthy": true}}`)
	evs := events(t, e)
	c := &http.Client{Transport: tr}
	fs[0].status.Store(503) // requests fail; its health endpoint still passes
	for range 20 {
		send(c)
	}
	waitEvent(t, evs, "the ejection", func(ev balancer.Event) bool {
		return ev.Address == fs[0].addr() && ev.New&balancer.Ejected != 0
	})
	ev := waitEvent(t, evs, "the early end", func(ev balancer.Event) bool {
		return ev.Address == fs[0].addr() && ev.Old&balancer.Ejected != 0 && ev.New&balancer.Ejected == 0
	})
	if !strings.Contains(ev.Why, "health check passed") {
		t.Fatalf("ejection ended for %q; want the health check", ev.Why)
	}
}

// With retries and ejection on, a hard-down endpoint among four costs the
// callers nothing: 10,000 idempotent requests, 0 failures (the attempts that
// hit the dead endpoint before its ejection are retried on another one).
func TestE2EHardDownWithRetriesZeroFailures(t *testing.T) {
	fs, eps := flakyFleet(t, 4)
	tr, _ := transportJSON(t, eps, `{"retry": {"maxAttempts": 3},
		"outlierDetection": {"consecutiveLocalOriginFailures": 3, "interval": "50ms", "baseEjectionTime": "200ms", "maxEjectionPercent": 50}}`)
	c := &http.Client{Transport: tr}
	fs[3].srv.Close() // refuses connections throughout: ejected, then tried again after each ejection
	var failed int
	var first error
	for range 10_000 {
		if _, code, err := send(c); err != nil || code != http.StatusOK {
			if failed++; first == nil {
				first = fmt.Errorf("status %d, %v", code, err)
			}
		}
	}
	if failed != 0 {
		t.Fatalf("%d of 10,000 requests failed; first: %v", failed, first)
	}
	var served int64
	for _, f := range fs[:3] {
		served += f.served.Load()
	}
	if served != 10_000 {
		t.Fatalf("the live endpoints served %d requests; want each of the 10,000 once", served)
	}
}

// An endpoint that answers 503 with Retry-After gets no new picks for that
// long, while the others serve, and comes back after it.
func TestE2ERetryAfterPausesEndpoint(t *testing.T) {
	fs, eps := flakyFleet(t, 2)
	tr, e := transportJSON(t, eps, `{}`)
	evs := events(t, e)
	c := &http.Client{Transport: tr}
	f0 := fs[0]
	f0.pauseMe.Store(true)
	for f0.served.Load() == 0 { // round robin reaches f0 within two requests
		send(c)
	}
	paused := waitEvent(t, evs, "the pause", func(ev balancer.Event) bool {
		return ev.Address == f0.addr() && ev.New&balancer.Paused != 0
	})
	if !strings.Contains(paused.Why, "Retry-After") {
		t.Fatalf("paused for %q", paused.Why)
	}
	for range 20 {
		if body, _, err := send(c); err != nil || body != "f1" {
			t.Fatalf("while f0 is paused: %q, %v; want f1", body, err)
		}
	}
	if n := f0.served.Load(); n != 1 {
		t.Fatalf("the paused endpoint served %d requests; want only the one that paused it", n)
	}
	waitEvent(t, evs, "the end of the pause", func(ev balancer.Event) bool {
		return ev.Address == f0.addr() && ev.Old&balancer.Paused != 0 && ev.New&balancer.Paused == 0
	})
	for range 4 {
		send(c)
	}
	if f0.served.Load() < 2 {
		t.Fatal("f0 got no request after its pause")
	}
}
