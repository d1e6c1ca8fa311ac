// Command multisite shows locality and priority tiers through lodestar's
// HTTP door: a caller in us-east-1a, eight real backends on 127.0.0.1
// labelled as two clouds (the primary, us-east-1, priority 0; the passive
// site, us-west-2, priority 1) × two zones × two servers, fed through a
// static feed that carries each endpoint's locality and priority.
//
//	go run ./examples/multisite
//
// It runs four phases and prints, for each, a table of where the requests
// went:
//
//  1. everything healthy: every request stays in the caller's zone;
//  2. one of the two servers of the caller's zone stops: the zone keeps
//     what its capacity covers (Envoy's zone-aware formula, 2/3 here) and
//     spills the rest to the other zone of its region;
//  3. the whole primary cloud stops: retries and ejection hide it from the
//     callers (0 failed requests) and everything moves to the passive site;
//  4. the primary comes back: traffic moves back gradually, over the slow
//     start window, and ends all in the caller's zone again.
//
// It finishes in about three seconds.
package main

import (
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/resolver"
)

// config is the service's configuration: the locality and priority
// sections, retries and outlier ejection (a stopped server is out after its
// first refused connection; the request is retried on another endpoint),
// active health checks (a stopped server stays out until it answers again,
// which also ends its ejection) and a 1s slow start, which ramps the
// failback as well.
const config = `{
  "algorithm": {"round_robin": {"slowStart": {"window": "1s"}}},
  "locality": {"zone": "us-east-1a", "region": "us-east-1", "minLocalEndpoints": 1, "spillWhenLoaded": 1.5},
  "priority": {"overprovisioningFactor": 1.4},
  "retry": {"maxAttempts": 5},
  "outlierDetection": {"consecutiveLocalOriginFailures": 1, "baseEjectionTime": "30s",
                       "maxEjectionPercent": 100, "endEjectionOnHealthy": true},
  "healthCheck": {"http": {"path": "/healthz"}, "interval": "50ms", "timeout": "250ms",
                  "unhealthyThreshold": 1, "healthyThreshold": 1}
}`

func main() {
	if err := run(os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// backend is a real HTTP server that can stop and start again on its address.
type backend struct {
	name string
	addr string
	ep   resolver.Endpoint

	mu   sync.Mutex
	srv  *http.Server
	done chan struct{}
}

func (b *backend) start() error {
	addr := b.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	b.addr = lis.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, b.name) })}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(lis)
	}()
	b.mu.Lock()
	b.srv, b.done = srv, done
	b.mu.Unlock()
	return nil
}

func (b *backend) stop() {
	b.mu.Lock()
	srv, done := b.srv, b.done
	b.srv = nil
	b.mu.Unlock()
	if srv != nil {
		srv.Close()
		<-done
	}
}

