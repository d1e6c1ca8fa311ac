package balancer

import (
	"fmt"
	"testing"

	"github.com/lodestar-go/lodestar/resolver"
)

// BenchmarkRebuild measures a snapshot rebuild (the eligible set and a new
// picker, or the picker's Update) at 10,000 endpoints: ops go in pairs, one
// ejecting an endpoint and the next readmitting it, each published (settled steps past the pace, which
// would otherwise fold most ops into one paced rebuild a millisecond).
//
//	go test ./balancer/ -run '^$' -bench 'BenchmarkRebuild$' -benchmem -benchtime=2000x
func BenchmarkRebuild(b *testing.B) {
	const n = 10000
	for _, c := range []struct {
		alg      func() Algorithm
		weighted bool
	}{
		{func() Algorithm { return &RoundRobin{} }, false},
		{func() Algorithm { return &WeightedRoundRobin{} }, true},
		{func() Algorithm { return &Random{} }, false},
		{func() Algorithm { return &WeightedRandom{} }, true},
		{func() Algorithm { return &LeastRequest{} }, false},
		{func() Algorithm { return &PeakEWMA{} }, false},
		{func() Algorithm { return &RingHash{} }, false},
		{func() Algorithm { return &Maglev{} }, false},
		{func() Algorithm { return &BoundedLoad{} }, false},
	} {
		b.Run(fmt.Sprintf("%s/n=%d", c.alg().Name(), n), func(b *testing.B) {
			e, err := NewEngine(Config{Algorithm: c.alg()}, Options{Logger: quietLogs})
			if err != nil {
				b.Fatal(err)
			}
			defer e.Close()
			eps := make([]resolver.Endpoint, n)
			for i := range eps {
				eps[i] = resolver.Endpoint{Address: addr(i)}
				if c.weighted {
					eps[i].Weight = uint32(i%4 + 1)
				}
			}
			e.Update(eps)
			e.mu.Lock()
			before := e.rebuilds
			e.mu.Unlock()
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				// Ops in pairs: eject an endpoint, then readmit the same one.
				e.SetCondition(addr(i/2%n), Ejected, i&1 == 0)
				e.settled()
			}
			b.StopTimer()
			e.mu.Lock()
			got := e.rebuilds - before
			e.mu.Unlock()
			if got != uint64(b.N) {
				b.Fatalf("%d rebuilds for %d changes", got, b.N)
			}
		})
	}
}
