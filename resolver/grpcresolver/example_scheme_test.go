package grpcresolver_test

import (
	"fmt"

	_ "github.com/lodestar-go/lodestar/resolver/dns" // registers the "dns" and "srv" feeds
	"github.com/lodestar-go/lodestar/resolver/grpcresolver"
)

// Lodestar's feed schemes keep their names as gRPC schemes, except where grpc
// owns the name already: lodestar's "dns" feed is "lodestar-dns" for gRPC.
func ExampleSchemeFor() {
	for _, feed := range []string{"static", "srv", "dns"} {
		scheme, ok := grpcresolver.SchemeFor(feed)
		fmt.Println(feed, "→", scheme, ok)
	}
	// Output:
	// static → static true
	// srv → srv true
	// dns → lodestar-dns true
}
