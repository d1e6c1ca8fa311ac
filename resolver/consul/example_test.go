package consul_test

import (
	"context"
	"fmt"
	"time"

	"github.com/lodestar-go/lodestar/resolver"
	"github.com/lodestar-go/lodestar/resolver/consul"
)

type printSink struct{}

func (printSink) Update(eps []resolver.Endpoint) {
	for _, ep := range eps {
		fmt.Println(ep.Address, "weight", ep.EffectiveWeight(), "zone", ep.Locality.Zone, "version", ep.Metadata["version"])
	}
}

func (printSink) ReportError(err error) { fmt.Println("error:", err) }

// Watching the passing instances tagged "v2" of the service "web" through the
// local agent. In a program, give the target to lodestar.Service.Target (or a
// gRPC dial target) instead of watching by hand.
func Example() {
	f, err := resolver.Parse("consul://127.0.0.1:8500/web?tag=v2&stale=true")
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = f.Watch(ctx, printSink{})
}

// The same feed built from Options, with the locality read from the "az"
// metadata key and warning instances served at their warning weight.
func ExampleNew() {
	f, err := consul.New(consul.Options{
		Service:        "web",
		Address:        "127.0.0.1:8500",
		Tags:           []string{"v2"},
		ZoneKey:        "az",
		IncludeWarning: true,
		WaitTime:       time.Minute,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(f)
	// Output: consul feed "web" at 127.0.0.1:8500
}

// Bad targets are rejected with an error naming the bad part.
func ExampleParseTarget() {
	_, err := consul.ParseTarget("consul://127.0.0.1:8500/web?stale=sometimes")
	fmt.Println(err)
	_, err = consul.ParseTarget("consul://127.0.0.1:8500/web?tags=v2")
	fmt.Println(err)
	// Output:
	// consul target: parameter stale="sometimes": strconv.ParseBool: parsing "sometimes": invalid syntax
	// consul target: unknown parameter "tags" (known: tag, dc, near, filter, token, stale, passingOnly, ns, partition, zoneKey, regionKey, subzoneKey, priorityKey, wait)
}
