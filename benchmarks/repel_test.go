package benchmarks

// Failure weight benchmarks (issue 17): pick + report through the engine for
// the algorithms that score load, on a fleet where no endpoint has failed
// (the pick reads each sampled endpoint's failure word, finds zero, and reads
// no clock) and on one where an endpoint fails every request at once (its
// word is non-zero: picks that sample it read the clock and decay it, and
// its Done takes the slow path). Failure accrual is off, so nothing is
// ejected and both rows measure the scores alone. Run with
//
//	go test ./benchmarks/ -run '^$' -bench FailureWeight -benchmem -benchtime=200ms

import (
	"fmt"
	"testing"
	"time"

	lb "github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/resolver"
)

func BenchmarkFailureWeight(b *testing.B) {
	for _, alg := range []func() lb.Algorithm{
		func() lb.Algorithm { return &lb.LeastRequest{} },
		func() lb.Algorithm { return &lb.BoundedLoad{} },
	} {
		for _, failing := range []bool{false, true} {
			name := fmt.Sprintf("%s/failing=%v", alg().Name(), failing)
			b.Run(name, func(b *testing.B) {
				eng, err := lb.NewEngine(lb.Config{Algorithm: alg(), FailureAccrual: new(false)}, lb.Options{})
				if err != nil {
					b.Fatal(err)
				}
				defer eng.Close()
				eps := make([]resolver.Endpoint, 10)
				for i := range eps {
					eps[i] = resolver.Endpoint{Address: pickAddr(i)}
				}
				eng.Update(eps)
				bad := eng.Endpoint(pickAddr(0))
				ok := outcome.Outcome{Class: outcome.Success, Latency: time.Millisecond}
				fail := outcome.Outcome{Class: outcome.ConnectError, Latency: time.Microsecond}
				b.ReportAllocs()
				for i := 0; i < b.N; i++ {
					if i&1023 == 0 {
						ok.At = time.Now()
						fail.At = ok.At
					}
					ep, err := eng.Pick(lb.PickInfo{})
					if err != nil {
						b.Fatal(err)
					}
					if failing && ep == bad {
						eng.Done(ep, fail)
					} else {
						eng.Done(ep, ok)
					}
				}
			})
		}
	}
}
