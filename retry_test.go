package lodestar_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/resolver"
	"github.com/lodestar-go/lodestar/retry"
)

// counter is a real loopback server that counts the requests it receives
// (each counted once its handler has read the whole body) and answers with
// handle.
type counter struct {
	name string
	srv  *httptest.Server
	n    atomic.Int64
	mu   sync.Mutex
	sums [][32]byte // sha256 of each request body received
}

func newCounter(t *testing.T, name string, handle func(w http.ResponseWriter, r *http.Request)) *counter {
	t.Helper()
	c := &counter{name: name}
	c.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A body the client stopped sending (a hedge's loser, cancelled
		// mid-upload) is no copy of the request: only whole bodies are summed.
		if body, err := io.ReadAll(r.Body); err == nil {
			c.mu.Lock()
			c.sums = append(c.sums, sha256.Sum256(body))
			c.mu.Unlock()
		}
		c.n.Add(1)
		if handle != nil {
			handle(w, r)
			return
		}
		io.WriteString(w, name)
	}))
	t.Cleanup(c.srv.Close)
	return c
}

func (c *counter) addr() string { return c.srv.Listener.Addr().String() }

func status(code int, retryAfter string) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		if retryAfter != "" {
			w.Header().Set("Retry-After", retryAfter)
		}
		w.WriteHeader(code)
	}
}

// hijackClose reads the request (the counter did), then drops the
// connection without an answer: the request reached the server and failed.
func hijackClose(w http.ResponseWriter, r *http.Request) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err == nil {
		conn.Close()
	}
}

// refusedAddr returns a loopback address nothing listens on.
func refusedAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func retryTransport(t *testing.T, rc retry.Config, addrs ...string) *lodestar.Transport {
	t.Helper()
	return retryTransportConfig(t, balancer.Config{Retry: &rc}, addrs...)
}

// retryTransportKeepBad is retryTransport with failure accrual off: for
// tests whose bad endpoint (refusing or resetting connections) must stay in
// rotation, which the default accrual would eject after 5 failures.
func retryTransportKeepBad(t *testing.T, rc retry.Config, addrs ...string) *lodestar.Transport {
	t.Helper()
	return retryTransportConfig(t, balancer.Config{Retry: &rc, FailureAccrual: new(false)}, addrs...)
}

func retryTransportConfig(t *testing.T, cfg balancer.Config, addrs ...string) *lodestar.Transport {
	t.Helper()
	eps := make([]resolver.Endpoint, len(addrs))
	for i, a := range addrs {
		eps[i] = resolver.Endpoint{Address: a}
	}
	// Keep-alives off: every attempt is a fresh connection, so net/http's
	// own replay of requests on dead idle connections plays no part.
	base := http.DefaultTransport.(*http.Transport).Clone()
	base.DisableKeepAlives = true
	feed, err := resolver.NewStatic(eps...)
	if err != nil {
		t.Fatal(err)
	}
	return newTransport(t, feed, cfg, func(o *lodestar.Options) { o.Base = base })
}

func fastBackoff() retry.BackoffConfig {
	return retry.BackoffConfig{Base: time.Millisecond, Max: time.Millisecond}
}

func sendRead(t *testing.T, tr *lodestar.Transport, req *http.Request) (*http.Response, string, error) {
	t.Helper()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return nil, "", err
	}
	b, rerr := io.ReadAll(resp.Body)
	resp.Body.Close()
	if rerr != nil {
		t.Fatalf("reading the body: %v", rerr)
	}
	return resp, string(b), nil
}

