package lodestar_test

import (
	"fmt"
	"math"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/resolver"
)

// The canary split through the HTTP door (seed 7): v2 gets 5% and v1 95% of
// 10,000 requests within ±2 points; then the weights change to 50/50 with
// Engine.Reconfigure while 4 goroutines send requests, none fails, and the
// next 10,000 requests split 50/50 within ±2 points.
func TestE2ECanarySplitHTTP(t *testing.T) {
	var eps []resolver.Endpoint
	version := map[string]string{}
	for i, v := range []string{"v1", "v1", "v1", "v2"} {
		f := newFlaky(t, fmt.Sprintf("%s-%d", v, i))
		version[f.name] = v
		eps = append(eps, resolver.Endpoint{Address: f.addr(), Metadata: map[string]string{"version": v}})
	}
	js := `{"split": [{"match": {"version": "v2"}, "weight": 5}, {"match": {"version": "v1"}, "weight": 95}]}`
	cfg, err := balancer.ParseConfig([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	st, err := resolver.NewStatic(eps...)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := lodestar.NewTransport(lodestar.Options{Rand: seeded(7), Services: map[string]lodestar.Service{"svc": {Feed: st, Config: cfg}}})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	c := &http.Client{Transport: tr}
	v2Share := func(n int) float64 {
		v2 := 0
		for range n {
			body, code, err := send(c)
			if err != nil || code != http.StatusOK {
				t.Fatalf("status %d: %v", code, err)
			}
			if version[body] == "v2" {
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
				if _, code, err := send(c); err != nil || code != http.StatusOK {
					failed.Add(1)
				}
				sent.Add(1)
			}
		}()
	}
	for sent.Load() < 200 { // requests are running (polling a counter)
		runtime.Gosched()
	}
	cfg2, err := balancer.ParseConfig([]byte(strings.NewReplacer(`"weight": 5}`, `"weight": 50}`, `"weight": 95}`, `"weight": 50}`).Replace(js)))
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Engine("svc").Reconfigure(cfg2); err != nil {
		t.Fatal(err)
	}
	for from := sent.Load(); sent.Load() < from+200; {
		runtime.Gosched()
	}
	stop.Store(true)
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d of %d concurrent requests failed across the live weight change", n, sent.Load())
	}
	if got := v2Share(10_000); math.Abs(got-0.5) > 0.02 {
		t.Fatalf("after the change to 50/50: %.4f to v2, want 0.5±0.02", got)
	}
}
