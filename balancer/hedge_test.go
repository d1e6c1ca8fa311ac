package balancer

import (
	"testing"

	"github.com/lodestar-go/lodestar/balancer/outcome"
)

// PickHedge never returns an avoided endpoint while another eligible one
// exists, for every algorithm, with and without a concurrency limit; when
// all are avoided it still returns one; the in-flight counts balance after
// Done; and it allocates nothing.
func TestPickHedgeAvoids(t *testing.T) {
	for _, alg := range []Algorithm{&RoundRobin{}, &Random{}, &LeastRequest{}, &PeakEWMA{}, &RingHash{}, &Maglev{}, &BoundedLoad{}} {
		for _, limit := range []int{0, 100} {
			e, err := NewEngine(Config{Algorithm: alg, MaxInFlightPerEndpoint: limit}, Options{Rand: seededRand(7)})
			if err != nil {
				t.Fatal(err)
			}
			e.Update(resolverEndpoints(5, nil))
			eps := e.Eligible()
			info := PickInfo{Hash: 42, HasHash: true}
			for k := 1; k < len(eps); k++ {
				avoid := eps[:k]
				for range 200 {
					ep, err := e.PickHedge(info, avoid)
					if err != nil {
						t.Fatal(err)
					}
					if avoided(avoid, ep) {
						t.Fatalf("%s limit %d: avoiding %d, hedged to avoided %s", alg.Name(), limit, k, ep.Address())
					}
					e.Done(ep, outcome.Outcome{Class: outcome.Success})
				}
			}
			ep, err := e.PickHedge(info, eps)
			if err != nil {
				t.Fatalf("%s: all avoided: %v", alg.Name(), err)
			}
			e.Done(ep, outcome.Outcome{Class: outcome.Success})
			if a := testing.AllocsPerRun(200, func() {
				ep, _ := e.PickHedge(info, eps[:1])
				e.Done(ep, outcome.Outcome{Class: outcome.Success})
			}); a != 0 {
				t.Errorf("%s: PickHedge: %v allocs", alg.Name(), a)
			}
			for _, ep := range e.Endpoints() {
				if n := ep.InFlight(); n != 0 {
					t.Errorf("%s: %s: %d in flight after all Done", alg.Name(), ep.Address(), n)
				}
			}
			e.Close()
		}
	}
}

// Of the picker's two candidates, the hedge takes the one with fewer
// requests in flight: with round robin over 5 endpoints, one of which holds
// 50 requests, a hedge avoiding another endpoint never lands on the loaded
// one (round robin always offers it with a neighbour), where PickAvoiding
// does, a quarter of the time.
func TestPickHedgePrefersLessLoaded(t *testing.T) {
	e, err := NewEngine(Config{}, Options{Rand: seededRand(3)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	e.Update(resolverEndpoints(5, nil))
	eps := e.Eligible()
	loaded := eps[2]
	for range 50 {
		loaded.Acquire()
	}
	avoid := eps[:1]
	hedged, avoiding := 0, 0
	for range 400 {
		ep, err := e.PickHedge(PickInfo{}, avoid)
		if err != nil {
			t.Fatal(err)
		}
		if ep == loaded {
			hedged++
		}
		e.Done(ep, outcome.Outcome{Class: outcome.Success})
		ep, err = e.PickAvoiding(PickInfo{}, avoid)
		if err != nil {
			t.Fatal(err)
		}
		if ep == loaded {
			avoiding++
		}
		e.Done(ep, outcome.Outcome{Class: outcome.Success})
	}
	if hedged != 0 || avoiding == 0 {
		t.Fatalf("the loaded endpoint got %d of 400 hedges (want 0) and %d of 400 retries (want some)", hedged, avoiding)
	}
}
