// Command demo shows lodestar balancing HTTP requests over real loopback
// backends with every registered algorithm.
//
//	go run ./examples/demo
//
// It starts five backends on 127.0.0.1 (one slow, one failing a fifth of its
// requests with 503), drives the same load through lodestar's Transport once per
// algorithm, and prints a table per algorithm: requests, errors, p50/p99
// latency and each backend's share of the traffic. It needs nothing installed
// and finishes in a few seconds.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/resolver"
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
	var eps []resolver.Endpoint
	for i, s := range specs {
		srv := startBackend(s, uint64(i))
		defer srv.Close()
		eps = append(eps, resolver.Endpoint{Address: srv.Listener.Addr().String()})
	}
	fmt.Fprintf(out, "lodestar demo: %d backends on 127.0.0.1 (slow: +15ms; flaky: 20%% 503s), %d requests per algorithm, %d concurrent\n",
		len(specs), requests, concurrency)
	fmt.Fprintf(out, "Hashing algorithms get an affinity key from the X-User header (1,000 users).\n\n")

	for _, name := range balancer.Algorithms() {
		alg, err := balancer.NewAlgorithm(name, nil)
		if err != nil {
			return err
		}
		res, err := drive(alg, eps, requests, concurrency)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		res.print(out, name)
		// Every request gets an answer (the flaky backend's 503s are answers):
		// one that did not, the first one included, is a bug, not a statistic.
		if res.sendErrs > 0 {
			return fmt.Errorf("%s: %d of %d requests got no answer; the first: %w", name, res.sendErrs, res.total, res.firstErr)
		}
	}
	return nil
}

// startBackend starts a real HTTP server on 127.0.0.1 that behaves as s says.
func startBackend(s backendSpec, seed uint64) *httptest.Server {
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(seed, 42))
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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
}

// drive sends requests through a lodestar Transport configured with alg.
func drive(alg balancer.Algorithm, eps []resolver.Endpoint, requests, concurrency int) (*result, error) {
	feed, err := resolver.NewStatic(eps...)
	if err != nil {
		return nil, err
	}
	cfg := balancer.Config{Algorithm: alg}
	cfg.Affinity.Header = "X-User"
	base := http.DefaultTransport.(*http.Transport).Clone()
	base.MaxIdleConnsPerHost = concurrency // keep connections: the default of 2 churns them
	tr, err := lodestar.NewTransport(lodestar.Options{
		Base:     base,
		Services: map[string]lodestar.Service{"demo": {Feed: feed, Config: cfg}},
	})
	if err != nil {
		return nil, err
	}
	defer tr.Close()
	// No waiting here: a static feed's list is in force when NewTransport
	// returns, so the very first request already has every backend to pick
	// from (other feeds make the first requests wait for their first answer).
	client := &http.Client{Transport: tr}

	res := &result{perName: map[string]int{}}
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

func (r *result) print(out io.Writer, alg string) {
	slices.Sort(r.latencies)
	pct := func(p float64) time.Duration {
		return r.latencies[int(p*float64(len(r.latencies)-1))].Round(10 * time.Microsecond)
	}
	fmt.Fprintf(out, "== %s  (%d requests in %v)\n", alg, r.total, r.elapsed.Round(time.Millisecond))
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
	tw.Flush()
	fmt.Fprintln(out)
}