// A POST that reached a server, which read it and dropped the connection,
// is never sent again: the servers together see each request exactly once,
// and the caller gets the failure. A PUT (idempotent) in the same spot is
// retried on the other endpoint.
func TestRetryPOSTThatReachedServerIsNeverSentTwice(t *testing.T) {
	bad := newCounter(t, "bad", hijackClose)
	good := newCounter(t, "good", nil)
	tr := retryTransportKeepBad(t, retry.Config{MaxAttempts: 5, RetryOn: []string{"connect_error", "reset", "gateway_error", "timeout", "server_error"}, Backoff: fastBackoff()}, bad.addr(), good.addr())
	const n = 20
	failed := 0
	for range n {
		req, _ := http.NewRequest("POST", "http://svc/orders", bytes.NewReader([]byte("one order")))
		if _, _, err := sendRead(t, tr, req); err != nil {
			failed++
		}
	}
	if got := bad.n.Load() + good.n.Load(); got != n {
		t.Fatalf("servers saw %d POSTs for %d requests (bad %d, good %d)", got, n, bad.n.Load(), good.n.Load())
	}
	if failed != int(bad.n.Load()) || failed == 0 {
		t.Fatalf("%d POSTs failed, bad endpoint saw %d", failed, bad.n.Load())
	}
	bad.n.Store(0)
	good.n.Store(0)
	for range n {
		req, _ := http.NewRequest("PUT", "http://svc/orders/1", bytes.NewReader([]byte("one order")))
		if _, body, err := sendRead(t, tr, req); err != nil || body != "good" {
			t.Fatalf("PUT: %q, %v", body, err)
		}
	}
	if good.n.Load() != n || bad.n.Load() == 0 {
		t.Fatalf("PUTs: good saw %d of %d, bad %d", good.n.Load(), n, bad.n.Load())
	}
	// Marked idempotent (context or Idempotency-Key), a POST is retried too.
	for i := range 4 {
		req, _ := http.NewRequest("POST", "http://svc/orders", bytes.NewReader([]byte("one order")))
		if i%2 == 0 {
			req = req.WithContext(lodestar.WithIdempotent(context.Background()))
		} else {
			req.Header.Set("Idempotency-Key", "k")
		}
		if _, body, err := sendRead(t, tr, req); err != nil || body != "good" {
			t.Fatalf("marked POST: %q, %v", body, err)
		}
	}
}

// A POST whose connection was refused never left, so it is retried, on
// another endpoint, with its body.
func TestRetryRefusedPOSTGoesToAnotherEndpoint(t *testing.T) {
	good := newCounter(t, "good", nil)
	tr := retryTransportKeepBad(t, retry.Config{Backoff: fastBackoff()}, refusedAddr(t), good.addr())
	const n = 10
	for range n {
		req, _ := http.NewRequest("POST", "http://svc/orders", bytes.NewReader([]byte("one order")))
		if _, body, err := sendRead(t, tr, req); err != nil || body != "good" {
			t.Fatalf("POST: %q, %v", body, err)
		}
	}
	if good.n.Load() != n {
		t.Fatalf("good saw %d of %d", good.n.Load(), n)
	}
	want := sha256.Sum256([]byte("one order"))
	for _, s := range good.sums {
		if s != want {
			t.Fatal("the replayed body differs")
		}
	}
	// Without GetBody the body cannot be replayed: no retry.
	failed := 0
	for range n {
		req, _ := http.NewRequest("POST", "http://svc/orders", io.NopCloser(bytes.NewReader([]byte("x"))))
		if _, _, err := sendRead(t, tr, req); err != nil {
			failed++
		}
	}
	if failed == 0 || good.n.Load()+int64(failed) != 2*n {
		t.Fatalf("no GetBody: %d failed, good saw %d", failed, good.n.Load()-n)
	}
}

// An idempotent GET that got a 503 is retried on another endpoint: the
// second server sees it. A 503 everywhere comes back as the last 503.
func TestRetryGET503GoesToAnotherEndpoint(t *testing.T) {
	bad := newCounter(t, "bad", status(503, ""))
	good := newCounter(t, "good", nil)
	tr := retryTransport(t, retry.Config{Backoff: fastBackoff()}, bad.addr(), good.addr())
	const n = 10
	for range n {
		req, _ := http.NewRequest("GET", "http://svc/", nil)
		if resp, body, err := sendRead(t, tr, req); err != nil || resp.StatusCode != 200 || body != "good" {
			t.Fatalf("GET: %v %q, %v", resp, body, err)
		}
	}
	if good.n.Load() != n || bad.n.Load() == 0 || bad.n.Load() > n {
		t.Fatalf("good saw %d of %d, bad %d", good.n.Load(), n, bad.n.Load())
	}

	only := retryTransport(t, retry.Config{MaxAttempts: 3, Backoff: fastBackoff()}, bad.addr())
	before := bad.n.Load()
	req, _ := http.NewRequest("GET", "http://svc/", nil)
	resp, _, err := sendRead(t, only, req)
	if err != nil || resp.StatusCode != 503 {
		t.Fatalf("all 503: %v, %v; want the last 503", resp, err)
	}
	if got := bad.n.Load() - before; got != 3 {
		t.Fatalf("all 503: %d attempts, want 3", got)
	}
}

