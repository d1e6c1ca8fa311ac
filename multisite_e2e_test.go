package lodestar_test

import (
	"context"

	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/resolver"
)

// siteServer is a real HTTP backend on 127.0.0.1 that can be stopped and
// started again on the same address: one endpoint of a multi-site fleet.
type siteServer struct {
	name   string
	addr   string
	prio   int
	loc    resolver.Locality
	served atomic.Int64

	mu   sync.Mutex
	srv  *http.Server
	done chan struct{}
}

func (s *siteServer) start(t *testing.T) {
	t.Helper()
	addr := s.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("%s: listen %s: %v", s.name, addr, err)
	}
	s.addr = lis.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			s.served.Add(1)
			io.WriteString(w, s.name)
		}
	})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(lis)
	}()
	s.mu.Lock()
	s.srv, s.done = srv, done
	s.mu.Unlock()
}

// stop closes the listener and every connection, and waits for Serve.
func (s *siteServer) stop() {
	s.mu.Lock()
	srv, done := s.srv, s.done
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.Close()
		<-done
	}
}

// multiSite starts 8 servers: two clouds (priority 0 in us-east-1, priority
// 1 in us-west-2) × two zones × two servers. The caller is in us-east-1a.
func multiSite(t *testing.T) []*siteServer {
	var ss []*siteServer
	for prio, region := range []string{"us-east-1", "us-west-2"} {
		for _, z := range []string{"a", "b"} {
			for i := range 2 {
				s := &siteServer{name: fmt.Sprintf("%s%s-%d", region, z, i+1), prio: prio,
					loc: resolver.Locality{Region: region, Zone: region + z}}
				s.start(t)
				t.Cleanup(s.stop)
				ss = append(ss, s)
			}
		}
	}
	return ss
}

func siteEndpoints(ss []*siteServer) []resolver.Endpoint {
	eps := make([]resolver.Endpoint, len(ss))
	for i, s := range ss {
		eps[i] = resolver.Endpoint{Address: s.addr, Priority: s.prio, Locality: s.loc, Metadata: map[string]string{"site": s.loc.Region}}
	}
	return eps
}

// attemptLog is the Transport's base: it records every attempt's endpoint
// and time before sending it.
type attemptLog struct {
	next http.RoundTripper
	mu   sync.Mutex
	log  []attempt
}

type attempt struct {
	addr string
	at   time.Time
}

func (a *attemptLog) RoundTrip(req *http.Request) (*http.Response, error) {
	a.mu.Lock()
	a.log = append(a.log, attempt{req.URL.Host, time.Now()})
	a.mu.Unlock()
	return a.next.RoundTrip(req)
}

func (a *attemptLog) since(t time.Time) []attempt {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []attempt
	for _, at := range a.log {
		if !at.at.Before(t) {
			out = append(out, at)
		}
	}
	return out
}

// multiSiteJSON is the HTTP door's configuration of the multi-site tests:
// the locality and priority sections (minLocalEndpoints 1, so that
// one local endpoint of two is still preferred and the capacity formula is
// what decides), retries and ejection, active checks (a stopped site stays
// out until it answers again) and a 1s slow start, which also ramps the
// failback.
const multiSiteJSON = `{
  "algorithm": {"round_robin": {"slowStart": {"window": "1s"}}},
  "locality": {"zone": "us-east-1a", "region": "us-east-1", "minLocalEndpoints": 1, "spillWhenLoaded": 1.5},
  "priority": {"overprovisioningFactor": 1.4},
  "retry": {"maxAttempts": 5},
  "outlierDetection": {"consecutiveLocalOriginFailures": 1, "interval": "50ms", "baseEjectionTime": "30s",
                       "maxEjectionPercent": 100, "endEjectionOnHealthy": true},
  "healthCheck": {"http": {"path": "/healthz"}, "interval": "50ms", "timeout": "250ms",
                  "unhealthyThreshold": 1, "healthyThreshold": 1}
}`

