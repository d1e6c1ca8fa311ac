// Package lodestar is a client-side load balancer for Go services, for HTTP and
// for gRPC.
//
// One engine (package balancer) keeps each service's endpoints, found by a
// discovery feed (package resolver: static lists, DNS, Consul), and picks one
// per request with a pluggable algorithm. Two front doors put it in front of
// your calls:
//
//   - HTTP: Transport, an http.RoundTripper. A request to http://users/v1/me
//     goes to an endpoint of the logical service "users".
//   - gRPC: an LB policy registered with grpc as "lodestar" and configured
//     through the service config's loadBalancingConfig, with resolver schemes
//     for the discovery feeds (package balancer/grpcpolicy, resolver/grpcresolver).
//
// The same configuration (balancer.Config, a Go struct that also reads from
// JSON) means the same thing through both doors.
//
// A minimal HTTP client over a static list:
//
//	tr, err := lodestar.NewTransport(lodestar.Options{
//		Services: map[string]lodestar.Service{
//			"users": {Target: "static:///127.0.0.1:8081,127.0.0.1:8082"},
//		},
//	})
//	if err != nil {
//		log.Fatal(err)
//	}
//	defer tr.Close()
//	client := &http.Client{Transport: tr}
//	resp, err := client.Get("http://users/v1/profile")
//
// The first request works: the static list is in force when NewTransport
// returns, and with other feeds a request waits for discovery's first answer.
//
// See docs/ARCHITECTURE.md for the design, and the examples directory for
// runnable programs.
package lodestar
