package balancer_test

import (
	"fmt"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/resolver"
)

// A caller in us-east-1a with a primary (priority 0) and a passive site
// (priority 1): requests stay in the caller's zone while it can serve them,
// and move to the passive site when the primary is out.
func ExampleLocalityConfig() {
	cfg, err := balancer.ParseConfig([]byte(`{
	  "locality": {"zone": "us-east-1a", "region": "us-east-1"},
	  "priority": {"overprovisioningFactor": 1.4}
	}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	e, err := balancer.NewEngine(cfg, balancer.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer e.Close()
	e.Update([]resolver.Endpoint{
		{Address: "10.0.1.1:8080", Priority: 0, Locality: resolver.Locality{Region: "us-east-1", Zone: "us-east-1a"}},
		{Address: "10.0.2.1:8080", Priority: 0, Locality: resolver.Locality{Region: "us-east-1", Zone: "us-east-1b"}},
		{Address: "10.9.1.1:8080", Priority: 1, Locality: resolver.Locality{Region: "us-west-2", Zone: "us-west-2a"}},
	})
	pick := func() string {
		ep, err := e.Pick(balancer.PickInfo{})
		if err != nil {
			return err.Error()
		}
		defer e.Done(ep, outcome.Outcome{Class: outcome.Success})
		return ep.Address()
	}
	fmt.Println("healthy:", pick(), pick())
	e.SetCondition("10.0.1.1:8080", balancer.Ejected, true)
	e.SetCondition("10.0.2.1:8080", balancer.Ejected, true)
	fmt.Println("primary out:", pick(), pick())
	// Output:
	// healthy: 10.0.1.1:8080 10.0.1.1:8080
	// primary out: 10.9.1.1:8080 10.9.1.1:8080
}
