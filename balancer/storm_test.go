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

// After a storm of condition changes from many goroutines, the snapshot in
// force reflects every change (none is lost to coalescing), picks running
// through it never return an endpoint whose ejection finished before the pick
// began, and the storm took fewer rebuilds than changes when goroutines
// overlapped (logged: coalescing depends on scheduling).
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
				storm(e, k, 16, true)
				e.mu.Lock()
				built := e.rebuilds - before
				e.mu.Unlock()
				if got := len(e.Eligible()); got != n-k {
					t.Fatalf("round %d: %d eligible after ejecting %d of %d", round, got, k, n)
				}
				// Every ejection has returned: no pick may see one now.
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
				t.Logf("round %d: %d ejections from 16 goroutines, %d rebuilds", round, k, built)
				if built > k {
					t.Fatalf("round %d: %d rebuilds for %d changes", round, built, k)
				}
				storm(e, k, 16, false)
				if got := len(e.Eligible()); got != n {
					t.Fatalf("round %d: %d eligible after readmitting all, want %d", round, got, n)
				}
			}
			close(stop)
			pickers.Wait()
			bad.Range(func(k, _ any) bool { t.Errorf("pick failed: %v", k); return true })
		})
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
// from many requests' Done) or from one. It reports the process CPU time and
// the snapshots built per storm (ejection plus readmission: 6,000 changes).
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
					storm(e, k, g, false)
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
