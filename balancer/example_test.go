package balancer_test

import (
	"fmt"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/resolver"
)

// The same JSON configures the HTTP transport and the gRPC policy; errors name
// the field and the valid range.
func ExampleParseConfig() {
	cfg, err := balancer.ParseConfig([]byte(`{"algorithm": {"least_request": {"choiceCount": 3}}, "waitForEndpoints": "2s"}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(cfg.Algorithm.Name(), cfg.Algorithm.(*balancer.LeastRequest).ChoiceCount, cfg.WaitForEndpoints)

	_, err = balancer.ParseConfig([]byte(`{"algorithm": {"least_request": {"choiceCount": 1}}}`))
	fmt.Println(err)
	// Output:
	// least_request 3 2s
	// lodestar config: algorithm least_request: choiceCount: 1 is out of range [2, 100]
}

// An Engine used directly: membership in, picks out, outcomes back.
func ExampleEngine() {
	eng, err := balancer.NewEngine(balancer.Config{Algorithm: &balancer.RoundRobin{}}, balancer.Options{
		Service: "users",
		Rand:    func() uint64 { return 0 }, // start the rotation at the first endpoint
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer eng.Close()

	if _, err := eng.Pick(balancer.PickInfo{}); err != nil {
		fmt.Println(err)
	}
	eng.Update([]resolver.Endpoint{{Address: "10.0.0.1:80"}, {Address: "10.0.0.2:80"}})
	for range 3 {
		ep, err := eng.Pick(balancer.PickInfo{})
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(ep.Address(), "in flight:", ep.InFlight())
		eng.Done(ep, outcome.Outcome{Class: outcome.Success})
	}
	// Output:
	// lodestar: no endpoints available for "users": discovery has found no endpoints
	// 10.0.0.1:80 in flight: 1
	// 10.0.0.2:80 in flight: 1
	// 10.0.0.1:80 in flight: 1
}
