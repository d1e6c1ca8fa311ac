package balancer

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/resolver"
)

// Every built-in pick, with its Done, allocates nothing: plain, weighted,
// ramping (slow start), keyed and keyless. (An endpoint's first outcome of a
// class builds its metric attribute set, once: the runs are warmed up over
// every endpoint first.)
func TestPickDoneAllocatesNothing(t *testing.T) {
	weighted := func(i int) uint32 { return uint32(i%4 + 1) }
	ss := SlowStart{Window: time.Hour}
	for _, tc := range []struct {
		name    string
		alg     Algorithm
		weights func(int) uint32
	}{
		{"round_robin", &RoundRobin{}, nil},
		{"round_robin/slow_start", &RoundRobin{SlowStart: ss}, nil},
		{"weighted_round_robin", &WeightedRoundRobin{}, weighted},
		{"weighted_round_robin/slow_start", &WeightedRoundRobin{SlowStart: ss}, weighted},
		{"random", &Random{}, nil},
		{"weighted_random", &WeightedRandom{}, weighted},
		{"least_request", &LeastRequest{}, nil},
		{"least_request/weighted", &LeastRequest{ActiveRequestBias: ptr(1.5)}, weighted},
		{"least_request/slow_start", &LeastRequest{SlowStart: ss}, nil},
		{"peak_ewma", &PeakEWMA{}, nil},
		{"ring_hash", &RingHash{}, nil},
		{"maglev", &Maglev{}, nil},
		{"bounded_load", &BoundedLoad{}, nil},
	} {
		e := newTestEngine(t, tc.alg, newFakeClock(), 1, resolverEndpoints(100, tc.weights))
		ctx := WithAffinityKey(context.Background(), "user-1")
		for _, info := range []PickInfo{{}, {Ctx: ctx, Hash: 12345, HasHash: true}} {
			run := func() {
				h, ok := AffinityHash(ctx)
				if info.HasHash {
					info.Hash, info.HasHash = h, ok
				}
				ep, err := e.Pick(info)
				if err != nil {
					t.Fatal(err)
				}
				e.Done(ep, outcome.Outcome{Class: outcome.Success, Latency: time.Millisecond})
			}
			for range 1000 {
				run()
			}
			allocs := testing.AllocsPerRun(1000, run)
			if allocs != 0 {
				t.Errorf("%s (keyed %v): %.1f allocations per pick and Done", tc.name, info.HasHash, allocs)
			}
		}
	}
}

func ptr[T any](v T) *T { return &v }

func TestAffinityKeyContext(t *testing.T) {
	ctx := WithAffinityKey(context.Background(), "user-7")
	if k, ok := AffinityKey(ctx); !ok || k != "user-7" {
		t.Fatalf("AffinityKey = %q, %v", k, ok)
	}
	if h, ok := AffinityHash(ctx); !ok || h != HashKey("user-7") {
		t.Fatalf("AffinityHash = %x, %v; want %x", h, ok, HashKey("user-7"))
	}
	if _, ok := AffinityHash(WithAffinityKey(ctx, "")); ok {
		t.Fatal("an empty key did not clear the key")
	}
	if _, ok := AffinityHash(context.Background()); ok {
		t.Fatal("a bare context has a key")
	}
	if _, ok := AffinityHash(nil); ok { //nolint:staticcheck // nil is what a zero PickInfo carries
		t.Fatal("a nil context has a key")
	}
}

// Endpoints keep the weight the engine gives them across updates (what the
// weighted pickers read).
func TestWeightUpdateRebuilds(t *testing.T) {
	e := newSeqEngine(t, &WeightedRoundRobin{}, 1, 1)
	if got := sequence(t, e, 4); got != "ABAB" {
		t.Fatalf("equal weights: %s", got)
	}
	e.Update([]resolver.Endpoint{{Address: addr(0), Weight: 3}, {Address: addr(1)}})
	seq := sequence(t, e, 8)
	var a int
	for _, c := range seq {
		if c == 'A' {
			a++
		}
	}
	if a != 6 {
		t.Fatalf("weights 3:1, 8 picks %s: %d to A, want 6", seq, a)
	}
}

// The engine's sorted set, kept by merging on each update, matches a full sort.
func TestEngineSortedAfterUpdates(t *testing.T) {
	e := newTestEngine(t, &RoundRobin{}, newFakeClock(), 1, nil)
	rnd := seededRand(4)
	for range 200 {
		var eps []resolver.Endpoint
		for i := range 300 {
			if rnd()%3 != 0 {
				eps = append(eps, resolver.Endpoint{Address: addr(i)})
			}
		}
		e.Update(eps)
		got := e.Endpoints()
		if len(got) != len(eps) {
			t.Fatalf("%d endpoints, want %d", len(got), len(eps))
		}
		if !slices.IsSortedFunc(got, byAddress) {
			t.Fatal("endpoints not in address order")
		}
		for i, ep := range got {
			if e.Endpoint(ep.Address()) != ep || ep.Removed() {
				t.Fatalf("endpoint %d (%s) is stale", i, ep.Address())
			}
		}
	}
}
