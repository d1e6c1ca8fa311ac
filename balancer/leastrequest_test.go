package balancer

import (
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

func TestLeastRequestWeighted(t *testing.T) {
	bias := func(v float64) *float64 { return &v }
	for _, tc := range []struct {
		name         string
		bias         *float64
		aHeld        int // requests held on a (weight 3); b (weight 1) has none
		wantA        bool
		wantAfterTie bool
	}{
		// bias 1: 3/(a+1) against 1/(0+1).
		{"bias1 a=1", nil, 1, true, false},  // 1.5 > 1
		{"bias1 a=3", nil, 3, false, false}, // 0.75 < 1
		// bias 0: weights only, in-flight ignored.
		{"bias0 a=10", bias(0), 10, true, false},
		// bias 2: 3/(a+1)^2 against 1: a=1 gives 0.75.
		{"bias2 a=1", bias(2), 1, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEngine(t, &LeastRequest{ActiveRequestBias: tc.bias}, newFakeClock(), 1,
				resolverEndpoints(2, func(i int) uint32 { return []uint32{3, 1}[i] }))
			a := e.Endpoint(addr(0))
			for range tc.aHeld {
				a.Acquire()
			}
			ep, _ := e.Pick(PickInfo{})
			if got := ep == a; got != tc.wantA {
				t.Fatalf("picked %s, want a: %v", ep.Address(), tc.wantA)
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
