package benchmarks

// Protection benchmarks: pick + report through balancer.Engine (Pick, then
// Done with a successful outcome, as BenchmarkPickers does) with the stage 2
// protections on, side by side with the plain algorithm in one run. Every
// protection is configured so that it never acts: outcomes are all successes
// (no ejection, breakers stay closed) and the in-flight limit is far above the
// requests in flight, so what is measured is what a protection costs a
// request that it lets through. Run them with
//
//	go test ./benchmarks/ -run '^$' -bench Protection -benchmem -benchtime=200ms -count=1
//
// Names are Protection/<algorithm>/n=<endpoints>/prot=<variant>/<serial|parallel>;
// compare the variants with benchstat -col /prot.

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	lb "github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/resolver"
)

// protectionVariant is one set of protections, as the JSON configuration a
// user would write (merged with the algorithm).
type protectionVariant struct {
	name string
	json string // the members after "algorithm", without braces
}

var protectionVariants = []protectionVariant{
	{"plain", ``},
	// Defaults: consecutive failures 5 (the gateway and local-origin
	// detectors are off), interval 10s, no interval detector.
	{"outlier", `"outlierDetection": {}`},
	// Every detector on: the interval detectors add the latency histogram to
	// Done; success rate and failure percentage read the interval counters
	// Done keeps anyway.
	{"outlier_all", `"outlierDetection": {"successRate": {}, "failurePercentage": {}, "latency": {}}`},
	// A limit that never bites: picks still go through admit (the gated path).
	{"limit", `"maxInFlightPerEndpoint": 1000`},
	// Closed breakers, default config: consecutive failures 5 and a failure
	// ratio of 0.5 over a 10s window, so every outcome goes through gobreaker.
	{"breaker", `"circuitBreaker": {}`},
	// Consecutive failures only: a success with no failure since the last one
	// skips gobreaker (one atomic load).
	{"breaker_consecutive", `"circuitBreaker": {"failureRatio": 0}`},
	{"all", `"outlierDetection": {"successRate": {}, "failurePercentage": {}, "latency": {}}, ` +
		`"maxInFlightPerEndpoint": 1000, "circuitBreaker": {}`},
}

var protectionAlgorithms = []string{"round_robin", "least_request"}

var protectionSizes = []int{10, 1000}

// protectionConfig returns the engine configuration of algorithm alg with v's
// protections, parsed as a user's JSON would be.
func protectionConfig(tb testing.TB, alg string, v protectionVariant) lb.Config {
	tb.Helper()
	js := fmt.Sprintf(`{"algorithm": %q`, alg)
	if v.json != "" {
		js += ", " + v.json
	}
	js += "}"
	cfg, err := lb.ParseConfig([]byte(js))
	if err != nil {
		tb.Fatalf("%s: %v", js, err)
	}
	return cfg
}

// newProtectedEngine returns an engine with cfg over n endpoints, closed when
// the benchmark ends.
func newProtectedEngine(tb testing.TB, cfg lb.Config, n int) *lb.Engine {
	tb.Helper()
	eng, err := lb.NewEngine(cfg, lb.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { eng.Close() })
	eps := make([]resolver.Endpoint, n)
	for i := range eps {
		eps[i] = resolver.Endpoint{Address: pickAddr(i)}
	}
	eng.Update(eps)
	checkUntouched(tb, eng, n)
	return eng
}

// checkUntouched fails tb unless all n endpoints are still eligible and under
// no condition: the protections must not have acted, or the benchmark
// measured something else.
func checkUntouched(tb testing.TB, eng *lb.Engine, n int) {
	tb.Helper()
	if got := len(eng.Eligible()); got != n {
		tb.Fatalf("engine has %d eligible endpoints, want %d", got, n)
	}
	for _, ep := range eng.Endpoints() {
		if c := ep.Conditions(); c != 0 {
			tb.Fatalf("endpoint %s is under conditions %v", ep.Address(), c)
		}
	}
}

func BenchmarkProtection(b *testing.B) {
	for _, alg := range protectionAlgorithms {
		for _, n := range protectionSizes {
			for _, v := range protectionVariants {
				b.Run(fmt.Sprintf("%s/n=%d/prot=%s", alg, n, v.name), func(b *testing.B) {
					eng := newProtectedEngine(b, protectionConfig(b, alg, v), n)
					b.Run("serial", func(b *testing.B) {
						b.ReportAllocs()
						done := outcome.Outcome{Class: outcome.Success, Latency: time.Millisecond}
						for i := 0; i < b.N; i++ {
							if i&1023 == 0 {
								done.At = time.Now()
							}
							ep, err := eng.Pick(lb.PickInfo{})
							if err != nil {
								b.Fatal(err)
							}
							eng.Done(ep, done)
						}
						b.StopTimer()
						checkUntouched(b, eng, n)
					})
					b.Run("parallel", func(b *testing.B) {
						b.ReportAllocs()
						b.RunParallel(func(pb *testing.PB) {
							done := outcome.Outcome{Class: outcome.Success, Latency: time.Millisecond}
							for i := 0; pb.Next(); i++ {
								if i&1023 == 0 {
									done.At = time.Now()
								}
								ep, err := eng.Pick(lb.PickInfo{})
								if err != nil {
									b.Error(err)
									return
								}
								eng.Done(ep, done)
							}
						})
						b.StopTimer()
						checkUntouched(b, eng, n)
					})
				})
			}
		}
	}
}

// TestProtectionAllocatesNothing: with every protection variant of the
// benchmark on, a pick and its Done allocate nothing (once every endpoint has
// seen its first outcome).
func TestProtectionAllocatesNothing(t *testing.T) {
	for _, alg := range protectionAlgorithms {
		for _, v := range protectionVariants {
			eng := newProtectedEngine(t, protectionConfig(t, alg, v), 100)
			done := outcome.Outcome{Class: outcome.Success, Latency: time.Duration(rand.IntN(1000)+1) * time.Microsecond, At: time.Now()}
			run := func() {
				ep, err := eng.Pick(lb.PickInfo{})
				if err != nil {
					t.Fatal(err)
				}
				eng.Done(ep, done)
			}
			// An endpoint's first outcome of a class builds its metric
			// attribute set, once: warm every endpoint up first.
			for range 1000 {
				run()
			}
			allocs := testing.AllocsPerRun(1000, run)
			if allocs != 0 {
				t.Errorf("%s with %s: %.1f allocations per pick and Done", alg, v.name, allocs)
			}
			checkUntouched(t, eng, 100)
		}
	}
}
