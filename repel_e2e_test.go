package lodestar_test

import (
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

// Issue 17: failures repel traffic by default. Six real backends on
// 127.0.0.1, one of them refusing connections (a closed listener's address,
// its port kept for the "comes back" phase), no health sections, 16
// goroutines sending as fast as they can.

// attemptCounter is the Transport's base: it counts each attempt by endpoint
// address, and logs when the attempts on one address (the dead one) began.
type attemptCounter struct {
	rt     http.RoundTripper
	counts map[string]*atomic.Int64 // fixed before use: read-only
	watch  string
	mu     sync.Mutex
	times  []time.Time // attempts on watch
}

func newAttemptCounter(addrs []string, watch string) *attemptCounter {
	base := http.DefaultTransport.(*http.Transport).Clone()
	base.MaxIdleConnsPerHost = 64 // 16 goroutines: keep connections, not ports in TIME_WAIT
	c := &attemptCounter{rt: base, counts: map[string]*atomic.Int64{}, watch: watch}
	for _, a := range addrs {
		c.counts[a] = new(atomic.Int64)
	}
	return c
}

func (c *attemptCounter) RoundTrip(req *http.Request) (*http.Response, error) {
	c.counts[req.URL.Host].Add(1)
	if req.URL.Host == c.watch {
		c.mu.Lock()
		c.times = append(c.times, time.Now())
		c.mu.Unlock()
	}
	return c.rt.RoundTrip(req)
}

func (c *attemptCounter) snapshot() map[string]int64 {
	m := make(map[string]int64, len(c.counts))
	for a, n := range c.counts {
		m[a] = n.Load()
	}
	return m
}

// share returns addr's share of the attempts between snapshots a and b.
func share(a, b map[string]int64, addr string) (float64, int64) {
	var total int64
	for k := range b {
		total += b[k] - a[k]
	}
	if total == 0 {
		return 0, 0
	}
	return float64(b[addr]-a[addr]) / float64(total), total
}

// relisten starts a backend on addr again (the "comes back" phase), after
// release frees the port.
func relisten(t *testing.T, addr string, release func(), h http.Handler) {
	t.Helper()
	release()
	var l net.Listener
	var err error
	for range 50 { // the port was ours; only a stray dial's TIME_WAIT could hold it a moment
		if l, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("re-listening on the dead endpoint's port %s: %v", addr, err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
}

// ejections records the dead endpoint's ejected periods from the engine's
// events.
type ejections struct {
	mu      sync.Mutex
	periods [][2]time.Time // end zero while it lasts
	why     []string
}

func (ej *ejections) watch(t *testing.T, eng *balancer.Engine, addr string) {
	cancel := eng.Subscribe(func(ev balancer.Event) {
		if ev.Kind != balancer.ConditionChanged || ev.Address != addr {
			return
		}
		was, is := ev.Old&balancer.Ejected != 0, ev.New&balancer.Ejected != 0
		ej.mu.Lock()
		defer ej.mu.Unlock()
		switch {
		case is && !was:
			ej.periods = append(ej.periods, [2]time.Time{time.Now()})
			ej.why = append(ej.why, ev.Why)
		case was && !is && len(ej.periods) > 0:
			ej.periods[len(ej.periods)-1][1] = time.Now()
		}
	})
	t.Cleanup(cancel)
}

func (ej *ejections) get() ([][2]time.Time, []string) {
	ej.mu.Lock()
	defer ej.mu.Unlock()
	return append([][2]time.Time(nil), ej.periods...), append([]string(nil), ej.why...)
}

// load runs 16 goroutines sending GET http://svc/ through tr, each with
// keys of its own (for the hashing algorithms), until stop closes.
func load(tr *lodestar.Transport, stop <-chan struct{}, wg *sync.WaitGroup) {
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				req, _ := http.NewRequest("GET", "http://svc/", nil)
				req.Header.Set("X-Key", fmt.Sprintf("user-%d-%d", g, i))
				resp, err := c.Do(req)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}
}

// builtins are the registered built-in algorithms.
var builtins = []string{"round_robin", "weighted_round_robin", "random", "weighted_random",
	"least_request", "peak_ewma", "ring_hash", "maglev", "bounded_load"}

// The dead endpoint's share of attempts after the first second is at most 2%
// for every algorithm, with default settings (today least_request sent it
// 34%, round robin 18%): failure accrual ejects it after 5 refused
// connections, and it gets no attempt while ejected. When it comes back up
// (the port listens again), it is back once its ejection (5s) ends and
// regains its share. Subtests run in parallel; shares are counted by a base
// RoundTripper, ejections come from the engine's events.
func TestE2EDeadEndpointRepelledByDefault(t *testing.T) {
	for _, alg := range builtins {
		t.Run(alg, func(t *testing.T) {
			t.Parallel()
			backends := make([]*httptest.Server, 5)
			addrs := make([]string, 0, 6)
			for i := range backends {
				backends[i] = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					io.WriteString(w, "ok")
				}))
				t.Cleanup(backends[i].Close)
				addrs = append(addrs, backends[i].Listener.Addr().String())
			}
			dead, release := reservedAddr(t)
			addrs = append(addrs, dead)
			eps := make([]resolver.Endpoint, len(addrs))
			for i, a := range addrs {
				eps[i] = resolver.Endpoint{Address: a}
			}
			counter := newAttemptCounter(addrs, dead)
			cfg, err := balancer.ParseConfig([]byte(fmt.Sprintf(`{"algorithm": %q, "affinity": {"header": "X-Key"}}`, alg)))
			if err != nil {
				t.Fatal(err)
			}
			feed, err := resolver.NewStatic(eps...)
			if err != nil {
				t.Fatal(err)
			}
			tr, err := lodestar.NewTransport(lodestar.Options{Base: counter,
				Services: map[string]lodestar.Service{"svc": {Feed: feed, Config: cfg}}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tr.Close() })
			var ej ejections
			ej.watch(t, tr.Engine("svc"), dead)

			stop := make(chan struct{})
			var wg sync.WaitGroup
			start := time.Now()
			load(tr, stop, &wg)
			defer func() { close(stop); wg.Wait() }()

			time.Sleep(time.Second) // the first second: load, not synchronisation
			s1 := counter.snapshot()
			time.Sleep(1500 * time.Millisecond)
			s2 := counter.snapshot()
			sh, total := share(s1, s2, dead)
			t.Logf("dead endpoint: %.3f%% of %d attempts from 1s to 2.5s", sh*100, total)
			if total < 100 {
				t.Fatalf("only %d attempts in 1.5s: the load did not run", total)
			}
			if sh > 0.02 {
				t.Fatalf("the dead endpoint got %.2f%% of %d attempts after the first second, want ≤ 2%%", sh*100, total)
			}
			periods, why := ej.get()
			switch {
			case len(periods) > 0:
				if !strings.Contains(why[0], "consecutive_connection_failures") {
					t.Fatalf("ejected for %q, want consecutive_connection_failures", why[0])
				}
				// Within the measured window: where the failure scores
				// keep the endpoint rarely tried (peak_ewma), its 5
				// failures in a row can take over a second on a loaded
				// machine; the share above is the requirement.
				if d := periods[0][0].Sub(start); d > 2500*time.Millisecond {
					t.Errorf("first ejection %v after the start, want within the measured 2.5s", d)
				}
			case s2[dead] >= 5:
				t.Fatalf("%d attempts on the dead endpoint, and it was never ejected", s2[dead])
			default:
				// The failure scores kept it under accrual's 5 failures
				// (peak_ewma can): nothing to eject.
				t.Logf("not ejected: the scores kept it to %d attempts", s2[dead])
			}

			// It comes back up.
			var served atomic.Int64
			relisten(t, dead, release, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				served.Add(1)
				io.WriteString(w, "back")
			}))
			ep := tr.Engine("svc").Endpoint(dead)
			deadline := time.Now().Add(25 * time.Second)
			for ep.Conditions()&balancer.Ejected != 0 || served.Load() == 0 {
				if time.Now().After(deadline) {
					t.Fatalf("25s after it came back, the endpoint is still %v, served %d", ep.Conditions(), served.Load())
				}
				time.Sleep(20 * time.Millisecond) // polling for an eventually-true state
			}
			periods, _ = ej.get()
			s3 := counter.snapshot()
			time.Sleep(1500 * time.Millisecond)
			s4 := counter.snapshot()
			sh, total = share(s3, s4, dead)
			t.Logf("back: %.1f%% of %d attempts (fair share 16.7%%)", sh*100, total)
			if sh < 0.06 {
				t.Fatalf("back up, the endpoint got %.2f%% of %d attempts, want its share back (≥ 6%%; fair 16.7%%)", sh*100, total)
			}

			// No attempt while ejected: each attempt on the dead endpoint
			// started outside every ejected period, but for picks made just
			// before an ejection took effect (at most one per goroutine,
			// within a grace of 100ms: a refused dial takes microseconds),
			// and picks made just after it ended, before the event that says
			// so was stamped (within the same grace).
			const grace = 100 * time.Millisecond
			counter.mu.Lock()
			times := append([]time.Time(nil), counter.times...)
			counter.mu.Unlock()
			for i, p := range periods {
				end := p[1]
				if end.IsZero() {
					end = time.Now()
				}
				early, inside := 0, 0
				for _, at := range times {
					switch {
					case at.Before(p[0]) || !at.Before(end):
					case at.Before(p[0].Add(grace)), !p[1].IsZero() && !at.Before(end.Add(-grace)):
						early++
					default:
						inside++
					}
				}
				if inside > 0 || early > 16 {
					t.Fatalf("ejection %d (%v long): %d attempts on the endpoint while ejected, %d in its first or last %v (at most 16)", i, end.Sub(p[0]), inside, early, grace)
				}
			}
		})
	}
}

