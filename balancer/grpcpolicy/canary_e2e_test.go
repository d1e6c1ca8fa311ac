package grpcpolicy_test

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"
	gresolver "google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/lodestar-go/lodestar/resolver"
	"github.com/lodestar-go/lodestar/resolver/grpcresolver"
)

// The canary split through the gRPC door (policy seed 12): the split is in
// the service config the resolver sends; v2 gets 5% of 10,000 RPCs within
// ±2 points; a new service config with 50/50 arrives while 4 goroutines make
// RPCs (the policy reconfigures its engine in place), none fails, and the
// next 10,000 RPCs split 50/50 within ±2 points.
func TestE2ECanarySplitGRPC(t *testing.T) {
	registerMultiSitePolicy()
	ss := startServers(t, 4)
	version := map[string]string{}
	var eps []gresolver.Endpoint
	for i, s := range ss {
		v := []string{"v1", "v1", "v1", "v2"}[i]
		version[s.addr] = v
		eps = append(eps, grpcresolver.ToGRPC(resolver.Endpoint{Address: s.addr, Metadata: map[string]string{"version": v}}))
	}
	js := `{"split": [{"match": {"version": "v2"}, "weight": 5}, {"match": {"version": "v1"}, "weight": 95}]}`
	sc := func(cfg string) string {
		return fmt.Sprintf(`{"loadBalancingConfig": [{%q: %s}]}`, multiSitePolicy, cfg)
	}
	r := manual.NewBuilderWithScheme("canary")
	built := make(chan struct{})
	r.BuildCallback = func(gresolver.Target, gresolver.ClientConn, gresolver.BuildOptions) { close(built) }
	cc := dial(t, "canary:///canary", sc(`{}`), grpc.WithResolvers(r))
	client := testgrpc.NewTestServiceClient(cc)
	cc.Connect()
	<-built
	r.UpdateState(gresolver.State{Endpoints: eps, ServiceConfig: r.CC().ParseServiceConfig(sc(js))})
	eventually(t, "4 eligible endpoints", 10*time.Second, func() bool {
		eng := multiSiteEngs.get("canary")
		return eng != nil && len(eng.Eligible()) == 4
	})
	call := func() (string, error) {
		var p peer.Peer
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := client.EmptyCall(ctx, &testgrpc.Empty{}, grpc.Peer(&p))
		if err != nil {
			return "", err
		}
		return version[p.Addr.String()], nil
	}
	v2Share := func(n int) float64 {
		v2 := 0
		for range n {
			v, err := call()
			if err != nil {
				t.Fatal(err)
			}
			if v == "v2" {
				v2++
			}
		}
		return float64(v2) / float64(n)
	}
	if got := v2Share(10_000); math.Abs(got-0.05) > 0.02 {
		t.Fatalf("5/95 split: %.4f to v2, want 0.05±0.02", got)
	}
	var stop atomic.Bool
	var failed, sent atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				if _, err := call(); err != nil {
					failed.Add(1)
				}
				sent.Add(1)
			}
		}()
	}
	for sent.Load() < 200 { // RPCs are running (polling a counter)
		runtime.Gosched()
	}
	js2 := strings.NewReplacer(`"weight": 5}`, `"weight": 50}`, `"weight": 95}`, `"weight": 50}`).Replace(js)
	r.UpdateState(gresolver.State{Endpoints: eps, ServiceConfig: r.CC().ParseServiceConfig(sc(js2))})
	for from := sent.Load(); sent.Load() < from+200; {
		runtime.Gosched()
	}
	stop.Store(true)
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d of %d concurrent RPCs failed across the live weight change", n, sent.Load())
	}
	if got := v2Share(10_000); math.Abs(got-0.5) > 0.02 {
		t.Fatalf("after the change to 50/50: %.4f to v2, want 0.5±0.02", got)
	}
}
