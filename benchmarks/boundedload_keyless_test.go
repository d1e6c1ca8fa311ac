package benchmarks

// bounded_load's picks by kind of request (issue 15: the keyless fallback):
// keyless and keyed, under each fallback, equal and unequal (1-4) weights, at
// 100 and 10,000 endpoints, through the engine (pick plus Done), serial. "idle"
// has nothing else in flight, so the cap never bites; "loaded" holds n keyless
// requests for the whole run, so the cap is ⌈1.25·(n+1)/n⌉ = 2 and an
// endpoint already holding two is skipped. Run with
//
//	go test ./benchmarks/ -run '^$' -bench 'BoundedLoadKeyless' -benchmem -benchtime=200ms
//
// Names are BoundedLoadKeyless/<fallback>/<equal|weighted>/<idle|loaded>/<keyless|keyed>/n=<endpoints>.

import (
	"fmt"
	"testing"
	"time"

	lb "github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
)

func BenchmarkBoundedLoadKeyless(b *testing.B) {
	for _, fb := range []string{lb.FallbackRandom, lb.FallbackRoundRobin} {
		for _, weighted := range []bool{false, true} {
			wname := "equal"
			if weighted {
				wname = "weighted"
			}
			for _, loaded := range []bool{false, true} {
				lname := "idle"
				if loaded {
					lname = "loaded"
				}
				for _, keyed := range []bool{false, true} {
					kname := "keyless"
					if keyed {
						kname = "keyed"
					}
					for _, n := range []int{100, 10000} {
						b.Run(fmt.Sprintf("%s/%s/%s/%s/n=%d", fb, wname, lname, kname, n), func(b *testing.B) {
							benchBoundedLoad(b, fb, weighted, loaded, keyed, n)
						})
					}
				}
			}
		}
	}
}

func benchBoundedLoad(b *testing.B, fb string, weighted, loaded, keyed bool, n int) {
	eng := newPickEngine(b, &lb.BoundedLoad{Fallback: fb}, n, weighted)
	done := outcome.Outcome{Class: outcome.Success, Latency: time.Millisecond, At: time.Now()}
	if loaded {
		held := make([]*lb.Endpoint, n)
		for i := range held {
			ep, err := eng.Pick(lb.PickInfo{})
			if err != nil {
				b.Fatal(err)
			}
			held[i] = ep
		}
		b.Cleanup(func() {
			for _, ep := range held {
				eng.Done(ep, done)
			}
		})
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		info := lb.PickInfo{}
		if keyed {
			info = lb.PickInfo{Hash: lb.HashKey(pickKeys[i&pickKeyMask]), HasHash: true}
		}
		ep, err := eng.Pick(info)
		if err != nil {
			b.Fatal(err)
		}
		eng.Done(ep, done)
	}
}
