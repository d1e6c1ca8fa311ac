package balancer

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/resolver"
)

// Churn under -race: picks and Dones run on 4 goroutines while the groups
// change under them: endpoints move between tiers and zones (Update),
// conditions flip, and the split is reconfigured. No pick fails (one v1
// endpoint stays usable throughout), no pick returns an endpoint outside the
// split while its subsets have usable endpoints, and every in-flight count
// is back to 0 at the end. Every registered algorithm; seed 13.
func TestGroupedChurn(t *testing.T) {
	const pickers = 4
	base := func(round int) []resolver.Endpoint {
		r := rand.New(rand.NewPCG(13, uint64(round)))
		var eps []resolver.Endpoint
		for i := range 24 {
			v := []string{"v1", "v2", "v3"}[i%3]
			eps = append(eps, resolver.Endpoint{
				Address:  fmt.Sprintf("10.7.0.%d:80", i+1),
				Priority: r.IntN(3),
				Locality: resolver.Locality{Region: []string{"r1", "r2"}[r.IntN(2)], Zone: []string{"a", "b", "c"}[r.IntN(3)]},
				Metadata: map[string]string{"version": v},
			})
		}
		eps[0].Priority = 0 // the v1 endpoint that stays usable
		return eps
	}
	for _, name := range Algorithms() {
		t.Run(name, func(t *testing.T) {
			cfg := Config{
				Algorithm: churnAlgorithm(t, name),
				Locality:  &LocalityConfig{Zone: "a", Region: "r1", SpillWhenLoaded: 1.5},
				Split:     []SplitRule{{Match: map[string]string{"version": "v2"}, Weight: 5}, {Match: map[string]string{"version": "v1"}, Weight: 95}},
			}
			e := locEngine(t, cfg, 13, nil, base(0)...)
			var stop atomic.Bool
			var wg sync.WaitGroup
			var picks, outside atomic.Int64
			errs := make(chan error, pickers)
			for g := range pickers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; !stop.Load(); i++ {
						info := PickInfo{}
						if i%3 == g%3 {
							info = PickInfo{Hash: uint64(i), HasHash: true}
						}
						ep, err := e.Pick(info)
						if err != nil {
							errs <- err
							return
						}
						if ep.Info().Metadata["version"] == "v3" {
							outside.Add(1)
						}
						picks.Add(1)
						e.Done(ep, outcome.Outcome{Class: outcome.Success})
					}
				}()
			}
			for round := range 40 {
				// Let picks run on each state (polling: picks only count).
				for from := picks.Load(); picks.Load() < from+50 && len(errs) == 0; {
					runtime.Gosched()
				}
				switch round % 4 {
				case 0:
					e.Update(base(round))
				case 1:
					for i := 1; i < 24; i += 2 {
						e.SetCondition(fmt.Sprintf("10.7.0.%d:80", i+1), Ejected, round%8 == 1)
					}
				case 2:
					c := cfg
					c.Split = []SplitRule{{Match: map[string]string{"version": "v2"}, Weight: round}, {Match: map[string]string{"version": "v1"}, Weight: 100 - round}}
					if err := e.Reconfigure(c); err != nil {
						t.Fatal(err)
					}
				case 3:
					e.SetCondition("10.7.0.2:80", Unhealthy, round%8 == 3) // a v2 endpoint
				}
			}
			stop.Store(true)
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatalf("pick failed during churn: %v", err)
			}
			if picks.Load() == 0 {
				t.Fatal("no picks ran")
			}
			if n := outside.Load(); n != 0 {
				t.Errorf("%d picks went to v3, outside the split", n)
			}
			for _, ep := range e.Endpoints() {
				if ep.InFlight() != 0 {
					t.Errorf("%s: %d in flight after the churn", ep.Address(), ep.InFlight())
				}
			}
		})
	}
}