func run(w io.Writer) error {
	var backends []*backend
	defer func() {
		for _, b := range backends {
			b.stop()
		}
	}()
	var eps []resolver.Endpoint
	for prio, region := range []string{"us-east-1", "us-west-2"} {
		for _, z := range []string{"a", "b"} {
			for i := range 2 {
				b := &backend{name: fmt.Sprintf("%s%s-%d", region, z, i+1)}
				if err := b.start(); err != nil {
					return err
				}
				b.ep = resolver.Endpoint{Address: b.addr, Priority: prio, Locality: resolver.Locality{Region: region, Zone: region + z}}
				backends = append(backends, b)
				eps = append(eps, b.ep)
			}
		}
	}
	cfg, err := balancer.ParseConfig([]byte(config))
	if err != nil {
		return err
	}
	feed, err := resolver.NewStatic(eps...)
	if err != nil {
		return err
	}
	src := rand.New(rand.NewPCG(12, 13))
	var srcMu sync.Mutex
	tr, err := lodestar.NewTransport(lodestar.Options{
		Services: map[string]lodestar.Service{"api": {Feed: feed, Config: cfg}},
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Rand: func() uint64 {
			srcMu.Lock()
			defer srcMu.Unlock()
			return src.Uint64()
		},
	})
	if err != nil {
		return err
	}
	defer tr.Close()
	eng := tr.Engine("api")
	client := &http.Client{Transport: tr}
	byName := map[string]*backend{}
	for _, b := range backends {
		byName[b.name] = b
	}
	send := func(n int) (map[string]int, int) {
		served, failed := map[string]int{}, 0
		for range n {
			resp, err := client.Get("http://api/")
			if err != nil {
				failed++
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				failed++
				continue
			}
			served[string(body)]++
		}
		return served, failed
	}
	table := func(title string, served map[string]int, failed int) {
		total := failed
		for _, n := range served {
			total += n
		}
		fmt.Fprintf(w, "\n%s\n", title)
		fmt.Fprintf(w, "  %-16s %-10s %-8s %8s %7s\n", "backend", "zone", "priority", "requests", "share")
		zones := map[string]int{}
		for _, b := range backends {
			n := served[b.name]
			zones[b.ep.Locality.Zone] += n
			fmt.Fprintf(w, "  %-16s %-10s %-8d %8d %6.1f%%\n", b.name, b.ep.Locality.Zone, b.ep.Priority, n, pct(n, total))
		}
		var zs []string
		for z, n := range zones {
			zs = append(zs, fmt.Sprintf("%s %.1f%%", z, pct(n, total)))
		}
		sort.Strings(zs)
		fmt.Fprintf(w, "  by zone: %s; %d failed\n", strings.Join(zs, ", "), failed)
	}
	// The engine's events say when anything changes: waits wait for them.
	changed := make(chan struct{}, 1)
	var outMu sync.Mutex
	wentOut := map[string]time.Time{} // when each endpoint last left the picks
	cancel := eng.Subscribe(func(ev balancer.Event) {
		if ev.Kind == balancer.ConditionChanged && ev.Old == 0 && ev.New != 0 {
			outMu.Lock()
			wentOut[ev.Address] = time.Now()
			outMu.Unlock()
		}
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	defer cancel()
	waitFor := func(what string, cond func() bool) error {
		timeout := time.After(10 * time.Second)
		for !cond() {
			select {
			case <-changed:
			case <-timeout:
				return fmt.Errorf("timed out waiting for %s", what)
			}
		}
		return nil
	}
	eligible := func(b *backend) bool {
		for _, ep := range eng.Eligible() {
			if ep.Address() == b.addr {
				return true
			}
		}
		return false
	}

	fmt.Fprintln(w, "A caller in us-east-1a; the primary cloud is us-east-1 (priority 0), the passive site us-west-2 (priority 1).")

	served, failed := send(2000)
	table("1. Everything healthy (2000 requests): all of them stay in the caller's zone.", served, failed)

	backends[0].stop()
	if err := waitFor(backends[0].name+" out", func() bool { return !eligible(backends[0]) }); err != nil {
		return err
	}
	served, failed = send(4000)
	table(fmt.Sprintf("2. %s stopped (4000 requests): the zone keeps what its capacity covers, (1/3)/(1/2) = 66.7%%,\n   and spills the rest to us-east-1b, in its region.", backends[0].name), served, failed)

	dark := time.Now()
	for _, b := range backends[1:4] {
		b.stop()
	}
	served, failed = send(2000)
	table("3. The whole primary cloud stopped (2000 requests, sent as it went dark): retried and ejected,\n   no request fails, and everything moves to the passive site.", served, failed)
	outMu.Lock()
	var last time.Time
	for _, b := range backends[:4] {
		if at := wentOut[b.addr]; at.After(last) {
			last = at
		}
	}
	outMu.Unlock()
	fmt.Fprintf(w, "  the whole primary was out of picks %v after it stopped\n", last.Sub(dark).Round(time.Millisecond))

	for _, b := range backends[:4] {
		if err := b.start(); err != nil {
			return err
		}
	}
	if err := waitFor("the primary back", func() bool {
		for _, b := range backends[:4] {
			if !eligible(b) {
				return false
			}
		}
		return true
	}); err != nil {
		return err
	}
	fmt.Fprintln(w, "\n4. The primary is back: traffic returns over the 1s slow start window.")
	back := time.Now()
	var steps []string
	for step := range 6 {
		end := back.Add(time.Duration(step+1) * 250 * time.Millisecond)
		n, primary := 0, 0
		for time.Now().Before(end) {
			s, _ := send(1)
			for name, k := range s {
				n += k
				if byName[name].ep.Priority == 0 {
					primary += k
				}
			}
		}
		steps = append(steps, fmt.Sprintf("%.0f%%", pct(primary, n)))
	}
	fmt.Fprintf(w, "  share on the primary, per 250ms: %s\n", strings.Join(steps, " "))
	served, failed = send(2000)
	table("   Then (2000 requests): all in the caller's zone again.", served, failed)

	fmt.Fprintln(w, `
What it shows: requests stay in the caller's zone while it has the capacity, spill
by Envoy's formulas when it has not (zone-aware routing within a tier, priority
load across tiers), fail over to the passive site without a failed request, and
come back gradually. The same configuration does the same through the gRPC door.`)
	return nil
}

func pct(n, total int) float64 {
	if total == 0 {
		return 0
	}
	return 100 * float64(n) / float64(total)
}
