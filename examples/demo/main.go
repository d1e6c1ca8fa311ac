// Command demo shows lodestar balancing HTTP requests over real loopback
// backends with every registered algorithm, and protecting them from the bad
// ones.
//
//	go run ./examples/demo
//
// It starts five backends on 127.0.0.1 (one slow, one failing a fifth of its
// requests with 503), drives the same load through lodestar's Transport once per
// algorithm, and prints a table per algorithm: requests, errors, p50/p99
// latency and each backend's share of the traffic. Every run has lodestar's
// protections on (the protection constant): outlier detection, whose latency
// detector ejects the slow backend for a while whenever its p90 latency is over
// 3× the fleet's median; a circuit breaker per backend, which opens when 15% of
// a backend's recent requests failed (the flaky one) and lets one probe through
// after 100ms; and active health checks. Below the shares, three rows say what
// they did to each backend during the run, counted from the engine's events
// (balancer.Engine.Subscribe): how often it was ejected and why, how often its
// breaker opened, and whether a health check took it down. An algorithm that
// steers away from a bad backend by itself leaves the protections less to do
// (peak EWMA avoids both, least request the slow one). It needs nothing
// installed and finishes in a few seconds.
//
// While it runs it serves lodestar's debug page (package balancer/debugpage)
// on 127.0.0.1 and prints its address: open it (add ?refresh=1) to watch each
// algorithm's balancer, its endpoints' states, latencies and shares, and the
// ejections and breaker trips as they happen. -debug-addr picks the address;
// -linger keeps the page up for a while after the last run.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/debugpage"
	"github.com/lodestar-go/lodestar/resolver"
)

var (
	debugAddr = flag.String("debug-addr", "127.0.0.1:0", "address of the debug page")
	linger    = flag.Duration("linger", 0, "how long to keep the debug page up after the last run")
	logs      = flag.Bool("log", false, "show lodestar's log (state changes: ejections, breakers) on stderr")
	// onTransport, when set (tests), is called with the debug page's URL
	// once each run's Transport is up.
	onTransport func(pageURL string)
)

type backendSpec struct {
	name     string
	delay    time.Duration // simulated work per request
	failRate float64       // share of requests answered 503
}

var specs = []backendSpec{
	{"fast-1", time.Millisecond, 0},
	{"fast-2", time.Millisecond, 0},
	{"fast-3", time.Millisecond, 0},
	{"slow", 15 * time.Millisecond, 0},
	{"flaky", time.Millisecond, 0.2},
}

// protection is the configuration every run adds to its algorithm (the same
// JSON works for gRPC, as the policy's loadBalancingConfig):
//
//   - outlierDetection: every 100ms, the latency detector compares each
//     backend's p90 latency over the last interval (20 requests at least) with
//     the median of the backends' and ejects one over 3× for 100ms (200ms the
//     second time in a row, and so on); consecutive failures (5, the default)
//     eject too. Up to 40% of the backends (2 of 5) may be ejected at once.
//   - circuitBreaker: a backend's breaker opens when, over its last 500ms, at
//     least 20 requests were made and 15% of them failed; after 100ms it lets
//     one probe through, and closes if it succeeds.
//   - healthCheck: GET /healthz on every backend every 100ms; two failures in
//     a row take a backend out. (The demo's backends always pass.)
const protection = `{
  "outlierDetection": {"interval": "100ms", "baseEjectionTime": "100ms", "maxEjectionPercent": 40,
                       "latency": {"quantile": 0.9, "factor": 3, "minimumHosts": 3, "requestVolume": 20}},
  "circuitBreaker":   {"failureRatio": 0.15, "minRequests": 20, "window": "500ms", "openTimeout": "100ms"},
  "healthCheck":      {"http": {"path": "/healthz"}, "interval": "100ms", "noTrafficInterval": "100ms"}
}`

