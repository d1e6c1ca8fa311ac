package balancer

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/resolver"
)

// churnAlgorithm returns a registered algorithm for the churn test, with the
// ring kept small so that a 10,000-endpoint rebuild under -race stays cheap
// (the churn, not the ring's resolution, is under test).
func churnAlgorithm(t *testing.T, name string) Algorithm {
	t.Helper()
	var js []byte
	switch name {
	case "ring_hash":
		js = []byte(`{"pointsPerEndpoint": 1, "minRingSize": 1024, "maxRingSize": 16384}`)
	case "bounded_load":
		js = []byte(`{"pointsPerEndpoint": 1}`)
	case "maglev":
		js = []byte(`{"tableSize": 65537}`)
	}
	a, err := NewAlgorithm(name, js)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return a
}

// Churn: 10,000 endpoints, every registered algorithm, picks and reports running
// while membership changes and conditions flip. No pick may return an endpoint
// whose drain has completed (that request would be sent to a backend whose
// connections are being closed), nor one whose condition was set before the
// pick began; afterwards every in-flight count is 0 and nothing is left draining.
func TestChurnNoPickAfterDrain(t *testing.T) {
	const (
		n       = 10_000
		pickers = 4
		rounds  = 12 // membership changes per algorithm
		seed    = 7
	)
	all := resolverEndpoints(n, nil)
	for _, name := range Algorithms() {
		t.Run(name, func(t *testing.T) {
			var (
				mu        sync.Mutex
				drained   = map[*Endpoint]int{} // OnDrained calls per endpoint object
				drainedOK sync.Map              // *Endpoint → struct{}: its drain completed
			)
			e, err := NewEngine(Config{Algorithm: churnAlgorithm(t, name)}, Options{
				Service: "churn",
				Rand:    seededRand(seed),
				OnDrained: func(ep *Endpoint) {
					drainedOK.Store(ep, struct{}{})
					mu.Lock()
					drained[ep]++
					mu.Unlock()
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			e.Update(all)

			// ejected[i] is true from just after SetCondition(Ejected, true)
			// returned until just before the condition is cleared: a pick that
			// sees it true before it starts must not return endpoint i.
			var ejected [n]atomic.Bool
			var stop atomic.Bool
			var violations atomic.Int64
			var firstViolation atomic.Value
			violate := func(msg string) {
				if violations.Add(1) == 1 {
					firstViolation.Store(msg)
				}
			}
			var picks atomic.Int64
			var wg sync.WaitGroup
			for g := range pickers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := rand.New(rand.NewPCG(seed, uint64(g)))
					for !stop.Load() {
						probe := r.IntN(n)
						before := ejected[probe].Load()
						info := PickInfo{Ctx: context.Background(), Hash: r.Uint64(), HasHash: r.IntN(2) == 0}
						ep, err := e.Pick(info)
						if err != nil {
							continue // the set may be momentarily all ejected or empty
						}
						picks.Add(1)
						if _, ok := drainedOK.Load(ep); ok {
							violate(fmt.Sprintf("picked %s after its drain completed", ep.Address()))
						}
						if before && ep.Address() == all[probe].Address {
							violate(fmt.Sprintf("picked %s after SetCondition(Ejected) returned", ep.Address()))
						}
						e.Done(ep, outcome.Outcome{Class: outcome.Success})
					}
				}()
			}
			wg.Add(1)
			go func() { // conditions
				defer wg.Done()
				r := rand.New(rand.NewPCG(seed, 99))
				for !stop.Load() {
					i := r.IntN(n)
					e.SetCondition(all[i].Address, Ejected, true)
					ejected[i].Store(true)
					ejected[i].Store(false)
					e.SetCondition(all[i].Address, Ejected, false)
				}
			}()
			r := rand.New(rand.NewPCG(seed, 1000))
			for range rounds { // membership: drop a random tenth, bring back the rest
				keep := make([]resolver.Endpoint, 0, n)
				for _, ep := range all {
					if r.IntN(10) != 0 {
						keep = append(keep, ep)
					}
				}
				e.Update(keep)
			}
			e.Update(all[:n/2]) // end with half removed: they must all drain
			stop.Store(true)
			wg.Wait()

			if v := violations.Load(); v > 0 {
				t.Fatalf("%d violations in %d picks; first: %v", v, picks.Load(), firstViolation.Load())
			}
			if picks.Load() == 0 {
				t.Fatal("no pick succeeded: the test exercised nothing")
			}
			e.mu.Lock()
			left := len(e.draining)
			e.mu.Unlock()
			if left != 0 {
				t.Errorf("%d endpoints still draining with nothing in flight", left)
			}
			for _, ep := range e.Endpoints() {
				if c := ep.InFlight(); c != 0 {
					t.Fatalf("%s: %d in flight after every request is done", ep.Address(), c)
				}
			}
			if e.mode.Load().trackTotal && e.total.Load() != 0 {
				t.Errorf("engine total in flight = %d after every request is done", e.total.Load())
			}
			mu.Lock()
			defer mu.Unlock()
			for ep, c := range drained {
				if c != 1 {
					t.Errorf("%s drained %d times", ep.Address(), c)
				}
				if ep.InFlight() != 0 {
					t.Errorf("%s drained with %d in flight", ep.Address(), ep.InFlight())
				}
			}
			for _, a := range all[n/2:] {
				if e.Endpoint(a.Address) != nil {
					t.Fatalf("%s still a member after its removal", a.Address)
				}
			}
			t.Logf("%s: %d picks, %d drains", name, picks.Load(), len(drained))
		})
	}
}

// Start and Close may race: Close waits for the feed goroutine Start began, or
// Start begins none.
func TestStartRacesClose(t *testing.T) {
	for range 200 {
		e, err := NewEngine(Config{}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		f := blockingFeed{}
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); e.Start(f) }()
		go func() { defer wg.Done(); e.Close() }()
		wg.Wait()
		e.Close() // the feed goroutine, if any, has stopped: goleak checks at exit
	}
}

