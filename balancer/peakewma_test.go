package balancer

import (
	"container/heap"
	"math"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar/balancer/outcome"
)

type completion struct {
	at  time.Time
	ep  *Endpoint
	lat time.Duration
}

type completions []completion

func (c completions) Len() int           { return len(c) }
func (c completions) Less(i, j int) bool { return c[i].at.Before(c[j].at) }
func (c completions) Swap(i, j int)      { c[i], c[j] = c[j], c[i] }
func (c *completions) Push(x any)        { *c = append(*c, x.(completion)) }
func (c *completions) Pop() any {
	old := *c
	x := old[len(old)-1]
	*c = old[:len(old)-1]
	return x
}

// A discrete-event simulation on the injected clock: requests arrive every
// 100µs; endpoint 0 answers in 10ms, the nine others in 1ms. After a warm-up,
// peak EWMA must send endpoint 0 under 2% of the traffic (round robin would
// send it 10%).
func TestPeakEWMAAvoidsSlowEndpoint(t *testing.T) {
	const n, warmup, measured, seed = 10, 20_000, 50_000, 11
	clk := newFakeClock()
	e := newTestEngine(t, &PeakEWMA{}, clk, seed, resolverEndpoints(n, nil))
	slow := e.Endpoint(addr(0))
	var pending completions
	slowPicks, warmupSlow := 0, 0
	now := clk.Now()
	for i := range warmup + measured {
		now = now.Add(100 * time.Microsecond)
		for len(pending) > 0 && !pending[0].at.After(now) {
			c := heap.Pop(&pending).(completion)
			clk.Advance(c.at.Sub(clk.Now()))
			e.Done(c.ep, outcome.Outcome{Class: outcome.Success, Latency: c.lat})
		}
		clk.Advance(now.Sub(clk.Now()))
		ep, err := e.Pick(PickInfo{})
		if err != nil {
			t.Fatal(err)
		}
		lat := time.Millisecond
		if ep == slow {
			lat = 10 * time.Millisecond
			if i >= warmup {
				slowPicks++
			} else {
				warmupSlow++
			}
		}
		heap.Push(&pending, completion{now.Add(lat), ep, lat})
	}
	if warmupSlow == 0 {
		t.Fatal("the slow endpoint was never tried during warm-up")
	}
	if share := float64(slowPicks) / measured; share >= 0.02 {
		t.Fatalf("seed %d: slow endpoint got %.2f%% of requests after warm-up, want < 2%%", seed, 100*share)
	} else {
		t.Logf("seed %d: slow endpoint got %d requests in warm-up, %.3f%% after", seed, warmupSlow, 100*share)
	}
}

func TestPeakEWMAState(t *testing.T) {
	clk := newFakeClock()
	alg := &PeakEWMA{} // decay 10s, default RTT 30ms, penalty 1s
	e := newTestEngine(t, alg, clk, 1, resolverEndpoints(2, nil))
	ep := e.Endpoint(addr(0))
	p := e.snap.Load().picker.(*ewmaPicker)
	load := func() float64 { return p.load(ep, clk.Now().UnixNano()) }
	near := func(what string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > want*0.01 {
			t.Fatalf("%s: %.0fns, want %.0fns ±1%%", what, got, want)
		}
	}
	near("new endpoint", load(), float64(30*time.Millisecond))

	// A peak replaces the average at once.
	ep.Acquire()
	e.Done(ep, outcome.Outcome{Class: outcome.Success, Latency: 100 * time.Millisecond})
	near("after a 100ms peak", load(), float64(100*time.Millisecond))

	// Idle for one decay time: 1/e of it.
	clk.Advance(10 * time.Second)
	near("idle 10s", load(), float64(100*time.Millisecond)/math.E)

	// A lower latency blends with weight 1-e^(-Δt/τ): Δt = 10s here.
	ep.Acquire()
	e.Done(ep, outcome.Outcome{Class: outcome.Success, Latency: 10 * time.Millisecond})
	w := 1 / math.E
	near("blend", load(), float64(100*time.Millisecond)*w+float64(10*time.Millisecond)*(1-w))

	// In-flight requests multiply the cost.
	before := load()
	ep.Acquire()
	ep.Acquire()
	near("2 in flight", load(), 3*before)
	e.Done(ep, outcome.Outcome{Class: outcome.Canceled, Latency: time.Hour}) // ignored
	e.Done(ep, outcome.Outcome{Class: outcome.NotSent, Latency: time.Hour})  // ignored
	near("canceled and not sent ignored", load(), before)

	// A fast failure adds the penalty (1s) times the failure weight (1),
	// and leaves the average as it was; the penalty fades with the weight.
	ep.Acquire()
	e.Done(ep, outcome.Outcome{Class: outcome.ConnectError, Latency: time.Microsecond})
	near("failure", load(), before+float64(time.Second))

	// The state lives on the endpoint: a rebuild keeps it.
	e.Update(resolverEndpoints(3, nil))
	p = e.snap.Load().picker.(*ewmaPicker)
	near("after rebuild", load(), before+float64(time.Second))

	// The failure weight's time constant is 1s, the average's 10s.
	clk.Advance(FailureWeightDecay)
	near("1s later", load(), before*expNeg(0.1)+float64(time.Second)/math.E)
}

