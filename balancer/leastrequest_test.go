package balancer

import (
	"math"
	"testing"

	"github.com/lodestar-go/lodestar/balancer/outcome"
)

// With two endpoints both are always sampled, so picks are deterministic.
func TestLeastRequestPicksFewestInFlight(t *testing.T) {
	e := newTestEngine(t, &LeastRequest{}, newFakeClock(), 1, resolverEndpoints(2, nil))
	a, b := e.Endpoint(addr(0)), e.Endpoint(addr(1))
	a.Acquire()
	a.Acquire()
	for range 2 { // b has 0, then 1, in flight: still fewer than a's 2
		ep, _ := e.Pick(PickInfo{})
		if ep != b {
			t.Fatalf("picked %s with %d in flight, want %s with %d", ep.Address(), ep.InFlight(), b.Address(), b.InFlight())
		}
	}
	if b.InFlight() != 2 {
		t.Fatalf("b in flight %d, want 2", b.InFlight())
	}
}

// Weighted picks, against the rule's exact probabilities: a (weight 3) and b
// (weight 1) are each drawn with probability 3/4 and 1/4, twice, and the
// second draw takes the pick from the first when it is less loaded by a gap g
// (in-flight/weight^(1/bias), counted in requests of the lighter one):
// always when g ≥ 1, with probability g below. Serial picks (each done at
// once) over held requests; seed 3, 40,000 picks, tolerance ±1 point (the
// noise is about 0.25 points).
func TestLeastRequestWeighted(t *testing.T) {
	bias := func(v float64) *float64 { return &v }
	for _, tc := range []struct {
		name         string
		bias         *float64
		aHeld, bHeld int
		wantA        float64
	}{
		// Idle: the weights. Then a holding 1 gives g = 1/3 when a is drawn
		// first and b second (3/16): a keeps it with 2/3.
		{"idle", nil, 0, 0, 0.75},
		{"bias1 a=1", nil, 1, 0, 9.0/16 + 3.0/16*2/3},
		// a holding 3: g = 1, so a only when drawn twice.
		{"bias1 a=3", nil, 3, 0, 9.0 / 16},
		// b holding 1: g = 1 against b, so a whenever drawn.
		{"bias1 b=1", nil, 0, 1, 15.0 / 16},
		// bias 0: weights only, in-flight ignored.
		{"bias0 a=10", bias(0), 10, 0, 0.75},
		// bias 2: a's load normalized by √3: g = 1/√3.
		{"bias2 a=1", bias(2), 1, 0, 9.0/16 + 3.0/16*(1-1/math.Sqrt(3))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const seed, draws = 3, 40_000
			e := newTestEngine(t, &LeastRequest{ActiveRequestBias: tc.bias}, newFakeClock(), seed,
				resolverEndpoints(2, func(i int) uint32 { return []uint32{3, 1}[i] }))
			a, b := e.Endpoint(addr(0)), e.Endpoint(addr(1))
			for range tc.aHeld {
				a.Acquire()
			}
			for range tc.bHeld {
				b.Acquire()
			}
			if got := share(countPicks(t, e, draws), 0); math.Abs(got-tc.wantA) > 0.01 {
				t.Fatalf("a's share %.4f, want %.4f ±0.01 (seed %d)", got, tc.wantA, seed)
			}
		})
	}
}

// With equal weights, over many endpoints, a busy endpoint is picked far less
// than its fair share: it wins only when sampled with another as busy.
func TestLeastRequestAvoidsBusy(t *testing.T) {
	const n, draws, seed = 10, 100_000, 7
	e := newTestEngine(t, &LeastRequest{ChoiceCount: 3}, newFakeClock(), seed, resolverEndpoints(n, nil))
	busy := e.Endpoint(addr(0))
	for range 5 {
		busy.Acquire()
	}
	counts := countPicks(t, e, draws) // every other endpoint has 0 in flight
	if counts[0] != 0 {
		t.Fatalf("seed %d: busy endpoint picked %d times of %d, want 0", seed, counts[0], draws)
	}
	for i, c := range counts[1:] {
		if c < draws/n*8/10 {
			t.Errorf("endpoint %d picked %d times, want about %d", i+1, c, draws/(n-1))
		}
	}
	_ = outcome.Success
}
