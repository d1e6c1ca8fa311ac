package lodestar_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/retry"
)

// hedges records the hedges the Transport sends: for each, the endpoints
// the request had tried and the hedge's endpoint.
type hedges struct {
	mu    sync.Mutex
	sent  []hedgeSent
	ch    chan struct{} // one value per hedge, when made with a buffer
	reset func()
}

type hedgeSent struct {
	tried []string
	to    string
}

func recordHedges(t *testing.T, buf int) *hedges {
	h := &hedges{ch: make(chan struct{}, buf)}
	h.reset = lodestar.SetHedgeHook(func(tried []*balancer.Endpoint, ep *balancer.Endpoint) {
		s := hedgeSent{to: ep.Address()}
		for _, e := range tried {
			s.tried = append(s.tried, e.Address())
		}
		h.mu.Lock()
		h.sent = append(h.sent, s)
		h.mu.Unlock()
		select {
		case h.ch <- struct{}{}:
		default:
		}
	})
	t.Cleanup(h.reset)
	return h
}

func (h *hedges) list() []hedgeSent {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.sent)
}

// hung answers only when the request's context ends (the client gave up or
// the test's 10s pass), and counts the cancellations it sees.
func hung(cancelled *atomic.Int64) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
			cancelled.Add(1)
		case <-time.After(10 * time.Second):
			io.WriteString(w, "too late")
		}
	}
}

func hedgeConfig(delay string, maxExtra int) retry.Config {
	return retry.Config{Backoff: fastBackoff(), Hedge: &retry.HedgeConfig{Delay: delay, MaxExtra: maxExtra}}
}

func checkNothingInFlight(t *testing.T, tr *lodestar.Transport) {
	t.Helper()
	for _, ep := range tr.Engine("svc").Endpoints() {
		if n := ep.InFlight(); n != 0 {
			t.Errorf("%s: %d requests in flight after every RoundTrip returned and every body closed", ep.Address(), n)
		}
	}
}

// A GET whose first attempt hangs is hedged after the delay to another
// endpoint, which answers; the hung attempt is cancelled (its server sees
// its request's context end) and reported to the balancer as canceled, not
// as a failure; nothing is left in flight when RoundTrip has returned and
// the body is closed.
func TestHedgeGoesToAnotherEndpointAndCancelsTheLoser(t *testing.T) {
	var cancelled atomic.Int64
	slow := newCounter(t, "slow", hung(&cancelled))
	fast1 := newCounter(t, "fast1", nil)
	fast2 := newCounter(t, "fast2", nil)
	rec := recordHedges(t, 0)
	tr := retryTransport(t, hedgeConfig("20ms", 1), slow.addr(), fast1.addr(), fast2.addr())
	const n = 30
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/", nil)
		resp, body, err := sendRead(t, tr, req)
		cancel()
		if err != nil || resp.StatusCode != 200 || (body != "fast1" && body != "fast2") {
			t.Fatalf("GET: %v %q, %v", resp, body, err)
		}
	}
	checkNothingInFlight(t, tr)
	k := slow.n.Load()
	if k == 0 {
		t.Fatal("no request started on the slow endpoint")
	}
	// Every request that started on the slow endpoint was hedged elsewhere.
	sent := rec.list()
	toSlow := 0
	for _, h := range sent {
		if slices.Contains(h.tried, h.to) {
			t.Fatalf("hedge to %s, which the request had tried (%v)", h.to, h.tried)
		}
		if h.to == slow.addr() {
			toSlow++ // a fast first attempt slower than 20ms (a loaded machine)
		}
	}
	if len(sent) < int(k)-toSlow {
		t.Fatalf("%d hedges for %d requests that started on the slow endpoint", len(sent), k)
	}
	waitFor(t, "the slow server to see every request cancelled", func() bool { return cancelled.Load() == k })
	ep := tr.Engine("svc").Endpoint(slow.addr())
	if c := ep.Outcomes(outcome.Canceled); c != uint64(k) {
		t.Errorf("slow endpoint: %d canceled outcomes, want %d", c, k)
	}
	for _, c := range []outcome.Class{outcome.Timeout, outcome.LocalError, outcome.ServerError, outcome.Success} {
		if got := ep.Outcomes(c); got != 0 {
			t.Errorf("slow endpoint: %d %v outcomes, want none (losers are canceled)", got, c)
		}
	}
	if b := tr.RetryBudget("svc"); b.Withdrawn() != uint64(len(sent)) {
		t.Errorf("budget granted %d, %d hedges sent", b.Withdrawn(), len(sent))
	}
}

