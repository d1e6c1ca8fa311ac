package balancer

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/health"
)

// The failure weight: +1 per failure, decaying with a 1s time constant,
// halved by a success, cleared under 1/64; read against the engine's clock.
func TestFailureWeightArithmetic(t *testing.T) {
	clk := newFakeClock()
	e := newTestEngine(t, &LeastRequest{}, clk, 1, resolverEndpoints(2, nil))
	ep := e.Endpoint(addr(0))
	done := func(c outcome.Class) {
		ep.Acquire()
		e.Done(ep, outcome.Outcome{Class: c})
	}
	near := func(what string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-3*max(1, want) {
			t.Fatalf("%s: weight %.5f, want %.5f", what, got, want)
		}
	}
	done(outcome.Success)
	if ep.penalty.Load() != 0 {
		t.Fatal("a success left a failure weight")
	}
	done(outcome.ConnectError)
	near("one failure", ep.FailureWeight(clk.Now()), 1)
	done(outcome.GatewayError)
	near("two failures", ep.FailureWeight(clk.Now()), 2)
	clk.Advance(FailureWeightDecay)
	near("after the decay time", ep.FailureWeight(clk.Now()), 2/math.E)
	done(outcome.Canceled)
	done(outcome.NotSent)
	near("canceled and not sent change nothing", ep.FailureWeight(clk.Now()), 2/math.E)
	done(outcome.ClientError) // an answer: a success for health
	near("halved by an answer", ep.FailureWeight(clk.Now()), 1/math.E)
	for range 5 {
		done(outcome.Success)
	}
	// 0.368/32 = 0.0115 < 1/64: cleared.
	if ep.penalty.Load() != 0 {
		t.Fatalf("weight %.4f left after 6 successes, want cleared", ep.FailureWeight(clk.Now()))
	}
	// Every failure class adds to it.
	for _, c := range []outcome.Class{outcome.Overloaded, outcome.ServerError, outcome.GatewayError, outcome.Timeout, outcome.LocalError, outcome.ConnectError} {
		before := ep.FailureWeight(clk.Now())
		done(c)
		near(c.String(), ep.FailureWeight(clk.Now()), before+1)
	}
}

// simulate runs picks through e against fleet eps, one of which (bad) fails
// every request at once with class bad; the others keep each request in
// flight for `hold` later picks (a fleet under steady concurrency), and the
// clock advances 100µs per pick. It returns bad's share of the picks after
// the first warm picks.
func simulate(t *testing.T, e *Engine, clk *fakeClock, bad *Endpoint, class outcome.Class, hold, picks, warm int) float64 {
	t.Helper()
	var queue []*Endpoint
	hits, counted := 0, 0
	for i := range picks {
		clk.Advance(100 * time.Microsecond)
		ep, err := e.Pick(PickInfo{})
		if err != nil {
			t.Fatal(err)
		}
		if i >= warm {
			counted++
			if ep == bad {
				hits++
			}
		}
		if ep == bad {
			e.Done(ep, outcome.Outcome{Class: class, Latency: 50 * time.Microsecond})
			continue
		}
		queue = append(queue, ep)
		if len(queue) > hold {
			e.Done(queue[0], outcome.Outcome{Class: outcome.Success, Latency: time.Millisecond})
			queue = queue[1:]
		}
	}
	for _, ep := range queue {
		e.Done(ep, outcome.Outcome{Class: outcome.Success})
	}
	return float64(hits) / float64(counted)
}

// The least-loaded black hole, closed by scores alone (failure accrual off):
// an endpoint that fails at once gets a small share from every algorithm that
// scores load, where it used to win every comparison it was sampled in
// (about a third of all picks with 6 endpoints). Seeded (seed 7), 20,000
// picks; the bound, 2%, is an eighth of a fair share.
func TestScoresRepelFastFailures(t *testing.T) {
	for _, tc := range []struct {
		name string
		alg  func() Algorithm
		w    func(int) uint32
	}{
		{"least_request", func() Algorithm { return &LeastRequest{} }, nil},
		{"least_request/choice3", func() Algorithm { return &LeastRequest{ChoiceCount: 3} }, nil},
		{"least_request/weighted", func() Algorithm { return &LeastRequest{} }, func(i int) uint32 { return uint32(i%2 + 1) }},
		{"peak_ewma", func() Algorithm { return &PeakEWMA{} }, nil},
		{"bounded_load", func() Algorithm { return &BoundedLoad{} }, nil},
	} {
		for _, class := range []outcome.Class{outcome.ConnectError, outcome.GatewayError} {
			t.Run(tc.name+"/"+class.String(), func(t *testing.T) {
				clk := newFakeClock()
				e, err := NewEngine(Config{Algorithm: tc.alg(), FailureAccrual: new(false)}, Options{Now: clk.Now, Rand: seededRand(7)})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { e.Close() })
				e.Update(resolverEndpoints(6, tc.w))
				bad := e.Endpoint(addr(0))
				share := simulate(t, e, clk, bad, class, 12, 20_000, 2_000)
				if share > 0.02 {
					t.Fatalf("the endpoint failing with %v at once got %.2f%% of picks, want ≤ 2%% (fair share 16.7%%)", class, share*100)
				}
				if bad.Conditions() != 0 {
					t.Fatalf("failure accrual is off, yet the endpoint is %v", bad.Conditions())
				}
				t.Logf("%.3f%% of picks", share*100)
			})
		}
	}
}

