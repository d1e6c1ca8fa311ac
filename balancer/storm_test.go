package balancer

import (
	"fmt"
	"log/slog"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/resolver"
)

func stormEngine(tb testing.TB, alg Algorithm, n int) *Engine {
	tb.Helper()
	e, err := NewEngine(Config{Algorithm: alg}, Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { e.Close() })
	eps := make([]resolver.Endpoint, n)
	for i := range eps {
		eps[i] = resolver.Endpoint{Address: addr(i)}
	}
	e.Update(eps)
	return e
}

// storm sets (or clears) Ejected on endpoints [0, k) from g goroutines at once.
func storm(e *Engine, k, g int, on bool) {
	var wg sync.WaitGroup
	for w := range g {
		wg.Go(func() {
			for i := w; i < k; i += g {
				e.SetConditionWhy(addr(i), Ejected, on, "storm")
			}
		})
	}
	wg.Wait()
}

// After a storm of condition changes from many goroutines, no pick returns an
// endpoint whose ejection call has returned (published or held back by the
// pace), the paced rebuild publishes every change on its own (none is lost),
// and the rebuilds stay within the pace's bound: a burst of paceBurst, then
// one per paceEvery of the storm's measured duration.
func TestStormCoalescesWithoutLosingChanges(t *testing.T) {
	for _, alg := range []Algorithm{&RoundRobin{}, &RingHash{}} {
		t.Run(alg.Name(), func(t *testing.T) {
			const n, k = 2000, 600
			e := stormEngine(t, alg, n)
			stop := make(chan struct{})
			var pickers sync.WaitGroup
			var bad sync.Map
			for range 4 {
				pickers.Go(func() {
					var h uint64
					for {
						select {
						case <-stop:
							return
						default:
						}
						h += 0x9e3779b97f4a7c15
						ep, err := e.Pick(PickInfo{HasHash: true, Hash: h})
						if err != nil {
							bad.Store(err.Error(), true)
							return
						}
						e.Done(ep, outcome.Outcome{Class: outcome.Success})
					}
				})
			}
			for round := range 5 {
				e.mu.Lock()
				before := e.rebuilds
				e.mu.Unlock()
				start := time.Now()
				storm(e, k, 16, true)
				// Every ejection has returned, published or not (the pace
				// may hold the last back): no pick may return one now.
				for i := range 2000 {
					ep, err := e.Pick(PickInfo{HasHash: true, Hash: uint64(i) * 0x9e3779b97f4a7c15})
					if err != nil {
						t.Fatal(err)
					}
					if ep.Conditions()&Ejected != 0 {
						t.Fatalf("round %d: picked ejected %s after the storm", round, ep.addr)
					}
					e.Done(ep, outcome.Outcome{Class: outcome.Success})
				}
				// The paced rebuild publishes the last changes on its own.
				waitEligible(t, e, n-k)
				e.mu.Lock()
				built := e.rebuilds - before
				e.mu.Unlock()
				// The pace's bound: a burst, then one a millisecond (and
				// one more for the paced rebuild that closes the storm).
				bound := paceBurst + int(time.Since(start)/paceEvery) + 2
				t.Logf("round %d: %d ejections from 16 goroutines, %d rebuilds (pace bound %d)", round, k, built, bound)
				if int(built) > bound {
					t.Fatalf("round %d: %d rebuilds, above the pace's bound %d", round, built, bound)
				}
				storm(e, k, 16, false)
				waitEligible(t, e, n)
			}
			close(stop)
			pickers.Wait()
			bad.Range(func(k, _ any) bool { t.Errorf("pick failed: %v", k); return true })
		})
	}
}

// waitEligible waits (10 s deadline) until the engine publishes want
// eligible endpoints.
func waitEligible(t *testing.T, e *Engine, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(e.Eligible()) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%d eligible 10 s after the storm, want %d", len(e.Eligible()), want)
		}
		time.Sleep(time.Millisecond)
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkEjectionStorm ejects 30% of 10,000 endpoints (3,000 SetCondition
// calls) and readmits them, from 16 goroutines (as inline detectors eject
// from many requests' Done) or from one, each phase until it is published. It
// reports the process CPU time and the snapshots built per storm (ejection
// plus readmission: 6,000 changes).
//
//	go test ./balancer/ -run '^$' -bench EjectionStorm -benchtime=5x
func BenchmarkEjectionStorm(b *testing.B) {
	const n, k = 10000, 3000
	for _, alg := range []func() Algorithm{
		func() Algorithm { return &RoundRobin{} },
		func() Algorithm { return &RingHash{} },
		func() Algorithm { return &BoundedLoad{} },
		func() Algorithm { return &Maglev{} },
	} {
		for _, g := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/goroutines=%d", alg().Name(), g), func(b *testing.B) {
				e := stormEngine(b, alg(), n)
				e.mu.Lock()
				before := e.rebuilds
				e.mu.Unlock()
				cpu := cpuTime()
				b.ResetTimer()
				for range b.N {
					storm(e, k, g, true)
					e.settled() // published: the pace may hold the last changes back
					storm(e, k, g, false)
					e.settled()
				}
				b.StopTimer()
				e.mu.Lock()
				built := e.rebuilds - before
				e.mu.Unlock()
				b.ReportMetric(float64(built)/float64(b.N), "rebuilds/storm")
				b.ReportMetric(float64((cpuTime()-cpu).Milliseconds())/float64(b.N), "cpu-ms/storm")
			})
		}
	}
}
