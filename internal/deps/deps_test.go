// Package deps pins the module's dependencies while the packages that use them
// are being written. It is deleted once they are all imported for real.
package deps

import (
	_ "github.com/hashicorp/consul/api"
	_ "github.com/hashicorp/consul/sdk/testutil"
	_ "github.com/miekg/dns"
	_ "github.com/sony/gobreaker/v2"
	_ "go.uber.org/goleak"
	_ "golang.org/x/time/rate"
	_ "google.golang.org/grpc"
	_ "google.golang.org/grpc/balancer/endpointsharding"
	_ "google.golang.org/grpc/health"
	_ "google.golang.org/grpc/interop/grpc_testing"
	_ "google.golang.org/grpc/balancer/weightedroundrobin"
	_ "google.golang.org/grpc/balancer/leastrequest"
	_ "google.golang.org/grpc/balancer/ringhash"
)