// A recovered endpoint's failure weight is gone within seconds, with no
// traffic needed: it competes again as an equal.
func TestFailureWeightFades(t *testing.T) {
	clk := newFakeClock()
	e, err := NewEngine(Config{Algorithm: &LeastRequest{}, FailureAccrual: new(false)}, Options{Now: clk.Now, Rand: seededRand(3)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	e.Update(resolverEndpoints(2, nil))
	a, b := e.Endpoint(addr(0)), e.Endpoint(addr(1))
	for range 20 {
		a.Acquire()
		e.Done(a, outcome.Outcome{Class: outcome.ConnectError})
	}
	b.Acquire() // b: 1 in flight; a: none, but 20 failures
	if ep, _ := e.Pick(PickInfo{}); ep != b {
		t.Fatalf("picked %s, want b: a's 20 failures outweigh b's one request", ep.Address())
	}
	e.Done(b, outcome.Outcome{Class: outcome.Success})
	clk.Advance(5 * FailureWeightDecay) // 20·e^-5 = 0.13 < b's 1 (+1 picked above)
	if ep, _ := e.Pick(PickInfo{}); ep != a {
		t.Fatalf("picked %s, want a: its weight has faded to %.2f", ep.Address(), a.FailureWeight(clk.Now()))
	}
}

// Failure accrual is on by default: 5 connection failures in a row eject an
// endpoint (its reason says so), for 5s; HTTP 5xx-like gateway errors and
// timeouts do not eject; false turns it off, in Go and in JSON; an
// outlierDetection section replaces it.
func TestFailureAccrualDefault(t *testing.T) {
	run := func(t *testing.T, cfg Config, class outcome.Class, n int) (*Engine, *Endpoint, []Event) {
		t.Helper()
		clk := newFakeClock()
		e, err := NewEngine(cfg, Options{Now: clk.Now, Rand: seededRand(1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		var evs []Event
		cancel := e.Subscribe(func(ev Event) { evs = append(evs, ev) })
		t.Cleanup(cancel)
		e.Update(resolverEndpoints(6, nil))
		ep := e.Endpoint(addr(0))
		for range n {
			ep.Acquire()
			e.Done(ep, outcome.Outcome{Class: class})
		}
		return e, ep, evs
	}
	for _, class := range []outcome.Class{outcome.ConnectError, outcome.LocalError} {
		_, ep, _ := run(t, Config{}, class, 4)
		if ep.Conditions() != 0 {
			t.Fatalf("4 × %v: %v, want eligible", class, ep.Conditions())
		}
		ep.Acquire()
		e, ep, evs := run(t, Config{}, class, 5)
		if ep.Conditions() != Ejected {
			t.Fatalf("5 × %v: %v, want ejected", class, ep.Conditions())
		}
		last := evs[len(evs)-1]
		if !strings.Contains(last.Why, string(health.ReasonConsecutiveConnectionFailures)) || !strings.Contains(last.Why, "5s") {
			t.Fatalf("ejection event says %q, want the reason and 5s", last.Why)
		}
		if len(e.Eligible()) != 5 {
			t.Fatalf("%d eligible, want 5", len(e.Eligible()))
		}
	}
	for _, class := range []outcome.Class{outcome.GatewayError, outcome.ServerError, outcome.Overloaded, outcome.Timeout} {
		if _, ep, _ := run(t, Config{}, class, 50); ep.Conditions() != 0 {
			t.Fatalf("50 × %v ejected by default (%v): only connection failures should", class, ep.Conditions())
		}
	}
	off, err := ParseConfig([]byte(`{"failureAccrual": false}`))
	if err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]Config{"Go": {FailureAccrual: new(false)}, "JSON": off} {
		if _, ep, _ := run(t, cfg, outcome.ConnectError, 50); ep.Conditions() != 0 {
			t.Fatalf("turned off in %s, yet 50 connection failures gave %v", name, ep.Conditions())
		}
	}
	// An explicit section replaces the default: here one that only counts
	// gateway errors.
	js := `{"outlierDetection": {"consecutiveFailures": 0, "consecutiveGatewayFailures": 3}}`
	sec, err := ParseConfig([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	if _, ep, _ := run(t, sec, outcome.ConnectError, 50); ep.Conditions() != 0 {
		t.Fatalf("%s: connection failures ejected (%v): the section replaces the default", js, ep.Conditions())
	}
	if _, ep, _ := run(t, sec, outcome.GatewayError, 3); ep.Conditions() != Ejected {
		t.Fatalf("%s: 3 gateway errors: %v, want ejected", js, ep.Conditions())
	}
}

// At most half the endpoints are ejected by default, however many fail.
func TestFailureAccrualAtMostHalf(t *testing.T) {
	clk := newFakeClock()
	e := newTestEngine(t, &RoundRobin{}, clk, 1, resolverEndpoints(6, nil))
	for _, ep := range e.Endpoints() {
		for range 10 {
			ep.Acquire()
			e.Done(ep, outcome.Outcome{Class: outcome.ConnectError})
		}
	}
	ejected := 0
	for _, ep := range e.Endpoints() {
		if ep.Conditions()&Ejected != 0 {
			ejected++
		}
	}
	if ejected != 3 {
		t.Fatalf("%d of 6 ejected, want 3 (50%%)", ejected)
	}
}

// The default accrual runs no goroutine until it ejects; its ticker ends the
// ejection when the clock says so, and stops once the endpoint is back and
// its multiplier has decayed. A returning endpoint's peak EWMA is forgotten.
func TestFailureAccrualTickerOnlyWhileNeeded(t *testing.T) {
	clk := newFakeClock()
	e := newTestEngine(t, &PeakEWMA{}, clk, 1, resolverEndpoints(4, nil))
	running := func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		return e.prot.stop != nil
	}
	if running() {
		t.Fatal("a ticker runs before any ejection")
	}
	ep := e.Endpoint(addr(0))
	ep.Acquire()
	e.Done(ep, outcome.Outcome{Class: outcome.Success, Latency: 200 * time.Millisecond}) // slow before it died
	for range 5 {
		ep.Acquire()
		e.Done(ep, outcome.Outcome{Class: outcome.ConnectError})
	}
	if ep.Conditions() != Ejected || !running() {
		t.Fatalf("after 5 connection failures: %v, ticker running %v; want ejected and running", ep.Conditions(), running())
	}
	if ep.ewma.Load() == 0 {
		t.Fatal("no peak EWMA state before the endpoint returns")
	}
	clk.Advance(health.DefaultAccrualBaseEjectionTime)
	deadline := time.Now().Add(10 * time.Second)
	for ep.Conditions() != 0 || running() {
		if time.Now().After(deadline) {
			t.Fatalf("10s after the ejection time: %v, ticker running %v; want back, and no ticker", ep.Conditions(), running())
		}
		time.Sleep(10 * time.Millisecond) // polling for an eventually-true state
	}
	if ep.ewma.Load() != 0 {
		t.Fatal("the returning endpoint kept the latency it had before")
	}
}

// Picks over endpoints with failure weights allocate nothing, and neither
// does Done with failures (accrual off, so nothing is ejected and rebuilt).
func TestPenalizedPickDoneAllocatesNothing(t *testing.T) {
	for _, alg := range []Algorithm{&LeastRequest{}, &LeastRequest{ChoiceCount: 3}, &LeastRequest{ActiveRequestBias: ptr(1.5)}, &BoundedLoad{}, &PeakEWMA{}} {
		clk := newFakeClock()
		e, err := NewEngine(Config{Algorithm: alg, FailureAccrual: new(false)}, Options{Now: clk.Now, Rand: seededRand(1)})
		if err != nil {
			t.Fatal(err)
		}
		e.Update(resolverEndpoints(10, func(i int) uint32 { return uint32(i%3 + 1) }))
		i := 0
		allocs := testing.AllocsPerRun(1000, func() {
			ep, err := e.Pick(PickInfo{})
			if err != nil {
				t.Fatal(err)
			}
			c := outcome.Success
			if i++; i%2 == 0 {
				c = outcome.ConnectError
			}
			e.Done(ep, outcome.Outcome{Class: c, Latency: time.Millisecond})
		})
		e.Close()
		if allocs != 0 {
			t.Errorf("%s: %.1f allocations per pick and Done with failure weights", alg.Name(), allocs)
		}
	}
}