func main() {
	requests := flag.Int("requests", 2000, "requests per algorithm")
	concurrency := flag.Int("concurrency", 16, "concurrent clients")
	flag.Parse()
	if err := run(os.Stdout, *requests, *concurrency); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(out io.Writer, requests, concurrency int) error {
	// The debug page, for as long as the demo runs.
	ln, err := net.Listen("tcp", *debugAddr)
	if err != nil {
		return fmt.Errorf("debug page: %w", err)
	}
	page := &http.Server{Handler: debugpage.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go page.Serve(ln)
	defer page.Close()
	pageURL := "http://" + ln.Addr().String() + "/"
	fmt.Fprintf(out, "debug page: %s?refresh=1 (while the demo runs)\n", pageURL)

	var eps []resolver.Endpoint
	for i, s := range specs {
		srv := startBackend(s, uint64(i))
		defer srv.Close()
		eps = append(eps, resolver.Endpoint{Address: srv.Listener.Addr().String()})
	}
	fmt.Fprintf(out, "lodestar demo: %d backends on 127.0.0.1 (slow: +15ms; flaky: 20%% 503s), %d requests per algorithm, %d concurrent\n",
		len(specs), requests, concurrency)
	fmt.Fprintf(out, "Hashing algorithms get an affinity key from the X-User header (1,000 users).\n")
	fmt.Fprintf(out, "Protections on: outlier detection (latency: p90 over 3× the median ejects for 100ms+), a breaker per\n")
	fmt.Fprintf(out, "backend (opens at 15%% failed over 500ms, probes after 100ms), health checks (GET /healthz every 100ms).\n\n")

	for _, name := range balancer.Algorithms() {
		alg, err := balancer.NewAlgorithm(name, nil)
		if err != nil {
			return err
		}
		res, err := drive(alg, eps, requests, concurrency, pageURL)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		res.print(out, name, eps)
		// Every request gets an answer (the flaky backend's 503s are answers):
		// one that did not, the first one included, is a bug, not a statistic.
		if res.sendErrs > 0 {
			return fmt.Errorf("%s: %d of %d requests got no answer; the first: %w", name, res.sendErrs, res.total, res.firstErr)
		}
	}
	if *linger > 0 {
		fmt.Fprintf(out, "the debug page stays up for %v: %s\n", *linger, pageURL)
		time.Sleep(*linger) // the user asked to keep the page up
	}
	return nil
}

// startBackend starts a real HTTP server on 127.0.0.1 that behaves as s says.
func startBackend(s backendSpec, seed uint64) *httptest.Server {
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(seed, 42))
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" { // lodestar's health checks
			io.WriteString(w, "ok")
			return
		}
		mu.Lock()
		fail := rng.Float64() < s.failRate
		mu.Unlock()
		time.Sleep(s.delay) // the backend's simulated work
		w.Header().Set("X-Backend", s.name)
		if fail {
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, s.name)
	}))
}

type result struct {
	total     int
	errors    int   // 5xx answers and requests that got no answer
	sendErrs  int   // requests that got no answer at all (Do returned an error)
	firstErr  error // the first of those
	latencies []time.Duration
	perName   map[string]int
	elapsed   time.Duration
	prot      *protections // what the protections did, from the engine's events
}

// protections counts, per backend address, what lodestar's protections did
// during a run, from the engine's events.
type protections struct {
	mu        sync.Mutex
	ejected   map[string]map[string]int // address → detector → ejections
	opened    map[string]int            // address → breaker openings
	unhealthy map[string]int            // address → times marked unhealthy
	panics    int
}

func newProtections() *protections {
	return &protections{ejected: map[string]map[string]int{}, opened: map[string]int{}, unhealthy: map[string]int{}}
}

// record is the engine's event subscriber: it runs on the goroutine that made
// the change (often a request's), so it only counts.
func (p *protections) record(ev balancer.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case ev.Kind == balancer.PanicStarted:
		p.panics++
	case ev.Kind == balancer.BreakerChanged && strings.HasSuffix(ev.Why, "→ open"):
		p.opened[ev.Address]++ // from closed, or from half-open when a probe failed
	case ev.Kind != balancer.ConditionChanged:
	case ev.Old&balancer.Ejected == 0 && ev.New&balancer.Ejected != 0:
		// Why is "outlier detection: latency, ejected for 100ms": keep the detector.
		why, _, _ := strings.Cut(strings.TrimPrefix(ev.Why, "outlier detection: "), ",")
		if p.ejected[ev.Address] == nil {
			p.ejected[ev.Address] = map[string]int{}
		}
		p.ejected[ev.Address][why]++
	case ev.Old&balancer.Unhealthy == 0 && ev.New&balancer.Unhealthy != 0:
		p.unhealthy[ev.Address]++
	}
}