// A POST is never hedged, nor a PUT whose body cannot be replayed (no
// GetBody): the servers see each request once, and no hedge is sent, even
// when the first attempt is slow.
func TestHedgeNeverSendsUnsafeRequestsTwice(t *testing.T) {
	slow := newCounter(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(60 * time.Millisecond) // well past the 5ms hedge delay
		io.WriteString(w, "slow")
	})
	fast := newCounter(t, "fast", nil)
	rec := recordHedges(t, 0)
	tr := retryTransport(t, hedgeConfig("5ms", 1), slow.addr(), fast.addr())
	const n = 10
	for range n {
		req, _ := http.NewRequest("POST", "http://svc/orders", bytes.NewReader([]byte("one order")))
		if resp, _, err := sendRead(t, tr, req); err != nil || resp.StatusCode != 200 {
			t.Fatalf("POST: %v, %v", resp, err)
		}
		req, _ = http.NewRequest("PUT", "http://svc/orders/1", io.NopCloser(bytes.NewReader([]byte("no GetBody"))))
		if resp, _, err := sendRead(t, tr, req); err != nil || resp.StatusCode != 200 {
			t.Fatalf("PUT without GetBody: %v, %v", resp, err)
		}
	}
	if got := slow.n.Load() + fast.n.Load(); got != 2*n {
		t.Fatalf("servers saw %d requests for %d", got, 2*n)
	}
	if slow.n.Load() == 0 || len(rec.list()) != 0 || tr.RetryBudget("svc").Withdrawn() != 0 {
		t.Fatalf("slow saw %d, %d hedges sent, budget granted %d", slow.n.Load(), len(rec.list()), tr.RetryBudget("svc").Withdrawn())
	}
	// The same POST marked idempotent is hedged.
	for range 4 {
		req, _ := http.NewRequestWithContext(lodestar.WithIdempotent(context.Background()), "POST", "http://svc/orders", bytes.NewReader([]byte("one order")))
		if resp, _, err := sendRead(t, tr, req); err != nil || resp.StatusCode != 200 {
			t.Fatalf("marked POST: %v, %v", resp, err)
		}
	}
	if len(rec.list()) == 0 {
		t.Fatal("a POST marked idempotent was not hedged")
	}
	checkNothingInFlight(t, tr)
}

// A hedge replays the body through GetBody: a 256 KiB PUT reaches the hung
// first server and the hedge's server byte-identical.
func TestHedgeReplaysBodyIdentically(t *testing.T) {
	var cancelled atomic.Int64
	slow := newCounter(t, "slow", hung(&cancelled)) // counts after reading the whole body
	fast := newCounter(t, "fast", nil)
	tr := retryTransport(t, hedgeConfig("20ms", 1), slow.addr(), fast.addr())
	payload := make([]byte, 256<<10)
	r := rand.New(rand.NewPCG(4, 2))
	for i := range payload {
		payload[i] = byte(r.Uint32())
	}
	want := sha256.Sum256(payload)
	for range 4 {
		req, _ := http.NewRequest("PUT", "http://svc/blob", bytes.NewReader(payload))
		if resp, body, err := sendRead(t, tr, req); err != nil || body != "fast" {
			t.Fatalf("PUT: %v %q, %v", resp, body, err)
		}
	}
	if slow.n.Load() == 0 {
		t.Fatal("no attempt reached the slow server")
	}
	fast.mu.Lock()
	if len(fast.sums) != 4 {
		t.Errorf("the hedges' server received %d whole bodies, want 4", len(fast.sums))
	}
	fast.mu.Unlock()
	for _, c := range []*counter{slow, fast} {
		c.mu.Lock()
		for i, s := range c.sums {
			if s != want {
				t.Errorf("%s: body %d differs from the one sent", c.name, i)
			}
		}
		c.mu.Unlock()
	}
	checkNothingInFlight(t, tr)
}

