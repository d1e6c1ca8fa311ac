package grpcpolicy_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	gresolver "google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/lodestar-go/lodestar/balancer"
)

// churnChannel is one client channel of the churn test and what its RPCs
// came to.
type churnChannel struct {
	name     string
	service  string // the lodestar engine's name, "" for grpc's round_robin
	r        *manual.Resolver
	cc       *grpc.ClientConn
	ok       atomic.Int64
	failed   atomic.Int64
	firstErr atomic.Value
}

// Issue 14: lodestar and grpc's round_robin side by side, against the same
// real servers (with the standard health service and client-side health
// checking), while the endpoint set is replaced and reordered in a loop. RPCs
// are fail-fast: a routine resolver change must fail none of them.
func TestChurnFailsNoRPCs(t *testing.T) {
	// At least minChanges endpoint set changes, and more, up to maxChanges,
	// while the time budget lasts (the race detector slows connections down).
	const servers, workers, minChanges, maxChanges, budget = 6, 4, 60, 400, 3 * time.Second
	ss := startServers(t, servers)
	registerTestPolicy()
	a := addrs(ss)
	ep := func(is ...int) gresolver.Endpoint {
		var e gresolver.Endpoint
		for _, i := range is {
			e.Addresses = append(e.Addresses, gresolver.Address{Addr: a[i]})
		}
		return e
	}
	steps := []struct {
		what string
		eps  []gresolver.Endpoint
	}{
		{"three", []gresolver.Endpoint{ep(0), ep(1), ep(2)}},
		{"all three replaced", []gresolver.Endpoint{ep(3), ep(4), ep(5)}},
		{"one of them", []gresolver.Endpoint{ep(4)}},
		{"replaced by a two-address endpoint", []gresolver.Endpoint{ep(0, 1)}},
		{"its addresses reordered", []gresolver.Endpoint{ep(1, 0)}},
		{"two two-address endpoints", []gresolver.Endpoint{ep(2, 3), ep(4, 5)}},
		{"both reordered", []gresolver.Endpoint{ep(3, 2), ep(5, 4)}},
		{"one kept, one replaced", []gresolver.Endpoint{ep(5, 4), ep(0)}},
		{"reordered list", []gresolver.Endpoint{ep(0), ep(4, 5)}},
		{"one replaced by another", []gresolver.Endpoint{ep(1)}},
	}
	health := `,"healthCheckConfig":{"serviceName":""}`
	chans := []*churnChannel{
		{name: "lodestar round_robin", service: "churn-rr", r: manual.NewBuilderWithScheme("churn1")},
		{name: "lodestar least_request", service: "churn-lr", r: manual.NewBuilderWithScheme("churn2")},
		{name: "grpc round_robin", r: manual.NewBuilderWithScheme("churn3")},
	}
	configs := []string{
		`{"loadBalancingConfig":[{"lodestar_test":{"algorithm":"round_robin"}}]` + health + `}`,
		`{"loadBalancingConfig":[{"lodestar_test":{"algorithm":"least_request"}}]` + health + `}`,
		`{"loadBalancingConfig":[{"round_robin":{}}]` + health + `}`,
	}
	for i, ch := range chans {
		ch.r.InitialState(gresolver.State{Endpoints: steps[0].eps})
		target := ch.r.Scheme() + ":///" + ch.service
		if ch.service == "" {
			target = ch.r.Scheme() + ":///churn-grpc"
		}
		ch.cc = dial(t, target, configs[i], grpc.WithResolvers(ch.r))
		ch.cc.Connect() // builds the resolver: UpdateState is safe from here on
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, ch := range chans {
		client := testgrpc.NewTestServiceClient(ch.cc)
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					_, err := client.EmptyCall(ctx, &testgrpc.Empty{}) // fail-fast
					cancel()
					if err != nil {
						ch.failed.Add(1)
						ch.firstErr.CompareAndSwap(nil, err)
					} else {
						ch.ok.Add(1)
					}
				}
			}()
		}
	}
	defer func() { // on a Fatal too
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()

	// progress waits until every channel has completed n more RPCs: the set
	// just pushed is in use (or being connected to) before the next change.
	progress := func(step string, n int64) {
		t.Helper()
		base := make([]int64, len(chans))
		for i, ch := range chans {
			base[i] = ch.ok.Load() + ch.failed.Load()
		}
		eventually(t, fmt.Sprintf("%d RPCs on every channel after %q", n, step), 10*time.Second, func() bool {
			for i, ch := range chans {
				if ch.ok.Load()+ch.failed.Load() < base[i]+n {
					return false
				}
			}
			return true
		})
	}
	progress(steps[0].what, 50)

	start := time.Now()
	var twoAddr map[string]*balancer.Endpoint // lodestar's engine endpoint for [a0 a1], by service
	changes := 0
	for i := 1; i <= maxChanges && (i <= minChanges || time.Since(start) < budget); i++ {
		changes = i
		step := steps[i%len(steps)]
		for _, ch := range chans {
			ch.r.UpdateState(gresolver.State{Endpoints: step.eps})
		}
		// Reordering keeps lodestar's endpoint, statistics included.
		switch step.what {
		case "replaced by a two-address endpoint":
			twoAddr = map[string]*balancer.Endpoint{}
			for _, ch := range chans[:2] {
				twoAddr[ch.service] = testEngines.get(ch.service).Endpoint(min(a[0], a[1]))
			}
		case "its addresses reordered":
			for _, ch := range chans[:2] {
				if got := testEngines.get(ch.service).Endpoint(min(a[0], a[1])); got == nil || got != twoAddr[ch.service] {
					t.Fatalf("%s: reordering [a0 a1] gave endpoint %p, want the same %p", ch.name, got, twoAddr[ch.service])
				}
			}
		}
		progress(step.what, 20)
	}
	elapsed := time.Since(start)
	close(stop)
	wg.Wait()

	for _, ch := range chans {
		t.Logf("%-22s %d RPCs, %d failed, over %d endpoint set changes in %v", ch.name, ch.ok.Load()+ch.failed.Load(), ch.failed.Load(), changes, elapsed.Round(time.Millisecond))
		if n := ch.failed.Load(); n != 0 {
			t.Errorf("%s: %d of %d RPCs failed across membership changes; first: %v", ch.name, n, n+ch.ok.Load(), ch.firstErr.Load())
		}
	}
	// Every request lodestar counted in flight was reported.
	for _, ch := range chans[:2] {
		eng := testEngines.get(ch.service)
		eventually(t, ch.name+": in-flight counts back to 0", 5*time.Second, func() bool {
			for _, e := range eng.Endpoints() {
				if e.InFlight() != 0 {
					return false
				}
			}
			return true
		})
	}
}
