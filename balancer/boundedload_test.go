package balancer

import (
	"fmt"
	"math"
	"sync"
	"testing"

	"github.com/lodestar-go/lodestar/balancer/outcome"
)

// Goroutines pick concurrently and hold their requests, most of them with one
// hot key. Because every request stays in flight, the total only grows while
// they pick, so each endpoint's final count must be within the cap for the
// final total: ⌈1.25·total/N⌉. The hot key's endpoint must reach the cap
// exactly (the cap, not luck, is what stopped it) and the spill must land on
// other endpoints.
func TestBoundedLoadCapUnderConcurrency(t *testing.T) {
	const n, goroutines, perG, rounds = 20, 8, 1000, 5
	e := newTestEngine(t, &BoundedLoad{}, newFakeClock(), 3, resolverEndpoints(n, nil))
	hot := HashKey("hot")
	for round := range rounds {
		held := make([][]*Endpoint, goroutines)
		var wg sync.WaitGroup
		for g := range goroutines {
			wg.Go(func() {
				for i := range perG {
					info := PickInfo{Hash: hot, HasHash: true}
					switch {
					case i%5 == 4:
						info.Hash = HashKey(fmt.Sprint(round, g, i))
					case i%7 == 6:
						info = PickInfo{} // keyless: the cap applies too
					}
					ep, err := e.Pick(info)
					if err != nil {
						t.Error(err)
						return
					}
					held[g] = append(held[g], ep)
				}
			})
		}
		wg.Wait()
		total := e.total.Load()
		if total != goroutines*perG {
			t.Fatalf("round %d: engine total %d, want %d", round, total, goroutines*perG)
		}
		limit := int64(math.Ceil(1.25 * float64(total) / n))
		var sum, atCap int64
		for _, ep := range e.Endpoints() {
			l := ep.InFlight()
			sum += l
			if l > limit {
				t.Errorf("round %d: %s has %d in flight, cap ⌈1.25·%d/%d⌉ = %d", round, ep.Address(), l, total, n, limit)
			}
			if l == limit {
				atCap++
			}
		}
		if sum != total {
			t.Fatalf("round %d: endpoints hold %d, engine total %d", round, sum, total)
		}
		if atCap < 2 { // the hot key's endpoint and at least its first spill
			t.Errorf("round %d: %d endpoints at the cap, want the hot key's and its spill", round, atCap)
		}
		for _, eps := range held {
			for _, ep := range eps {
				e.Done(ep, outcome.Outcome{})
			}
		}
		if e.total.Load() != 0 {
			t.Fatalf("round %d: total %d after every Done", round, e.total.Load())
		}
	}
}

// With little load the hot key keeps its endpoint: the cap only bites above
// the average.
func TestBoundedLoadKeepsAffinityWhenIdle(t *testing.T) {
	e := newTestEngine(t, &BoundedLoad{}, newFakeClock(), 3, resolverEndpoints(20, nil))
	info := PickInfo{Hash: HashKey("user-42"), HasHash: true}
	first, _ := e.Pick(info)
	e.Done(first, outcome.Outcome{})
	for range 100 {
		ep, _ := e.Pick(info)
		if ep != first {
			t.Fatalf("idle engine moved the key from %s to %s", first.Address(), ep.Address())
		}
		e.Done(ep, outcome.Outcome{})
	}
}