// A budget with nothing left refuses hedges: the slow first attempt is
// waited for (and counted as refused), and no second request is sent.
func TestHedgeRefusedByExhaustedBudget(t *testing.T) {
	slow := newCounter(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(50 * time.Millisecond)
		io.WriteString(w, "slow")
	})
	fast := newCounter(t, "fast", nil)
	rec := recordHedges(t, 0)
	tiny, none := 0.01, 0
	rc := hedgeConfig("5ms", 1)
	rc.Budget = retry.BudgetConfig{Ratio: &tiny, MinPerSecond: &none, Window: time.Hour} // a hedge needs 100 requests' credit
	tr := retryTransport(t, rc, slow.addr(), fast.addr())
	const n = 10
	slowAnswers := 0
	for range n {
		req, _ := http.NewRequest("GET", "http://svc/", nil)
		_, body, err := sendRead(t, tr, req)
		if err != nil {
			t.Fatal(err)
		}
		if body == "slow" {
			slowAnswers++
		}
	}
	b := tr.RetryBudget("svc")
	if len(rec.list()) != 0 || b.Withdrawn() != 0 || b.Refused() == 0 {
		t.Fatalf("%d hedges sent, budget granted %d refused %d; want none granted, some refused", len(rec.list()), b.Withdrawn(), b.Refused())
	}
	if got := slow.n.Load() + fast.n.Load(); got != n || slowAnswers != int(slow.n.Load()) || slowAnswers == 0 {
		t.Fatalf("servers saw %d for %d requests; %d slow answers, slow saw %d", got, n, slowAnswers, slow.n.Load())
	}
}

// Cancelling the caller's context while the first attempt and a hedge are
// both in flight ends both at once: RoundTrip returns the context's error,
// both servers see their request cancelled, nothing is in flight (and
// goleak, in TestMain, finds no goroutine left).
func TestHedgeCallerCancelStopsEverything(t *testing.T) {
	var cancelled atomic.Int64
	a := newCounter(t, "a", hung(&cancelled))
	b := newCounter(t, "b", hung(&cancelled))
	c := newCounter(t, "c", hung(&cancelled))
	rec := recordHedges(t, 4)
	tr := retryTransport(t, hedgeConfig("5ms", 2), a.addr(), b.addr(), c.addr())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/", nil)
		resp, err := tr.RoundTrip(req)
		if resp != nil {
			resp.Body.Close()
		}
		done <- err
	}()
	<-rec.ch // both hedges sent: three attempts in flight
	<-rec.ch
	waitFor(t, "three servers to hold the request", func() bool { return a.n.Load()+b.n.Load()+c.n.Load() == 3 })
	start := time.Now()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("returned %v after the cancel", took)
	}
	checkNothingInFlight(t, tr)
	waitFor(t, "every server to see its request cancelled", func() bool { return cancelled.Load() == 3 })
	if a.n.Load() != 1 || b.n.Load() != 1 || c.n.Load() != 1 {
		t.Fatalf("servers saw %d, %d, %d; want one each (hedges go to endpoints not tried)", a.n.Load(), b.n.Load(), c.n.Load())
	}
}

// The caller's deadline bounds the hedges: with every endpoint hung, a
// request with a 100ms deadline returns its deadline error, having hedged,
// and nothing outlives it.
func TestHedgeBoundedByCallerDeadline(t *testing.T) {
	var cancelled atomic.Int64
	a := newCounter(t, "a", hung(&cancelled))
	b := newCounter(t, "b", hung(&cancelled))
	rec := recordHedges(t, 0)
	tr := retryTransport(t, hedgeConfig("10ms", 1), a.addr(), b.addr())
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/", nil)
	_, err := tr.RoundTrip(req)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v, want the deadline's", err)
	}
	if len(rec.list()) != 1 {
		t.Fatalf("%d hedges, want 1", len(rec.list()))
	}
	checkNothingInFlight(t, tr)
	waitFor(t, "both servers to see the request end", func() bool { return cancelled.Load() == 2 })
}

// When the first attempt fails retryably while the hedge is in flight, the
// request waits for the hedge; when every attempt failed, the retry loop
// goes on with what the race used (hedges count towards maxAttempts).
func TestHedgeFailuresWaitThenRetry(t *testing.T) {
	slow503 := func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(30 * time.Millisecond) // past the hedge delay
		w.WriteHeader(503)
	}
	bad := newCounter(t, "bad", slow503)
	good := newCounter(t, "good", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(60 * time.Millisecond) // answers after bad's 503
		io.WriteString(w, "good")
	})
	rec := recordHedges(t, 0)
	tr := retryTransport(t, hedgeConfig("5ms", 1), bad.addr(), good.addr())
	for range 4 {
		req, _ := http.NewRequest("GET", "http://svc/", nil)
		if resp, body, err := sendRead(t, tr, req); err != nil || body != "good" {
			t.Fatalf("GET: %v %q, %v", resp, body, err)
		}
	}
	if good.n.Load() != 4 || bad.n.Load() == 0 || len(rec.list()) < 4 {
		t.Fatalf("good saw %d of 4, bad %d, %d hedges", good.n.Load(), bad.n.Load(), len(rec.list()))
	}
	checkNothingInFlight(t, tr)

	// Every endpoint 503s: maxAttempts 3 = the first attempt, one hedge and
	// one retry; the last 503 comes back.
	bad2 := newCounter(t, "bad2", slow503)
	only := retryTransport(t, retry.Config{MaxAttempts: 3, Backoff: fastBackoff(), Hedge: &retry.HedgeConfig{Delay: "5ms"}}, bad.addr(), bad2.addr())
	before := bad.n.Load() + bad2.n.Load()
	req, _ := http.NewRequest("GET", "http://svc/", nil)
	resp, _, err := sendRead(t, only, req)
	if err != nil || resp.StatusCode != 503 {
		t.Fatalf("all 503: %v, %v", resp, err)
	}
	if got := bad.n.Load() + bad2.n.Load() - before; got != 3 {
		t.Fatalf("all 503: %d attempts, want 3 (hedges count towards maxAttempts)", got)
	}
	checkNothingInFlight(t, only)
}