// The multi-site scenario through the HTTP door (seed 12): all healthy,
// every request stays in the caller's zone; half the local zone stopped,
// the local share is Envoy's u/l = (1/3)/(1/2) = 2/3 within ±3 points over
// 10,000 requests; the whole primary cloud stopped, no request fails and
// traffic is all on the passive site within a second; back, traffic returns
// gradually and ends all local again.
func TestE2EMultiSiteHTTP(t *testing.T) {
	ss := multiSite(t)
	cfg, err := balancer.ParseConfig([]byte(multiSiteJSON))
	if err != nil {
		t.Fatal(err)
	}
	st, err := resolver.NewStatic(siteEndpoints(ss)...)
	if err != nil {
		t.Fatal(err)
	}
	log := &attemptLog{next: http.DefaultTransport.(*http.Transport).Clone()}
	tr, err := lodestar.NewTransport(lodestar.Options{Base: log, Rand: seeded(12),
		Services: map[string]lodestar.Service{"svc": {Feed: st, Config: cfg}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	e := tr.Engine("svc")
	c := &http.Client{Transport: tr}
	byName := map[string]*siteServer{}
	for _, s := range ss {
		byName[s.name] = s
	}
	run := func(n int) (served map[string]int, failed int, first error) {
		served = map[string]int{}
		for range n {
			body, code, err := send(c)
			if err != nil || code != http.StatusOK {
				if failed++; first == nil {
					first = fmt.Errorf("status %d: %v", code, err)
				}
				continue
			}
			served[body]++
		}
		return served, failed, first
	}
	zoneOf := func(served map[string]int, zone string) int {
		n := 0
		for name, k := range served {
			if byName[name].loc.Zone == zone {
				n += k
			}
		}
		return n
	}

	// 1. Everything healthy: 100% in the caller's zone.
	served, failed, first := run(2000)
	if failed != 0 || zoneOf(served, "us-east-1a") != 2000 {
		t.Fatalf("all healthy: %v (%d failed, first %v); want all 2000 in us-east-1a", served, failed, first)
	}

	// 2. Half the local zone stopped: its endpoint is ejected (or found
	// unhealthy), and the spill matches the formula.
	ss[0].stop()
	awaitCond(t, e, ss[0].addr, true)
	served, failed, first = run(10_000)
	local := float64(zoneOf(served, "us-east-1a")) / 10_000
	t.Logf("half the local zone down: %.2f%% local (formula 66.67%%), %v", local*100, served)
	if failed != 0 || local < 2.0/3-0.03 || local > 2.0/3+0.03 || zoneOf(served, "us-east-1b") != 10_000-zoneOf(served, "us-east-1a") {
		t.Fatalf("half the local zone down: %.4f local, %v, %d failed (first %v); want 2/3±0.03 local, the rest in us-east-1b, none failed",
			local, served, failed, first)
	}

	// 3. The primary cloud goes dark.
	dark := time.Now()
	for _, s := range ss[1:4] {
		s.stop()
	}
	deadline := dark.Add(1500 * time.Millisecond)
	total := 0
	for time.Now().Before(deadline) || total < 500 {
		served, failed, first = run(50)
		total += 50
		if failed != 0 {
			t.Fatalf("primary dark: %d of 50 requests failed; first: %v", failed, first)
		}
		if zoneOf(served, "us-west-2a")+zoneOf(served, "us-west-2b") != 50 {
			t.Fatalf("primary dark: served by %v", served)
		}
	}
	var lastPrimary time.Time
	for _, a := range log.since(dark) {
		for _, s := range ss[:4] {
			if a.addr == s.addr {
				lastPrimary = a.at
			}
		}
	}
	failover := max(0, lastPrimary.Sub(dark))
	t.Logf("primary dark: %d requests, 0 failed; last attempt on the primary %v after it stopped", total, failover.Round(time.Microsecond))
	if failover > 5*time.Second {
		t.Errorf("attempts still went to the dark primary %v after it stopped", failover)
	}

	// 4. The primary comes back: traffic returns gradually (the failback
	// ramps over the 1s slow start window), and ends all in the local zone.
	for _, s := range ss[:4] {
		s.start(t)
	}
	back := time.Now()
	type result struct {
		at      time.Time
		primary bool
	}
	var results []result
	for time.Since(back) < 3*time.Second {
		body, code, err := send(c)
		if err != nil || code != http.StatusOK {
			t.Fatalf("failback: status %d: %v", code, err)
		}
		results = append(results, result{time.Now(), byName[body].prio == 0})
	}
	firstPrimary := -1
	for i, r := range results {
		if r.primary {
			firstPrimary = i
			break
		}
	}
	if firstPrimary < 0 {
		t.Fatal("failback: no request went back to the primary within 3s")
	}
	early, earlyPrimary := 0, 0
	for _, r := range results[firstPrimary:] {
		if r.at.Sub(results[firstPrimary].at) > 400*time.Millisecond {
			break
		}
		early++
		if r.primary {
			earlyPrimary++
		}
	}
	tail := results[len(results)-200:]
	tailPrimary := 0
	for _, r := range tail {
		if r.primary {
			tailPrimary++
		}
	}
	t.Logf("failback: first primary request %v after restart; %d of %d requests on the primary in the 400ms after it; %d of the last 200",
		results[firstPrimary].at.Sub(back).Round(time.Millisecond), earlyPrimary, early, tailPrimary)
	if early < 20 || float64(earlyPrimary) > 0.75*float64(early) {
		t.Errorf("failback not gradual: %d of %d requests on the primary in the 400ms after its return", earlyPrimary, early)
	}
	served, failed, first = run(500)
	if failed != 0 || zoneOf(served, "us-east-1a") != 500 {
		t.Errorf("after failback: %v (%d failed, %v); want all 500 in us-east-1a", served, failed, first)
	}
}

// awaitCond waits (polling, 10s at most) until the endpoint at addr is out of
// picks (out) or back in them.
func awaitCond(t *testing.T, e *balancer.Engine, addr string, out bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		ep := e.Endpoint(addr)
		if ep != nil && (ep.Conditions() != 0) == out {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: still %v after 10s", addr, ep.Conditions())
		case <-time.After(5 * time.Millisecond):
		}
	}
}