// drive sends requests through a lodestar Transport configured with alg.
func drive(alg balancer.Algorithm, eps []resolver.Endpoint, requests, concurrency int, pageURL string) (*result, error) {
	feed, err := resolver.NewStatic(eps...)
	if err != nil {
		return nil, err
	}
	cfg, err := balancer.ParseConfig([]byte(protection))
	if err != nil {
		return nil, err
	}
	cfg.Algorithm = alg
	cfg.Affinity.Header = "X-User"
	base := http.DefaultTransport.(*http.Transport).Clone()
	base.MaxIdleConnsPerHost = concurrency // keep connections: the default of 2 churns them
	// lodestar logs each ejection and breaker trip (Warn) and their ends
	// (Info); the tables below count them, so the log is off unless -log.
	logger := slog.New(slog.DiscardHandler)
	if *logs {
		logger = slog.Default()
	}
	tr, err := lodestar.NewTransport(lodestar.Options{
		Base:     base,
		Services: map[string]lodestar.Service{"demo": {Feed: feed, Config: cfg}},
		Logger:   logger,
	})
	if err != nil {
		return nil, err
	}
	defer tr.Close()
	prot := newProtections()
	defer tr.Engine("demo").Subscribe(prot.record)()
	if onTransport != nil && pageURL != "" {
		onTransport(pageURL)
	}
	// No waiting here: a static feed's list is in force when NewTransport
	// returns, so the very first request already has every backend to pick
	// from (other feeds make the first requests wait for their first answer).
	client := &http.Client{Transport: tr}

	res := &result{perName: map[string]int{}, prot: prot}
	var mu sync.Mutex
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for next.Add(1) <= int64(requests) {
				req, _ := http.NewRequestWithContext(context.Background(), "GET", "http://demo/work", nil)
				req.Header.Set("X-User", "user-"+strconv.Itoa(rng.IntN(1000)))
				t0 := time.Now()
				resp, err := client.Do(req)
				lat := time.Since(t0)
				failed, backend := err != nil, ""
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					failed, backend = resp.StatusCode >= 500, resp.Header.Get("X-Backend")
				}
				mu.Lock()
				res.total++
				res.latencies = append(res.latencies, lat)
				if failed {
					res.errors++
				}
				if err != nil {
					res.sendErrs++
					if res.firstErr == nil {
						res.firstErr = err
					}
				}
				res.perName[backend]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	return res, nil
}

func (r *result) print(out io.Writer, alg string, eps []resolver.Endpoint) {
	slices.Sort(r.latencies)
	pct := func(p float64) time.Duration {
		return r.latencies[int(p*float64(len(r.latencies)-1))].Round(10 * time.Microsecond)
	}
	p := r.prot
	p.mu.Lock()
	defer p.mu.Unlock()
	panics := ""
	if p.panics > 0 {
		panics = fmt.Sprintf("; panic mode %d×", p.panics)
	}
	fmt.Fprintf(out, "== %s  (%d requests in %v%s)\n", alg, r.total, r.elapsed.Round(time.Millisecond), panics)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "requests\terrors\tp50\tp99\t")
	for _, s := range specs {
		fmt.Fprintf(tw, "%s\t", s.name)
	}
	fmt.Fprintln(tw)
	fmt.Fprintf(tw, "%d\t%d (%.1f%%)\t%v\t%v\t", r.total, r.errors, 100*float64(r.errors)/float64(r.total), pct(0.50), pct(0.99))
	for _, s := range specs {
		fmt.Fprintf(tw, "%.1f%%\t", 100*float64(r.perName[s.name])/float64(r.total))
	}
	fmt.Fprintln(tw)
	// What the protections did to each backend (eps[i] is specs[i]'s).
	row := func(label string, cell func(addr string) string) {
		fmt.Fprintf(tw, "%s\t\t\t\t", label)
		for _, ep := range eps {
			fmt.Fprintf(tw, "%s\t", cell(ep.Address))
		}
		fmt.Fprintln(tw)
	}
	row("ejected", func(addr string) string {
		var parts []string
		for why, n := range p.ejected[addr] {
			parts = append(parts, fmt.Sprintf("%d× %s", n, why))
		}
		slices.Sort(parts)
		return cellOr(strings.Join(parts, ", "))
	})
	row("breaker", func(addr string) string {
		if n := p.opened[addr]; n > 0 {
			return fmt.Sprintf("opened %d×", n)
		}
		return "-"
	})
	row("health", func(addr string) string {
		if n := p.unhealthy[addr]; n > 0 {
			return fmt.Sprintf("down %d×", n)
		}
		return "-"
	})
	tw.Flush()
	fmt.Fprintln(out)
}

func cellOr(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
