package main

import (
	"strings"
	"testing"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/resolver"
)

// The demo runs end to end (small load) and prints a table for every
// registered algorithm in which every request is accounted for; run fails if
// any request, the first ones included, got no answer.
func TestDemoRuns(t *testing.T) {
	var out strings.Builder
	if err := run(&out, 200, 4); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	for _, name := range balancer.Algorithms() {
		if !strings.Contains(s, "== "+name+"  (200 requests") {
			t.Errorf("no table for %s in:\n%s", name, s)
		}
	}
}

// The demo does not wait before its first request: with every algorithm, a
// fresh Transport's first request is answered, and so are 16 first requests
// sent at once on a fresh Transport.
func TestFirstRequestsNeedNoWait(t *testing.T) {
	var eps []resolver.Endpoint
	for i, s := range specs {
		srv := startBackend(s, uint64(i))
		defer srv.Close()
		eps = append(eps, resolver.Endpoint{Address: srv.Listener.Addr().String()})
	}
	for _, name := range balancer.Algorithms() {
		for _, n := range []int{1, 16} {
			for range 10 {
				alg, err := balancer.NewAlgorithm(name, nil)
				if err != nil {
					t.Fatal(err)
				}
				res, err := drive(alg, eps, n, n)
				if err != nil {
					t.Fatal(err)
				}
				if res.total != n || res.sendErrs != 0 {
					t.Fatalf("%s, %d first requests on a fresh Transport: %d sent, %d unanswered (first: %v)", name, n, res.total, res.sendErrs, res.firstErr)
				}
			}
		}
	}
}
