package balancer

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar/balancer/outcome"
)

// The concurrency limit is never exceeded by requests that are let through,
// under 16 goroutines, for a counting and a self-counting algorithm; when every
// endpoint is at its limit the pick fails at once with ErrOverloaded.
func TestMaxInFlightPerEndpoint(t *testing.T) {
	const limit, endpoints, goroutines = 3, 4, 16
	for _, alg := range []Algorithm{&RoundRobin{}, &LeastRequest{}, &RingHash{}, &BoundedLoad{}} {
		t.Run(alg.Name(), func(t *testing.T) {
			e, err := NewEngine(Config{Algorithm: alg, MaxInFlightPerEndpoint: limit}, Options{Service: "svc", Rand: seededRand(5)})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			e.Update(resolverEndpoints(endpoints, nil))
			var admitted [endpoints]atomic.Int64 // requests let through and not done, per endpoint
			index := map[*Endpoint]int{}
			for i, ep := range e.Endpoints() {
				index[ep] = i
			}
			var over, overloaded, ok atomic.Int64
			var wg sync.WaitGroup
			for g := range goroutines {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range 2000 {
						ep, err := e.Pick(PickInfo{Hash: uint64(g), HasHash: i%2 == 0})
						if err != nil {
							if !errors.Is(err, ErrOverloaded) || errors.Is(err, ErrNoEndpoints) {
								t.Errorf("err = %v; want only ErrOverloaded", err)
								return
							}
							overloaded.Add(1)
							continue
						}
						ok.Add(1)
						if n := admitted[index[ep]].Add(1); n > limit {
							over.Add(1)
						}
						admitted[index[ep]].Add(-1)
						e.Done(ep, outcome.Outcome{Class: outcome.Success})
					}
				}()
			}
			wg.Wait()
			if over.Load() > 0 {
				t.Fatalf("%d requests went over the limit of %d", over.Load(), limit)
			}
			if ok.Load() == 0 {
				t.Fatal("no request was let through")
			}
			for _, ep := range e.Endpoints() {
				if ep.InFlight() != 0 {
					t.Fatalf("%s: %d in flight after all done", ep.Address(), ep.InFlight())
				}
			}
			t.Logf("%d let through, %d overloaded", ok.Load(), overloaded.Load())
		})
	}
}

