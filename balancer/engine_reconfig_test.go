package balancer

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/lodestar-go/lodestar/balancer/outcome"
)

// Reconfigure keeps the endpoint set, conditions and statistics, rejects a bad
// config naming the field, and keeps the engine-wide total exact across
// algorithms that need it and algorithms that do not, with picks running.
func TestReconfigureKeepsStatistics(t *testing.T) {
	e, err := NewEngine(Config{}, Options{Rand: seededRand(3)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	e.Update(resolverEndpoints(8, nil))
	e.SetCondition(addr(7), Ejected, true)
	held, err := e.Pick(PickInfo{}) // in flight across every reconfiguration
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		ep, _ := e.Pick(PickInfo{})
		e.Done(ep, outcome.Outcome{Class: outcome.ServerError})
	}

	if err := e.Reconfigure(Config{Algorithm: &LeastRequest{ChoiceCount: 1}}); err == nil ||
		!strings.Contains(err.Error(), "choiceCount") {
		t.Fatalf("bad config: err = %v; want one naming choiceCount", err)
	}

	var stop atomic.Bool
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				ep, err := e.Pick(PickInfo{Ctx: context.Background(), Hash: 42, HasHash: true})
				if err != nil {
					t.Error(err)
					return
				}
				e.Done(ep, outcome.Outcome{Class: outcome.Success})
			}
		}()
	}
	for range 50 {
		for _, a := range []Algorithm{&BoundedLoad{}, &RoundRobin{}, &PeakEWMA{}, &BoundedLoad{}, &LeastRequest{}} {
			if err := e.Reconfigure(Config{Algorithm: a}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := e.Reconfigure(Config{Algorithm: &BoundedLoad{}}); err != nil {
		t.Fatal(err)
	}
	stop.Store(true)
	wg.Wait()

	if got := len(e.Endpoints()); got != 8 {
		t.Fatalf("%d endpoints after reconfiguring, want 8", got)
	}
	if e.Endpoint(addr(7)).Conditions() != Ejected {
		t.Fatal("the ejected endpoint's condition was lost")
	}
	var failures uint64
	for _, ep := range e.Endpoints() {
		failures += ep.Outcomes(outcome.ServerError)
	}
	if failures != 10 {
		t.Fatalf("outcome counts: %d server errors, want the 10 reported before", failures)
	}
	if held.InFlight() < 1 {
		t.Fatal("the held request is no longer counted in flight")
	}
	e.Done(held, outcome.Outcome{Class: outcome.Success})
	if got := e.total.Load(); got != 0 {
		t.Fatalf("engine total in flight = %d with nothing in flight", got)
	}
	for _, ep := range e.Endpoints() {
		if ep.InFlight() != 0 {
			t.Fatalf("%s: %d in flight", ep.Address(), ep.InFlight())
		}
	}
	if _, ok := e.Config().Algorithm.(*BoundedLoad); !ok {
		t.Fatalf("Config().Algorithm = %T, want the last one set", e.Config().Algorithm)
	}
}
