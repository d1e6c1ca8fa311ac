package consul

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/internal/backoff"
	"github.com/lodestar-go/lodestar/resolver"
)

// The fake agent below answers /v1/health/service/<name> from a script, for
// what a real agent will not do on demand: an index that goes backwards, 500s,
// a request that never returns. The real agent tests are in agent_test.go.

// reply is one scripted answer of the fake agent.
type reply struct {
	status int    // 0 means 200
	index  uint64 // X-Consul-Index
	ports  []int  // one passing instance on 127.0.0.1 per port
	hang   bool   // never answer (until the client gives up)
}

type fakeAgent struct {
	*httptest.Server
	mu      sync.Mutex
	script  []reply
	queries []query // what each request asked for
	hangs   sync.WaitGroup
}

type query struct {
	at      time.Time
	index   string // the "index" parameter, "" when absent
	wait    string
	passing bool
}

// newFakeAgent serves the script in order and then repeats its last reply.
func newFakeAgent(t *testing.T, script ...reply) *fakeAgent {
	fa := &fakeAgent{script: script}
	fa.Server = httptest.NewServer(http.HandlerFunc(fa.serve))
	t.Cleanup(fa.Close)
	return fa
}

func (fa *fakeAgent) serve(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	fa.mu.Lock()
	fa.queries = append(fa.queries, query{at: time.Now(), index: q.Get("index"), wait: q.Get("wait"), passing: q.Has("passing")})
	rep := fa.script[0]
	if len(fa.script) > 1 {
		fa.script = fa.script[1:]
	}
	fa.mu.Unlock()
	if rep.hang {
		<-r.Context().Done()
		return
	}
	if rep.status != 0 && rep.status != 200 {
		http.Error(w, "fake agent error", rep.status)
		return
	}
	entries := make([]*api.ServiceEntry, 0, len(rep.ports))
	for _, p := range rep.ports {
		entries = append(entries, &api.ServiceEntry{
			Node:    &api.Node{Node: "n1", Address: "127.0.0.1", Datacenter: "dc1"},
			Service: &api.AgentService{ID: fmt.Sprint("web-", p), Service: "web", Port: p, Weights: api.AgentWeights{Passing: 1, Warning: 1}},
			Checks:  api.HealthChecks{{CheckID: "serfHealth", Status: api.HealthPassing}},
		})
	}
	w.Header().Set("X-Consul-Index", strconv.FormatUint(rep.index, 10))
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(entries)
}

func (fa *fakeAgent) seen() []query {
	fa.mu.Lock()
	defer fa.mu.Unlock()
	return append([]query(nil), fa.queries...)
}

func (fa *fakeAgent) waitQueries(t *testing.T, n int) []query {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if q := fa.seen(); len(q) >= n {
			return q
		}
		if time.Now().After(deadline) {
			t.Fatalf("fake agent saw %d queries within 5s, want %d: %+v", len(fa.seen()), n, fa.seen())
		}
		time.Sleep(time.Millisecond)
	}
}

func fastOptions(addr string) Options {
	return Options{
		Service: "web", Address: addr, WaitTime: time.Second, QueryRate: 1000,
		Backoff: backoff.Config{Base: 5 * time.Millisecond, Max: 20 * time.Millisecond},
	}
}

func indexes(qs []query) []string {
	out := make([]string, len(qs))
	for i, q := range qs {
		out[i] = q.index
	}
	return out
}