// Failure scores alone (failure accrual turned off) keep the dead endpoint
// at ≤ 3% for the algorithms that score load, through the HTTP door (it got
// 34% from least_request before). The failure weight lets a dead endpoint be
// tried a few times a second (about its peers' requests in flight per decay
// time, see balancer.FailureWeightDecay), whatever the request rate, so its
// share shrinks as the rate grows: the bound is set for the ~700 requests a
// second this test manages under -race on a shared 2-core machine, where it
// measured 0.4-0.8%.
func TestE2EScoresRepelDeadEndpoint(t *testing.T) {
	for _, alg := range []string{"least_request", `{"least_request": {"activeRequestBias": 2}}`, "peak_ewma", "bounded_load"} {
		t.Run(alg, func(t *testing.T) {
			t.Parallel()
			addrs := make([]string, 0, 6)
			for range 5 {
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
				t.Cleanup(srv.Close)
				addrs = append(addrs, srv.Listener.Addr().String())
			}
			dead, _ := reservedAddr(t)
			addrs = append(addrs, dead)
			eps := make([]resolver.Endpoint, len(addrs))
			for i, a := range addrs {
				// Weights differ for the weighted least_request row.
				eps[i] = resolver.Endpoint{Address: a, Weight: uint32(1 + i%2*boolInt(strings.HasPrefix(alg, "{")))}
			}
			js := alg
			if !strings.HasPrefix(js, "{") {
				js = fmt.Sprintf("%q", alg)
			}
			cfg, err := balancer.ParseConfig([]byte(fmt.Sprintf(`{"algorithm": %s, "failureAccrual": false}`, js)))
			if err != nil {
				t.Fatal(err)
			}
			counter := newAttemptCounter(addrs, "")
			feed, err := resolver.NewStatic(eps...)
			if err != nil {
				t.Fatal(err)
			}
			tr, err := lodestar.NewTransport(lodestar.Options{Base: counter,
				Services: map[string]lodestar.Service{"svc": {Feed: feed, Config: cfg}}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tr.Close() })
			stop := make(chan struct{})
			var wg sync.WaitGroup
			load(tr, stop, &wg)
			defer func() { close(stop); wg.Wait() }()
			time.Sleep(time.Second) // the first second: load, not synchronisation
			s1 := counter.snapshot()
			time.Sleep(1500 * time.Millisecond)
			s2 := counter.snapshot()
			sh, total := share(s1, s2, dead)
			t.Logf("dead endpoint: %.3f%% of %d attempts", sh*100, total)
			if total < 100 {
				t.Fatalf("only %d attempts in 1.5s: the load did not run", total)
			}
			if sh > 0.03 {
				t.Fatalf("with scores only, the dead endpoint got %.2f%% of %d attempts, want ≤ 3%%", sh*100, total)
			}
			if c := tr.Engine("svc").Endpoint(dead).Conditions(); c != 0 {
				t.Fatalf("failure accrual is off, yet the endpoint is %v", c)
			}
		})
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// One backend answers 503 at once; the others take 1ms. With default
// settings (ejection on 5xx is off), least_request sends it no more than
// round robin does: a 503 counts against the endpoint's score even though it
// does not eject it. Both run side by side.
func TestE2EFast503NoMagnet(t *testing.T) {
	shares := map[string]float64{}
	var mu sync.Mutex
	t.Run("group", func(t *testing.T) {
		for _, alg := range []string{"round_robin", "least_request"} {
			t.Run(alg, func(t *testing.T) {
				t.Parallel()
				addrs := make([]string, 0, 6)
				for i := range 6 {
					h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
						time.Sleep(time.Millisecond) // service time
						io.WriteString(w, "ok")
					})
					if i == 0 {
						h = func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) }
					}
					srv := httptest.NewServer(h)
					t.Cleanup(srv.Close)
					addrs = append(addrs, srv.Listener.Addr().String())
				}
				eps := make([]resolver.Endpoint, len(addrs))
				for i, a := range addrs {
					eps[i] = resolver.Endpoint{Address: a}
				}
				cfg, err := balancer.ParseConfig([]byte(fmt.Sprintf(`{"algorithm": %q}`, alg)))
				if err != nil {
					t.Fatal(err)
				}
				counter := newAttemptCounter(addrs, "")
				feed, err := resolver.NewStatic(eps...)
				if err != nil {
					t.Fatal(err)
				}
				tr, err := lodestar.NewTransport(lodestar.Options{Base: counter,
					Services: map[string]lodestar.Service{"svc": {Feed: feed, Config: cfg}}})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { tr.Close() })
				stop := make(chan struct{})
				var wg sync.WaitGroup
				load(tr, stop, &wg)
				time.Sleep(500 * time.Millisecond) // warm-up: load, not synchronisation
				s1 := counter.snapshot()
				time.Sleep(1500 * time.Millisecond)
				s2 := counter.snapshot()
				close(stop)
				wg.Wait()
				sh, total := share(s1, s2, addrs[0])
				t.Logf("%s: the 503 endpoint got %.2f%% of %d attempts", alg, sh*100, total)
				if total < 100 {
					t.Fatalf("only %d attempts: the load did not run", total)
				}
				if c := tr.Engine("svc").Endpoint(addrs[0]).Conditions(); c != 0 {
					t.Fatalf("the 503 endpoint is %v: 5xx must not eject by default", c)
				}
				mu.Lock()
				shares[alg] = sh
				mu.Unlock()
			})
		}
	})
	if t.Failed() {
		return
	}
	if shares["least_request"] > shares["round_robin"] {
		t.Fatalf("least_request gave the fast-503 endpoint %.2f%%, more than round robin's %.2f%%",
			shares["least_request"]*100, shares["round_robin"]*100)
	}
}
