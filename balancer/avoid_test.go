package balancer

import (
	"testing"

	"github.com/lodestar-go/lodestar/balancer/outcome"
)

// PickAvoiding never returns an avoided endpoint while another eligible
// one exists, for every algorithm (hashing ones keep returning the same
// endpoint for a key, so they reach the scan), with and without a
// concurrency limit; when all are avoided it still returns one; and a pick
// avoiding allocates nothing.
func TestPickAvoid(t *testing.T) {
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
					ep, err := e.PickAvoiding(info, avoid)
					if err != nil {
						t.Fatal(err)
					}
					if avoided(avoid, ep) {
						t.Fatalf("%s limit %d: avoiding %d, picked avoided %s", alg.Name(), limit, k, ep.Address())
					}
					e.Done(ep, outcome.Outcome{Class: outcome.Success})
				}
			}
			ep, err := e.PickAvoiding(info, eps)
			if err != nil {
				t.Fatalf("%s: all avoided: %v", alg.Name(), err)
			}
			e.Done(ep, outcome.Outcome{Class: outcome.Success})
			if a := testing.AllocsPerRun(200, func() {
				ep, _ := e.PickAvoiding(info, eps[:2])
				e.Done(ep, outcome.Outcome{Class: outcome.Success})
			}); a != 0 {
				t.Errorf("%s: PickAvoiding: %v allocs", alg.Name(), a)
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