// With every endpoint held at its limit, a pick fails at once, typed and named.
func TestOverloadedError(t *testing.T) {
	e, err := NewEngine(Config{MaxInFlightPerEndpoint: 1}, Options{Service: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	e.Update(resolverEndpoints(2, nil))
	a, err1 := e.Pick(PickInfo{})
	b, err2 := e.Pick(PickInfo{})
	if err1 != nil || err2 != nil || a == b {
		t.Fatalf("two picks under a limit of 1 over 2 endpoints: %v %v, %v %v", a, err1, b, err2)
	}
	_, err = e.Pick(PickInfo{})
	var oe *OverloadedError
	if !errors.As(err, &oe) || !errors.Is(err, ErrOverloaded) || oe.Endpoints != 2 || oe.Limit != 1 ||
		!strings.Contains(err.Error(), "maxInFlightPerEndpoint") {
		t.Fatalf("err = %v; want an *OverloadedError for 2 endpoints at limit 1", err)
	}
	e.Done(a, outcome.Outcome{})
	if ep, err := e.Pick(PickInfo{}); err != nil || ep != a {
		t.Fatalf("after one finished: %v, %v; want the freed endpoint", ep, err)
	}
}

// Panic: below the threshold, picks spread over every connected endpoint, and
// the engine says so; at 0 panic is off. NotConnected endpoints stay out.
func TestPanicThreshold(t *testing.T) {
	zero := 0.0
	for _, tc := range []struct {
		name      string
		threshold *float64
		eject     int // of 4
		panic     bool
	}{
		{"default 50%, 1 of 4 ejected", nil, 1, false},
		{"default 50%, 2 of 4 ejected", nil, 2, false},
		{"default 50%, 3 of 4 ejected", nil, 3, true},
		{"default 50%, all ejected", nil, 4, true},
		{"off, all ejected", &zero, 4, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := NewEngine(Config{PanicThreshold: tc.threshold}, Options{Service: "svc"})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			var mu sync.Mutex
			var kinds []EventKind
			defer e.Subscribe(func(ev Event) {
				mu.Lock()
				kinds = append(kinds, ev.Kind)
				mu.Unlock()
			})()
			eps := resolverEndpoints(5, nil)
			e.Update(eps)
			e.SetCondition(eps[4].Address, NotConnected, true) // outside the count, never picked
			for i := range tc.eject {
				e.SetConditionWhy(eps[i].Address, Ejected, true, "test")
			}
			if e.Panicking() != tc.panic {
				t.Fatalf("Panicking() = %v, want %v", e.Panicking(), tc.panic)
			}
			seen := map[string]bool{}
			for range 40 {
				ep, err := e.Pick(PickInfo{})
				if err != nil {
					if tc.eject == 4 && !tc.panic && errors.Is(err, ErrNoEndpoints) {
						if !strings.Contains(err.Error(), "4 ejected") || !strings.Contains(err.Error(), "1 not connected") {
							t.Fatalf("error %q does not count the ejected and not connected endpoints", err)
						}
						return
					}
					t.Fatal(err)
				}
				seen[ep.Address()] = true
				e.Done(ep, outcome.Outcome{})
			}
			if seen[eps[4].Address] {
				t.Fatal("picked a not connected endpoint")
			}
			if want := 4 - tc.eject; tc.panic {
				if len(seen) != 4 {
					t.Fatalf("in panic picks reached %d endpoints, want all 4 connected", len(seen))
				}
			} else if len(seen) != want {
				t.Fatalf("picks reached %d endpoints, want the %d usable", len(seen), want)
			}
			events := func() []EventKind {
				mu.Lock()
				defer mu.Unlock()
				return append([]EventKind(nil), kinds...)
			}
			if got := slicesContains(events(), PanicStarted); got != tc.panic {
				t.Fatalf("events %v: PanicStarted present = %v, want %v", events(), got, tc.panic)
			}
			if tc.panic {
				for i := range tc.eject {
					e.SetCondition(eps[i].Address, Ejected, false)
				}
				if kinds := events(); e.Panicking() || !slicesContains(kinds, PanicEnded) {
					t.Fatalf("after recovery: Panicking() = %v, events %v", e.Panicking(), kinds)
				}
			}
		})
	}
}

func slicesContains(ks []EventKind, k EventKind) bool {
	for _, x := range ks {
		if x == k {
			return true
		}
	}
	return false
}

// Every state change is an event, delivered in order; a subscriber may change
// the engine's state from its callback without deadlock.
func TestEvents(t *testing.T) {
	e, err := NewEngine(Config{}, Options{Service: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	var got []string
	cancel := e.Subscribe(func(ev Event) {
		got = append(got, ev.Kind.String()+" "+ev.Address+" "+ev.Old.String()+"→"+ev.New.String()+" "+ev.Why)
		if ev.Kind == ConditionChanged && ev.New == Ejected && ev.Service == "svc" {
			e.SetConditionWhy(ev.Address, Unhealthy, true, "from the subscriber") // re-entrant
		}
	})
	eps := resolverEndpoints(3, nil)
	e.Update(eps)
	ep, _ := e.Pick(PickInfo{})
	e.SetConditionWhy(eps[1].Address, Ejected, true, "5 consecutive failures")
	e.Update(eps[:1])
	e.Done(ep, outcome.Outcome{})
	cancel()
	e.SetCondition(eps[0].Address, Ejected, true) // after cancel: not seen
	want := []string{
		"endpoint added 10.0.0.0:8080 eligible→eligible ",
		"endpoint added 10.0.0.1:8080 eligible→eligible ",
		"endpoint added 10.0.0.2:8080 eligible→eligible ",
		"condition changed 10.0.0.1:8080 eligible→ejected 5 consecutive failures",
		"condition changed 10.0.0.1:8080 ejected→unhealthy+ejected from the subscriber",
	}
	if len(got) < len(want) {
		t.Fatalf("events:\n%s", strings.Join(got, "\n"))
	}
	for i, w := range want {
		if got[i] != w {
			t.Fatalf("event %d = %q, want %q; all:\n%s", i, got[i], w, strings.Join(got, "\n"))
		}
	}
	var removedN, drained int
	for _, g := range got[len(want):] {
		switch {
		case strings.HasPrefix(g, "endpoint removed"):
			removedN++
		case strings.HasPrefix(g, "endpoint drained"):
			drained++
		default:
			t.Errorf("unexpected event %q", g)
		}
	}
	if removedN != 2 || drained != 2 {
		t.Fatalf("%d removed and %d drained events, want 2 and 2:\n%s", removedN, drained, strings.Join(got, "\n"))
	}
}

// Panic depends on every endpoint's conditions, not only the eligible ones: an
// unhealthy endpoint that connects counts at once (it once stayed out until
// some endpoint's eligibility flipped), and a pick never waits on a snapshot
// that no change will replace.
func TestPanicSeesEveryConditionChange(t *testing.T) {
	e, err := NewEngine(Config{}, Options{Service: "svc", InitialConditions: NotConnected})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	eps := resolverEndpoints(2, nil)
	e.Update(eps)
	e.SetCondition(eps[0].Address, Unhealthy, true) // not connected yet, and unhealthy
	e.SetCondition(eps[1].Address, NotConnected, false)
	e.SetCondition(eps[1].Address, Unhealthy, true)
	e.SetCondition(eps[0].Address, NotConnected, false) // connects: 0 of 2 usable
	if !e.Panicking() {
		t.Fatal("0 of 2 connected endpoints usable, and no panic")
	}
	seen := map[string]bool{}
	for range 20 {
		ep, err := e.Pick(PickInfo{Ctx: context.Background()})
		if err != nil {
			t.Fatalf("in panic: %v", err)
		}
		seen[ep.Address()] = true
		e.Done(ep, outcome.Outcome{})
	}
	if len(seen) != 2 {
		t.Fatalf("panic picks reached %v; want both", seen)
	}
	// One loses its connection while in panic: picks go to the other at once.
	e.SetCondition(eps[0].Address, NotConnected, true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for range 20 {
		ep, err := e.Pick(PickInfo{Ctx: ctx})
		if err != nil || ep.Address() != eps[1].Address {
			t.Fatalf("after one disconnected: %v, %v; want the connected one", ep, err)
		}
		e.Done(ep, outcome.Outcome{})
	}
}
