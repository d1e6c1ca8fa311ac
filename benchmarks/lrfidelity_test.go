package benchmarks

// least_request at low concurrency (issue 15): pick + report through the
// engine for the plain form (equal weights), the weighted form (weights 1-4)
// and a ramping set (equal weights, every endpoint in an hour-long slow
// start), at 10 and 1,000 endpoints, with 0 or 4 requests held open (a
// closed loop: each pick is added to the open ones and the oldest is
// reported, so that the weighted rule compares real loads, not ties). Run
// with
//
//	go test ./benchmarks/ -run '^$' -bench LeastRequestLowConcurrency -benchmem -benchtime=200ms

import (
	"fmt"
	"testing"
	"time"

	lb "github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
)

func BenchmarkLeastRequestLowConcurrency(b *testing.B) {
	for _, kind := range []string{"plain", "weighted", "ramping"} {
		for _, n := range []int{10, 1000} {
			for _, open := range []int{0, 4} {
				b.Run(fmt.Sprintf("%s/n=%d/open=%d", kind, n, open), func(b *testing.B) {
					alg := &lb.LeastRequest{}
					if kind == "ramping" {
						alg.SlowStart = lb.SlowStart{Window: time.Hour}
					}
					eng := newPickEngine(b, alg, n, kind == "weighted")
					ring := make([]*lb.Endpoint, open+1)
					done := outcome.Outcome{Class: outcome.Success, Latency: time.Millisecond}
					for i := range open {
						ep, err := eng.Pick(lb.PickInfo{})
						if err != nil {
							b.Fatal(err)
						}
						ring[i] = ep
					}
					b.ReportAllocs()
					b.ResetTimer()
					for i := 0; i < b.N; i++ {
						if i&1023 == 0 {
							done.At = time.Now()
						}
						ep, err := eng.Pick(lb.PickInfo{})
						if err != nil {
							b.Fatal(err)
						}
						slot := (i + open) % len(ring)
						ring[slot] = ep
						oldest := (i) % len(ring)
						if open == 0 {
							oldest = slot
						}
						eng.Done(ring[oldest], done)
					}
					b.StopTimer()
					for j := 1; j <= open; j++ { // the ones still open
						eng.Done(ring[(b.N+j)%len(ring)], done)
					}
				})
			}
		}
	}
}