// A 1 MB body replays byte-identical: the server that answered 503 and the
// one that answered 200 saw the same checksum as the caller sent.
func TestRetryReplays1MBBodyIdentically(t *testing.T) {
	bad := newCounter(t, "bad", status(503, ""))
	good := newCounter(t, "good", nil)
	tr := retryTransport(t, retry.Config{Backoff: fastBackoff()}, bad.addr(), good.addr())
	payload := make([]byte, 1<<20)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range payload {
		payload[i] = byte(r.Uint32())
	}
	want := sha256.Sum256(payload)
	for range 4 {
		req, _ := http.NewRequest("PUT", "http://svc/blob", bytes.NewReader(payload))
		if resp, _, err := sendRead(t, tr, req); err != nil || resp.StatusCode != 200 {
			t.Fatalf("PUT: %v, %v", resp, err)
		}
	}
	if bad.n.Load() == 0 {
		t.Fatal("no attempt reached the 503 server")
	}
	for _, c := range []*counter{bad, good} {
		for i, s := range c.sums {
			if s != want {
				t.Fatalf("%s: body %d differs from the one sent", c.name, i)
			}
		}
	}
}

// A per-try timeout cuts a hung attempt, and the retry lands on another
// endpoint well within the caller's deadline.
func TestRetryPerTryTimeoutCutsHungAttempt(t *testing.T) {
	hung := newCounter(t, "hung", func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // until the client gives up on it
	})
	good := newCounter(t, "good", nil)
	const perTry = 100 * time.Millisecond
	tr := retryTransport(t, retry.Config{PerTryTimeout: perTry, RetryOn: []string{"timeout"}, Backoff: fastBackoff()}, hung.addr(), good.addr())
	for range 4 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		start := time.Now()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/", nil)
		resp, body, err := sendRead(t, tr, req)
		cancel()
		if err != nil || resp.StatusCode != 200 || body != "good" {
			t.Fatalf("GET: %v %q, %v", resp, body, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("took %v", d)
		}
	}
	if hung.n.Load() == 0 || good.n.Load() != 4 {
		t.Fatalf("hung saw %d, good %d of 4", hung.n.Load(), good.n.Load())
	}
	// The body of a successful attempt stays readable after RoundTrip
	// returns, past the per-try timeout.
	slow := newCounter(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		http.NewResponseController(w).Flush()
		time.Sleep(2 * perTry) // the body's second half comes after the per-try timeout
		io.WriteString(w, "tail")
	})
	tr2 := retryTransport(t, retry.Config{PerTryTimeout: perTry, Backoff: fastBackoff()}, slow.addr())
	req, _ := http.NewRequest("GET", "http://svc/", nil)
	if resp, body, err := sendRead(t, tr2, req); err != nil || resp.StatusCode != 200 || body != "tail" {
		t.Fatalf("slow body: %v %q, %v", resp, body, err)
	}
	// Without a retry left, the error says what cut it.
	tr3 := retryTransport(t, retry.Config{MaxAttempts: 1, PerTryTimeout: perTry}, hung.addr())
	req, _ = http.NewRequest("GET", "http://svc/", nil)
	_, _, err := sendRead(t, tr3, req)
	var pe *lodestar.PerTryTimeoutError
	if !errors.As(err, &pe) {
		t.Fatalf("error %v, want a *PerTryTimeoutError", err)
	}
}