// blockingFeed answers nothing until its context ends.
type blockingFeed struct{}

func (blockingFeed) Watch(ctx context.Context, _ resolver.Sink) error {
	<-ctx.Done()
	return ctx.Err()
}

// yielding wraps an algorithm so that its picks yield the processor between
// choosing an endpoint and returning it: the window in which a pick holds an
// endpoint it has not counted yet, which a concurrent removal must not drain
// from under it, is then wide enough to hit every run.
type yielding struct{ Algorithm }

func (y yielding) Build(bi BuildInfo) Picker { return yieldingPicker{y.Algorithm.Build(bi)} }

type yieldingPicker struct{ Picker }

func (p yieldingPicker) Pick(info PickInfo) (*Endpoint, error) {
	ep, err := p.Picker.Pick(info)
	runtime.Gosched()
	return ep, err
}

// The same property on a few endpoints with a wide pick window: before the
// engine re-checked a picked endpoint after counting it, this failed within a
// few hundred rounds.
func TestChurnNoPickAfterDrainNarrow(t *testing.T) {
	const n, rounds, pickers = 4, 3000, 4
	var drainedOK sync.Map
	e, err := NewEngine(Config{Algorithm: yielding{&RoundRobin{}}}, Options{
		OnDrained: func(ep *Endpoint) { drainedOK.Store(ep, struct{}{}) },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	all := resolverEndpoints(n, nil)
	e.Update(all)
	var stop atomic.Bool
	var bad, picks atomic.Int64
	var wg sync.WaitGroup
	for range pickers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				ep, err := e.Pick(PickInfo{})
				if err != nil {
					continue
				}
				picks.Add(1)
				if _, ok := drainedOK.Load(ep); ok {
					bad.Add(1)
				}
				e.Done(ep, outcome.Outcome{Class: outcome.Success})
			}
		}()
	}
	for i := range rounds {
		e.Update(all[i%2 : i%2+n-1]) // drop the first or the last, alternately
	}
	stop.Store(true)
	wg.Wait()
	if bad.Load() > 0 {
		t.Fatalf("%d of %d picks returned an endpoint whose drain had completed", bad.Load(), picks.Load())
	}
	for _, ep := range e.Endpoints() {
		if ep.InFlight() != 0 {
			t.Fatalf("%s: %d in flight after every request is done", ep.Address(), ep.InFlight())
		}
	}
}
