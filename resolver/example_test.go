package resolver_test

import (
	"fmt"

	"github.com/lodestar-go/lodestar/resolver"
)

// A feed named by a target URL, as lodestar.Service.Target and gRPC targets
// name them.
func ExampleParse() {
	feed, err := resolver.Parse("static:///10.0.0.1:8080,10.0.0.2:8080")
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, ep := range feed.(*resolver.Static).Endpoints() {
		fmt.Println(ep.Address, ep.EffectiveWeight())
	}

	_, err = resolver.Parse("static:///10.0.0.1")
	fmt.Println(err)
	// Output:
	// 10.0.0.1:8080 1
	// 10.0.0.2:8080 1
	// lodestar: target "static:///10.0.0.1": static target: endpoints[0]: endpoint address "10.0.0.1": want host:port: address 10.0.0.1: missing port in address
}

// A static feed whose set changes at run time; every watcher receives the new set.
func ExampleStatic_Set() {
	feed, _ := resolver.NewStatic(resolver.Endpoint{Address: "10.0.0.1:8080", Weight: 2})
	err := feed.Set(
		resolver.Endpoint{Address: "10.0.0.1:8080", Weight: 2},
		resolver.Endpoint{Address: "10.0.0.3:8080", Locality: resolver.Locality{Region: "eu", Zone: "eu-1a"}, Priority: 1},
	)
	fmt.Println(err, len(feed.Endpoints()), feed.Endpoints()[1].Locality)
	// Output:
	// <nil> 2 eu/eu-1a
}