// A pick reads no clock (the brief allows one).
func TestPeakEWMAPickReadsNoClock(t *testing.T) {
	clk := newFakeClock()
	reads := 0
	e, err := NewEngine(Config{Algorithm: &PeakEWMA{}}, Options{Rand: seededRand(1), Now: func() time.Time { reads++; return clk.Now() }})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	e.Update(resolverEndpoints(10, nil))
	reads = 0
	for range 100 {
		if _, err := e.Pick(PickInfo{}); err != nil {
			t.Fatal(err)
		}
	}
	if e.Endpoints()[0].InFlight()+e.Endpoints()[1].InFlight() == 0 {
		t.Fatal("picks were not counted")
	}
	if reads != 0 {
		t.Fatalf("100 picks read the clock %d times", reads)
	}
}

func TestExpNeg(t *testing.T) {
	for x := 0.0; x < 745; x += 0.0137 {
		got, want := expNeg(x), math.Exp(-x)
		if want > 1e-300 && math.Abs(got-want) > 1e-7*want {
			t.Fatalf("expNeg(%v) = %v, want %v", x, got, want)
		}
	}
	if expNeg(1e9) != 0 || expNeg(math.NaN()) != 0 || expNeg(0) != 1 {
		t.Fatal("expNeg edge cases")
	}
}

// An outcome that carries its time is observed at that time, without a clock read.
func TestPeakEWMAOutcomeAt(t *testing.T) {
	clk := newFakeClock()
	reads := 0
	e, err := NewEngine(Config{Algorithm: &PeakEWMA{}}, Options{Rand: seededRand(1), Now: func() time.Time { reads++; return clk.Now() }})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	e.Update(resolverEndpoints(1, nil))
	ep, _ := e.Pick(PickInfo{})
	e.Done(ep, outcome.Outcome{Latency: 50 * time.Millisecond, At: clk.Now()})
	ep, _ = e.Pick(PickInfo{})
	reads = 0
	e.Done(ep, outcome.Outcome{Latency: 10 * time.Millisecond, At: clk.Now().Add(10 * time.Second)})
	if reads != 0 {
		t.Fatalf("Done read the clock %d times with Outcome.At set", reads)
	}
	cost, _ := decodeEWMA(ep.ewma.Load(), 0)
	w := 1 / math.E
	if want := 50e6*w + 10e6*(1-w); math.Abs(cost-want) > want*1e-3 {
		t.Fatalf("cost %.0f, want %.0f: the 10s from At were not used", cost, want)
	}
}

// The clock-free comparison in Pick agrees with comparing fully decayed loads.
func TestPeakEWMAPickMatchesDecayedLoads(t *testing.T) {
	clk := newFakeClock()
	e := newTestEngine(t, &PeakEWMA{}, clk, 9, resolverEndpoints(2, nil))
	a, b := e.Endpoint(addr(0)), e.Endpoint(addr(1))
	for _, tc := range []struct {
		latA, latB time.Duration
		gap        time.Duration // b's outcome comes this long after a's
		idle       time.Duration
		heldA      int
	}{
		{10 * time.Millisecond, 10 * time.Millisecond, 5 * time.Second, 0, 0},
		{30 * time.Millisecond, 10 * time.Millisecond, 0, time.Minute, 0},
		{10 * time.Millisecond, 25 * time.Millisecond, 8 * time.Second, 3 * time.Second, 1},
		{40 * time.Millisecond, 15 * time.Millisecond, -9 * time.Second, 0, 0},
	} {
		ta := clk.Now()
		tb := ta.Add(tc.gap)
		a.ewma.Store(0)
		b.ewma.Store(0)
		a.Acquire()
		e.Done(a, outcome.Outcome{Latency: tc.latA, At: ta})
		b.Acquire()
		e.Done(b, outcome.Outcome{Latency: tc.latB, At: tb})
		for range tc.heldA {
			a.Acquire()
		}
		now := max(ta.UnixNano(), tb.UnixNano()) + int64(tc.idle)
		p := e.snap.Load().picker.(*ewmaPicker)
		want := a
		if p.load(b, now) < p.load(a, now) {
			want = b
		}
		got, _ := p.Pick(PickInfo{})
		if got != want {
			t.Errorf("%+v: picked %s, decayed loads say %s (a %.0f, b %.0f)", tc, got.Address(), want.Address(), p.load(a, now), p.load(b, now))
		}
		for range tc.heldA {
			a.inflight.Add(-1)
		}
	}
}