func TestFakeIndexRules(t *testing.T) {
	fa := newFakeAgent(t,
		reply{index: 10, ports: []int{1, 2}},
		reply{index: 12, ports: []int{1, 2}}, // no change: nothing published
		reply{index: 5, ports: []int{1}},     // backwards: published, then index 0
		reply{index: 0, ports: []int{1}},     // a zero index is taken as 1
		reply{index: 7, ports: []int{1, 3}},
		reply{hang: true},
	)
	s := watch(t, newFeed(t, fastOptions(fa.URL)))
	s.WaitUpdate(t, 0, 5*time.Second, "ports 1 and 3", hasAddrs("127.0.0.1:1", "127.0.0.1:3"))
	qs := fa.waitQueries(t, 6)
	want := []string{"", "10", "12", "", "1", "7"}
	for i, w := range want {
		if qs[i].index != w {
			t.Fatalf("index parameters %q, want %q", indexes(qs[:6]), want)
		}
	}
	if qs[1].wait != "1000ms" {
		t.Errorf("wait parameter %q, want 1000ms", qs[1].wait)
	}
	if !qs[0].passing {
		t.Errorf("the query does not ask for passing instances only")
	}
	ups, errs, _ := s.Snapshot()
	var got [][]string
	for _, u := range ups {
		got = append(got, addrs(u.Endpoints))
	}
	if len(ups) != 3 {
		t.Errorf("updates %v, want 3 (the unchanged answers publish nothing)", got)
	}
	if len(errs) != 0 {
		t.Errorf("errors reported: %v", errs)
	}
}

func TestFakeErrorsKeepLastSet(t *testing.T) {
	fa := newFakeAgent(t,
		reply{index: 10, ports: []int{1, 2}},
		reply{status: 500},
		reply{status: 500},
		reply{status: 503},
		reply{index: 11, ports: []int{1, 2}}, // same set again: nothing published
		reply{index: 13, ports: []int{2}},
		reply{hang: true},
	)
	s := watch(t, newFeed(t, fastOptions(fa.URL)))
	s.WaitUpdate(t, 0, 5*time.Second, "port 2 alone", hasAddrs("127.0.0.1:2"))
	ups, errs, _ := s.Snapshot()
	if len(ups) != 2 {
		t.Errorf("%d updates, want 2 (errors publish nothing): %v", len(ups), ups)
	}
	if len(errs) != 3 || !errorsContain(errs[:1], "500") || !errorsContain(errs[2:3], "503") || !errorsContain(errs, `consul feed "web"`) {
		t.Errorf("errors %v, want the two 500s and the 503, naming the feed", errs)
	}
	qs := fa.waitQueries(t, 7)
	if want := []string{"", "10", "", "", "", "11", "13"}; fmt.Sprint(indexes(qs[:7])) != fmt.Sprint(want) {
		t.Errorf("index parameters %q, want %q (a failure resets the index)", indexes(qs[:7]), want)
	}
	// Retries are spaced by the backoff (≥ Base·(1-Jitter) = 2.5ms).
	for i := 2; i <= 4; i++ {
		if gap := qs[i].at.Sub(qs[i-1].at); gap < 2*time.Millisecond {
			t.Errorf("retry %d came %v after the failure, want a backoff", i-1, gap)
		}
	}
}