// Cancelling the caller's context during a backoff wait returns at once,
// with the context's error.
func TestRetryCancelDuringBackoffReturnsAtOnce(t *testing.T) {
	bad := newCounter(t, "bad", status(503, "30"))
	tr := retryTransport(t, retry.Config{Backoff: retry.BackoffConfig{Base: time.Minute, Max: time.Minute}}, bad.addr())
	waiting := make(chan time.Duration, 1)
	defer lodestar.SetBackoffHook(func(d time.Duration) { waiting <- d })()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/", nil)
		_, err := tr.RoundTrip(req)
		done <- err
	}()
	d := <-waiting
	if d < 30*time.Second {
		t.Fatalf("backoff %v, want at least the Retry-After of 30s", d)
	}
	start := time.Now()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("returned %v after the cancel", took)
	}
}

// Retry-After is honoured for the delay (capped by backoff.max): a 503 with
// Retry-After: 1 holds the retry a second.
func TestRetryHonoursRetryAfter(t *testing.T) {
	bad := newCounter(t, "bad", status(503, "1"))
	good := newCounter(t, "good", nil)
	tr := retryTransport(t, retry.Config{Backoff: retry.BackoffConfig{Base: time.Millisecond, Max: 5 * time.Second}}, bad.addr(), good.addr())
	var delays []time.Duration
	var mu sync.Mutex
	defer lodestar.SetBackoffHook(func(d time.Duration) { mu.Lock(); delays = append(delays, d); mu.Unlock() })()
	for range 2 { // round robin: at least one of the two starts at the 503
		start, hitBad := time.Now(), bad.n.Load()
		req, _ := http.NewRequest("GET", "http://svc/", nil)
		resp, body, err := sendRead(t, tr, req)
		if err != nil || body != "good" {
			t.Fatalf("GET: %v %q, %v", resp, body, err)
		}
		if bad.n.Load() > hitBad {
			if took := time.Since(start); took < time.Second {
				t.Fatalf("retried after %v, before the Retry-After of 1s", took)
			}
		}
	}
	if len(delays) == 0 || slices.ContainsFunc(delays, func(d time.Duration) bool { return d != time.Second }) {
		t.Fatalf("delays %v, want 1s each, at least one", delays)
	}
	// Capped by backoff.max.
	capped := retryTransport(t, retry.Config{Backoff: retry.BackoffConfig{Base: time.Millisecond, Max: 10 * time.Millisecond}}, bad.addr(), good.addr())
	delays = nil
	for range 2 {
		req, _ := http.NewRequest("GET", "http://svc/", nil)
		sendRead(t, capped, req)
	}
	if len(delays) == 0 || slices.ContainsFunc(delays, func(d time.Duration) bool { return d != 10*time.Millisecond }) {
		t.Fatalf("capped delays %v, want 10ms each, at least one", delays)
	}
}

// Retry storm: every backend answers 503 and N requests are offered; the
// budget keeps the attempts the servers see within
// 1.2·N + minPerSecond·(seconds + window), instead of maxAttempts·N.
func TestRetryStormStaysWithinBudget(t *testing.T) {
	var cs []*counter
	var addrs []string
	for range 4 {
		c := newCounter(t, "down", status(503, ""))
		cs = append(cs, c)
		addrs = append(addrs, c.addr())
	}
	tr := retryTransport(t, retry.Config{MaxAttempts: 5, Backoff: fastBackoff()}, addrs...)
	const n, workers = 2000, 8
	start := time.Now()
	var wg sync.WaitGroup
	var next atomic.Int64
	for range workers {
		wg.Go(func() {
			for next.Add(1) <= n {
				req, _ := http.NewRequest("GET", "http://svc/", nil)
				resp, err := tr.RoundTrip(req)
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	var seen int64
	for _, c := range cs {
		seen += c.n.Load()
	}
	bound := 1.2*n + float64(retry.DefaultBudgetMinPerSecond)*(secs+retry.DefaultBudgetWindow.Seconds())
	b := tr.RetryBudget("svc")
	t.Logf("%d requests in %.2fs: servers saw %d attempts (bound %.0f; without a budget %d); budget granted %d, refused %d",
		n, secs, seen, bound, 5*n, b.Withdrawn(), b.Refused())
	if float64(seen) > bound {
		t.Fatalf("servers saw %d attempts, above the bound %.0f", seen, bound)
	}
	if seen <= n || b.Refused() == 0 {
		t.Fatalf("saw %d attempts, refused %d: the budget was not exercised", seen, b.Refused())
	}
}