// The scenario, with generous bounds (the measured figures are in
// benchmarks/RESULTS.md, BenchmarkHedgeScenario): five endpoints, one 10×
// slower (handlers wait 5ms, the slow one 150ms: 30×, for a margin a loaded
// machine under -race cannot eat; the 10× figures are the benchmark's), 400
// GETs from 4 concurrent workers, round robin from a seeded start
// (Options.Rand = PCG(1, 1)). Without hedging a fifth of the requests wait
// 150ms, so the p99 is at least 150ms; with a 10ms hedge delay the p99 must
// stay below 150ms (it is ~16ms unloaded: 10ms + 5ms + loopback), i.e. fewer
// than 1% of requests wait for the slow endpoint. The
// budget allows a hedge per request (ratio 1, minPerSecond 10, window 10s),
// so that on a loaded machine, where healthy answers too pass the delay,
// the budget does not decide the p99; the extra attempts stay within it.
func TestHedgeOneSlowOfFive(t *testing.T) {
	const healthy, slowLat = 5 * time.Millisecond, 150 * time.Millisecond
	var addrs []string
	var servers []*counter
	for i := range 5 {
		lat := healthy
		if i == 0 {
			lat = slowLat
		}
		c := newCounter(t, "ep", func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-time.After(lat):
				io.WriteString(w, "ok")
			case <-r.Context().Done():
			}
		})
		servers = append(servers, c)
		addrs = append(addrs, c.addr())
	}
	seen := func() (n int64) {
		for _, c := range servers {
			n += c.n.Load()
		}
		return n
	}
	run := func(rc retry.Config) (p99 time.Duration, attempts int64, tr *lodestar.Transport) {
		tr = retryTransport(t, rc, addrs...)
		before := seen()
		const n, workers = 400, 4
		lats := make([]time.Duration, n)
		var next atomic.Int64
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for i := next.Add(1) - 1; i < n; i = next.Add(1) - 1 {
					start := time.Now()
					req, _ := http.NewRequest("GET", "http://svc/", nil)
					resp, err := tr.RoundTrip(req)
					if err != nil {
						t.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					lats[i] = time.Since(start)
				}
			})
		}
		wg.Wait()
		slices.Sort(lats)
		return lats[n*99/100-1], seen() - before, tr
	}
	plainP99, plainAttempts, _ := run(retry.Config{Backoff: fastBackoff()})
	one := 1.0
	rc := hedgeConfig("10ms", 1)
	rc.Budget.Ratio = &one
	hedgedP99, hedgedAttempts, tr := run(rc)
	b := tr.RetryBudget("svc")
	t.Logf("without hedging: p99 %v, %d attempts for 400 requests; with hedging (10ms): p99 %v, %d attempts, budget granted %d refused %d",
		plainP99, plainAttempts, hedgedP99, hedgedAttempts, b.Withdrawn(), b.Refused())
	if plainP99 < slowLat {
		t.Fatalf("without hedging the p99 is %v, below the slow endpoint's %v: the scenario is broken", plainP99, slowLat)
	}
	if hedgedP99 >= slowLat {
		t.Fatalf("with hedging the p99 is %v, not below the slow endpoint's %v", hedgedP99, slowLat)
	}
	// A hedge cancelled before its connection was made never reaches a
	// server: the servers see at most what the budget granted.
	if extra := hedgedAttempts - 400; extra > int64(b.Withdrawn()) || float64(b.Withdrawn()) > 1.0*400+10*(10+10) {
		t.Fatalf("%d extra attempts, budget granted %d", extra, b.Withdrawn())
	}
	checkNothingInFlight(t, tr)
}