// TestFakeHangingQueryCancel checks that cancelling Watch, and closing an engine
// running the feed, return at once with a blocking query in flight.
func TestFakeHangingQueryCancel(t *testing.T) {
	fa := newFakeAgent(t, reply{index: 3, ports: []int{1}}, reply{hang: true})
	opts := fastOptions(fa.URL)
	opts.WaitTime = 10 * time.Minute
	f := newFeed(t, opts)

	s := newRecSink()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Watch(ctx, s) }()
	s.WaitUpdate(t, 0, 5*time.Second, "port 1", hasAddrs("127.0.0.1:1"))
	fa.waitQueries(t, 2)
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		t.Logf("Watch returned %v after cancel", time.Since(start))
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Watch returned %v, want context.Canceled", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Watch did not return within 2s of cancel with a hanging query")
	}
	if _, errs, _ := s.Snapshot(); len(errs) != 0 {
		t.Errorf("cancel reported errors: %v", errs)
	}

	eng, err := balancer.NewEngine(balancer.Config{}, balancer.Options{Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	eng.Start(f)
	fa.waitQueries(t, 3)
	start = time.Now()
	eng.Close()
	d := time.Since(start)
	t.Logf("Engine.Close returned %v after it was called", d)
	if d > 500*time.Millisecond {
		t.Errorf("Engine.Close took %v with a hanging query", d)
	}
}

func TestFakeHungQueryTimesOut(t *testing.T) {
	fa := newFakeAgent(t, reply{index: 3, ports: []int{1}}, reply{hang: true}, reply{index: 4, ports: []int{2}}, reply{hang: true})
	opts := fastOptions(fa.URL)
	opts.WaitTime = 50 * time.Millisecond
	opts.ResponseTimeout = 100 * time.Millisecond
	s := watch(t, newFeed(t, opts))
	s.WaitUpdate(t, 0, 5*time.Second, "port 2 after the hung query", hasAddrs("127.0.0.1:2"))
	_, errs, _ := s.Snapshot()
	if len(errs) != 1 || !errorsContain(errs, "no answer within") {
		t.Errorf("errors %v, want one for the hung query", errs)
	}
}

func TestFakeRateLimit(t *testing.T) {
	// Every answer has a new index, as for a service that never stops changing.
	var mu sync.Mutex
	var n uint64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n++
		i := n
		mu.Unlock()
		w.Header().Set("X-Consul-Index", strconv.FormatUint(i, 10))
		fmt.Fprint(w, "[]")
	}))
	defer srv.Close()
	opts := fastOptions(srv.URL)
	opts.QueryRate = 20
	s := watch(t, newFeed(t, opts))
	s.WaitUpdate(t, 0, 5*time.Second, "the empty set", hasAddrs())
	time.Sleep(500 * time.Millisecond) // measuring a rate: the duration is the point
	mu.Lock()
	got := n
	mu.Unlock()
	// 500ms at 20/s plus the burst of 2, with room for scheduling.
	if got < 5 || got > 15 {
		t.Errorf("%d queries in ~500ms at QueryRate 20 (burst 2), want about 12", got)
	}
	if ups, _, _ := s.Snapshot(); len(ups) != 1 {
		t.Errorf("%d updates for an unchanging empty answer, want 1", len(ups))
	}
}

func TestFakeIncludeWarningFiltersClientSide(t *testing.T) {
	entry := func(port int, status string, warnWeight int) *api.ServiceEntry {
		return &api.ServiceEntry{
			Node:    &api.Node{Node: "n", Address: "127.0.0.1"},
			Service: &api.AgentService{ID: fmt.Sprint(port), Service: "web", Port: port, Weights: api.AgentWeights{Passing: 5, Warning: warnWeight}},
			Checks:  api.HealthChecks{{CheckID: "c", Status: status}},
		}
	}
	var passingParam bool
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		passingParam = r.URL.Query().Has("passing")
		mu.Unlock()
		if r.URL.Query().Get("index") != "" {
			<-r.Context().Done()
			return
		}
		w.Header().Set("X-Consul-Index", "9")
		_ = json.NewEncoder(w).Encode([]*api.ServiceEntry{
			entry(1, api.HealthPassing, 1), entry(2, api.HealthWarning, 2),
			entry(3, api.HealthCritical, 1), entry(4, api.HealthWarning, 0),
			entry(5, api.HealthMaint, 1),
		})
	}))
	defer srv.Close()
	opts := fastOptions(srv.URL)
	opts.IncludeWarning = true
	s := watch(t, newFeed(t, opts))
	u, _ := s.WaitUpdate(t, 0, 5*time.Second, "passing and warning", hasAddrs("127.0.0.1:1", "127.0.0.1:2"))
	if ep, _ := byAddr(u.Endpoints, "127.0.0.1:2"); ep.Weight != 2 {
		t.Errorf("warning weight %d, want 2", ep.Weight)
	}
	mu.Lock()
	defer mu.Unlock()
	if passingParam {
		t.Errorf("with IncludeWarning the query still asks Consul for passing instances only")
	}
}

var _ resolver.Sink = (*recSink)(nil)
