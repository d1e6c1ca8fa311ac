package dns_test

import (
	"context"
	"fmt"
	"time"

	"github.com/lodestar-go/lodestar/resolver"
	"github.com/lodestar-go/lodestar/resolver/dns"
)

type printSink struct{}

func (printSink) Update(eps []resolver.Endpoint) {
	for _, ep := range eps {
		fmt.Println(ep.Address, "weight", ep.EffectiveWeight(), "tier", ep.Priority)
	}
}

func (printSink) ReportError(err error) { fmt.Println("error:", err) }

// A feed of SRV records, asking a given DNS server. In a program, pass the
// target to lodestar.Service.Target or the engine instead of watching by hand.
func Example() {
	f, err := resolver.Parse("srv://127.0.0.1:5353/_http._tcp.api.internal.?maxInterval=10s")
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = f.Watch(ctx, printSink{})
}

// Bad targets are rejected with an error that names what is wrong.
func ExampleParseTarget() {
	_, err := dns.ParseTarget("dns:///api.internal")
	fmt.Println(err)
	_, err = dns.ParseTarget("srv:///_http._tcp.api.internal?refresh=5s")
	fmt.Println(err)
	// Output:
	// dns target: dns feed: "api.internal": want name:port: address api.internal: missing port in address
	// srv target: unknown parameter "refresh" (known: network, minInterval, maxInterval, timeout)
}
