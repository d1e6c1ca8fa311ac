package benchmarks

// Locality benchmarks: pick + report through balancer.Engine with locality,
// priority tiers and a canary split all on (the JSON: caller zone
// and region, minLocalEndpoints 2, load-aware spill 1.5, overprovisioning
// 1.4, a 5/95 split on "version"), side by side in one run with the plain
// algorithm over the same endpoints. The endpoints are labelled: half are
// priority 0 (region us-east-1), half priority 1 (us-west-2), each tier in
// two zones, and versions v1/v2 alternate, so the grouped picker draws a
// subset, a tier and a zone group for every pick (and load-aware spill
// keeps its sampled refresh running). Run them with
//
//	go test ./benchmarks/ -run '^$' -bench Locality -benchmem -benchtime=200ms -count=1
//
// Names are Locality/<algorithm>/n=<endpoints>/loc=<plain|on>/<serial|parallel>;
// compare with benchstat -col /loc.

import (
	"fmt"
	"testing"
	"time"

	lb "github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/resolver"
)

const localityJSON = `"locality": {"zone": "us-east-1a", "region": "us-east-1", "minLocalEndpoints": 2, "spillWhenLoaded": 1.5},
  "priority": {"overprovisioningFactor": 1.4},
  "split": [{"match": {"version": "v2"}, "weight": 5}, {"match": {"version": "v1"}, "weight": 95}]`

// localityEndpoints labels n endpoints: tier by i%2, zone by i/2%2, version
// by i/4%2.
func localityEndpoints(n int) []resolver.Endpoint {
	eps := make([]resolver.Endpoint, n)
	for i := range eps {
		region := []string{"us-east-1", "us-west-2"}[i%2]
		eps[i] = resolver.Endpoint{
			Address:  pickAddr(i),
			Priority: i % 2,
			Locality: resolver.Locality{Region: region, Zone: region + []string{"a", "b"}[i/2%2]},
			Metadata: map[string]string{"version": []string{"v1", "v2"}[i/4%2]},
		}
	}
	return eps
}

func BenchmarkLocality(b *testing.B) {
	for _, alg := range []string{"round_robin", "least_request", "random"} {
		for _, n := range []int{16, 1000} {
			for _, v := range []string{"plain", "on"} {
				b.Run(fmt.Sprintf("%s/n=%d/loc=%s", alg, n, v), func(b *testing.B) {
					js := fmt.Sprintf(`{"algorithm": %q`, alg)
					if v == "on" {
						js += ", " + localityJSON
					}
					cfg, err := lb.ParseConfig([]byte(js + "}"))
					if err != nil {
						b.Fatal(err)
					}
					eng, err := lb.NewEngine(cfg, lb.Options{})
					if err != nil {
						b.Fatal(err)
					}
					defer eng.Close()
					eng.Update(localityEndpoints(n))
					b.Run("serial", func(b *testing.B) {
						b.ReportAllocs()
						done := outcome.Outcome{Class: outcome.Success, Latency: time.Millisecond}
						for i := 0; i < b.N; i++ {
							ep, err := eng.Pick(lb.PickInfo{})
							if err != nil {
								b.Fatal(err)
							}
							eng.Done(ep, done)
						}
					})
					b.Run("parallel", func(b *testing.B) {
						b.ReportAllocs()
						b.RunParallel(func(pb *testing.PB) {
							done := outcome.Outcome{Class: outcome.Success, Latency: time.Millisecond}
							for pb.Next() {
								ep, err := eng.Pick(lb.PickInfo{})
								if err != nil {
									b.Error(err)
									return
								}
								eng.Done(ep, done)
							}
						})
					})
					// With locality on, every pick stayed in the caller's
					// zone (all healthy); the plain run spreads.
					if v == "on" {
						for _, ep := range eng.Endpoints() {
							if ep.Info().Locality.Zone != "us-east-1a" && ep.Outcomes(outcome.Success) != 0 {
								b.Fatalf("%s (%s) got picks with locality on", ep.Address(), ep.Info().Locality.Zone)
							}
						}
					}
				})
			}
		}
	}
}
