package balancer

import (
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/resolver"
)

// quietLogs is a logger that drops everything, for tests that make many engines.
var quietLogs = slog.New(slog.DiscardHandler)

// subsetEngine returns an engine with subsetting sc over n test endpoints.
func subsetEngine(t testing.TB, sc SubsetConfig, n int, opts Options) *Engine {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quietLogs
	}
	e, err := NewEngine(Config{Subset: &sc}, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	if n > 0 {
		e.Update(resolverEndpoints(n, nil))
	}
	return e
}

func addrs(eps []*Endpoint) []string {
	out := make([]string, len(eps))
	for i, ep := range eps {
		out[i] = ep.Address()
	}
	slices.Sort(out)
	return out
}

// rankOrder returns the first k endpoints of client id's rendezvous ranking
// over n endpoints, best first, found from engines alone: the endpoint that
// a subset of i+1 holds and a subset of i does not is ranked i+1st.
func rankOrder(t *testing.T, id string, n, k int) []string {
	t.Helper()
	var order []string
	prev := map[string]bool{}
	for i := 1; i <= k; i++ {
		e := subsetEngine(t, SubsetConfig{Size: i, ClientID: id}, n, Options{})
		cur := addrs(e.Eligible())
		if len(cur) != i {
			t.Fatalf("subset of %d has %d members", i, len(cur))
		}
		var added []string
		for _, a := range cur {
			if !prev[a] {
				added = append(added, a)
			}
		}
		if len(added) != 1 {
			t.Fatalf("subset of %d adds %v to the subset of %d: want exactly one (nested subsets)", i, added, i-1)
		}
		order = append(order, added[0])
		prev[added[0]] = true
		e.Close()
	}
	return order
}

func TestSubsetReplacementAndReturn(t *testing.T) {
	const n, size = 50, 5
	order := rankOrder(t, "client-a", n, size+3)
	e := subsetEngine(t, SubsetConfig{Size: size, ClientID: "client-a"}, n, Options{})
	want := slices.Sorted(slices.Values(order[:size]))
	if got := addrs(e.Eligible()); !slices.Equal(got, want) {
		t.Fatalf("subset = %v, want the top %d ranked %v", got, size, want)
	}
	if got := len(e.Endpoints()); got != n {
		t.Fatalf("Endpoints() = %d, want every discovered one (%d)", got, n)
	}

	// Eject the best-ranked member: the 6th ranked joins; exactly size remain.
	e.SetConditionWhy(order[0], Ejected, true, "test")
	want = slices.Sorted(slices.Values(append(slices.Clone(order[1:size]), order[size])))
	if got := addrs(e.Eligible()); !slices.Equal(got, want) {
		t.Fatalf("after ejecting %s: subset = %v, want %v", order[0], got, want)
	}
	cand, ok := e.SubsetCandidates()
	if !ok || len(cand) != size+1 || !slices.Contains(addrs(cand), order[0]) {
		t.Fatalf("candidates = %v, %v: want the %d members and the ejected %s", addrs(cand), ok, size, order[0])
	}
	// A second one out (unhealthy), then paused: the 7th, the 8th.
	e.SetConditionWhy(order[2], Unhealthy, true, "test")
	e.SetConditionWhy(order[3], Paused, true, "test")
	want = slices.Sorted(slices.Values([]string{order[1], order[4], order[5], order[6], order[7]}))
	if got := addrs(e.Eligible()); !slices.Equal(got, want) {
		t.Fatalf("three out: subset = %v, want %v", got, want)
	}
	// Not connected does not count against a member: it is not replaced.
	e.SetCondition(order[1], NotConnected, true)
	if got, cand := addrs(e.Eligible()), addrsOf(e.SubsetCandidates()); len(got) != size-1 || !slices.Contains(cand, order[1]) || len(cand) != size+3 {
		t.Fatalf("a not-connected member: eligible %v, candidates %v: want it kept, unreplaced", got, cand)
	}
	e.SetCondition(order[1], NotConnected, false)

	// Clear them: the originals come back and the replacements leave.
	e.SetConditionWhy(order[0], Ejected, false, "test")
	e.SetConditionWhy(order[2], Unhealthy, false, "test")
	e.SetConditionWhy(order[3], Paused, false, "test")
	want = slices.Sorted(slices.Values(order[:size]))
	if got := addrs(e.Eligible()); !slices.Equal(got, want) {
		t.Fatalf("after recovery: subset = %v, want %v", got, want)
	}
	for _, a := range order[size:] {
		ep := e.Endpoint(a)
		if e.InSubset(ep) || ep.Conditions() != 0 {
			t.Fatalf("%s: InSubset %v, conditions %v: want outside, no public condition", a, e.InSubset(ep), ep.Conditions())
		}
	}
}

func TestSubsetRemovalMovesOnlyItsHolder(t *testing.T) {
	const n, size = 40, 4
	e := subsetEngine(t, SubsetConfig{Size: size, ClientID: "client-r"}, n, Options{})
	before := addrs(e.Eligible())
	// Remove an endpoint outside the subset: nothing moves.
	var outsider string
	for i := range n {
		if !slices.Contains(before, addr(i)) {
			outsider = addr(i)
			break
		}
	}
	set := slices.DeleteFunc(resolverEndpoints(n, nil), func(r resolver.Endpoint) bool { return r.Address == outsider })
	e.Update(set)
	if got := addrs(e.Eligible()); !slices.Equal(got, before) {
		t.Fatalf("removing non-member %s changed the subset %v to %v", outsider, before, got)
	}
	// Remove a member: exactly one replacement, the others stay.
	gone := before[0]
	set = slices.DeleteFunc(set, func(r resolver.Endpoint) bool { return r.Address == gone })
	e.Update(set)
	got := addrs(e.Eligible())
	kept := 0
	for _, a := range got {
		if slices.Contains(before, a) {
			kept++
		}
	}
	if len(got) != size || kept != size-1 || slices.Contains(got, gone) {
		t.Fatalf("removing member %s: subset %v -> %v, want %d kept and one new", gone, before, got, size-1)
	}
}

func TestSubsetDeterministicSlices(t *testing.T) {
	// 12 endpoints, size 4: 3 subsets per round. Clients 0-2 (round 0)
	// partition the endpoints; clients 3-5 (round 1) too, differently shuffled.
	const n, size = 12, 4
	var rounds [2][]string
	for idx := range 6 {
		e := subsetEngine(t, SubsetConfig{Size: size, Mode: SubsetDeterministic, ClientIndex: new(idx)}, n, Options{})
		got := addrs(e.Eligible())
		if len(got) != size {
			t.Fatalf("client %d: %d members, want %d", idx, len(got), size)
		}
		rounds[idx/3] = append(rounds[idx/3], got...)
	}
	for r, all := range rounds {
		slices.Sort(all)
		if want := addrs(testEndpointsSorted(n)); !slices.Equal(all, want) {
			t.Fatalf("round %d's subsets cover %v, want each endpoint once: %v", r, all, want)
		}
	}
	// Independent of discovery order.
	rev := resolverEndpoints(n, nil)
	slices.Reverse(rev)
	a := subsetEngine(t, SubsetConfig{Size: size, Mode: SubsetDeterministic, ClientIndex: new(4)}, 0, Options{})
	a.Update(rev)
	b := subsetEngine(t, SubsetConfig{Size: size, Mode: SubsetDeterministic, ClientIndex: new(4)}, n, Options{})
	if x, y := addrs(a.Eligible()), addrs(b.Eligible()); !slices.Equal(x, y) {
		t.Fatalf("discovery order changed the subset: %v vs %v", x, y)
	}
	// A member out: the next one of the round's permutation after the slice.
	ejected := addrs(b.Eligible())[0]
	b.SetCondition(ejected, Ejected, true)
	got := addrs(b.Eligible())
	if len(got) != size || slices.Contains(got, ejected) {
		t.Fatalf("after ejecting %s: %v", ejected, got)
	}
}

func addrsOf(eps []*Endpoint, _ bool) []string { return addrs(eps) }

func okOutcome() outcome.Outcome { return outcome.Outcome{Class: outcome.Success} }

// logBuffer collects log output, concurrently.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) count(s string) int { return strings.Count(l.String(), s) }

func testEndpointsSorted(n int) []*Endpoint { return testEndpoints(n) }

func TestSubsetSmallServiceIsWhole(t *testing.T) {
	for _, mode := range []string{SubsetRendezvous, SubsetDeterministic} {
		e := subsetEngine(t, SubsetConfig{Size: 10, Mode: mode, ClientIndex: new(7)}, 6, Options{})
		if got := len(e.Eligible()); got != 6 {
			t.Fatalf("%s: %d eligible of 6 with size 10, want all", mode, got)
		}
	}
}

func TestSubsetPicksStayInSubsetUnderChurn(t *testing.T) {
	// Seed 7. Members churn among the 8 best-ranked endpoints (at most 3 of
	// them out at once, size 5); concurrent picks must never return an
	// endpoint ranked below them, nor one that is out of the subset when the
	// churn stops.
	const n, size, top = 60, 5, 8
	order := rankOrder(t, "churn", n, top)
	allowed := map[*Endpoint]bool{}
	e := subsetEngine(t, SubsetConfig{Size: size, ClientID: "churn"}, n, Options{Rand: seededRand(7)})
	for _, a := range order {
		allowed[e.Endpoint(a)] = true
	}
	var stop atomic.Bool
	var bad atomic.Pointer[string]
	var picks atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for !stop.Load() {
				ep, err := e.Pick(PickInfo{})
				if err != nil {
					s := err.Error()
					bad.Store(&s)
					return
				}
				if !allowed[ep] {
					s := "picked " + ep.Address() + ", ranked below the top 8"
					bad.Store(&s)
				}
				picks.Add(1)
				e.Done(ep, okOutcome())
			}
		})
	}
	r := seededRand(7)
	out := map[string]bool{}
	conds := []Condition{Ejected, Unhealthy, BreakerOpen, Paused}
	for i := range 3000 {
		a := order[r()%top]
		if out[a] {
			e.SetConditionWhy(a, conds[i%len(conds)], false, "churn")
			e.SetConditionWhy(a, subsetQualify, false, "churn")
			delete(out, a)
		} else if len(out) < 3 {
			e.SetConditionWhy(a, conds[i%len(conds)], true, "churn")
			out[a] = true
		}
		if i%100 == 0 {
			e.settled() // the churn outruns the pace (see settle)
			if got := len(e.Eligible()); got != size {
				t.Errorf("step %d: %d members, want %d", i, got, size)
			}
		}
	}
	// Let the pickers run against the final state too (the churn can end
	// before they were scheduled).
	for deadline := time.Now().Add(10 * time.Second); picks.Load() < 100 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	if p := bad.Load(); p != nil {
		t.Fatal(*p)
	}
	if picks.Load() == 0 {
		t.Fatal("no pick ran")
	}
	e.settled()
	for _, ep := range e.Endpoints() {
		if !allowed[ep] && e.InSubset(ep) {
			t.Fatalf("%s is a candidate", ep.Address())
		}
	}
	t.Logf("%d picks during 3000 churn steps", picks.Load())
}

func TestSubsetConfigErrors(t *testing.T) {
	for _, tc := range []struct{ js, want string }{
		{`{"subset":{"size":0}}`, "subset.size: 0 is out of range [1, 100000]"},
		{`{"subset":{"size":100001}}`, "subset.size: 100001 is out of range [1, 100000]"},
		{`{"subset":{"size":3,"mode":"random"}}`, `subset.mode: unknown mode "random"`},
		{`{"subset":{"size":3,"mode":"deterministic"}}`, "subset.clientIndex: required with mode \"deterministic\": set it, or the LODESTAR_CLIENT_INDEX environment variable"},
		{`{"subset":{"size":3,"mode":"deterministic","clientIndex":4,"clientCount":4}}`, "subset.clientIndex: 4 is not below subset.clientCount 4"},
		{`{"subset":{"size":3,"mode":"deterministic","clientIndex":-1}}`, "subset.clientIndex: -1 is out of range"},
		{`{"subset":{"size":3,"clientID":"x"}}`, `subset: unknown field "clientID", did you mean "clientId"?`},
	} {
		_, err := ParseConfig([]byte(tc.js))
		if err == nil || !contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.js, err, tc.want)
		}
	}
	// NewEngine rejects what Validate rejects.
	if _, err := NewEngine(Config{Subset: &SubsetConfig{Size: 2, Mode: SubsetDeterministic}}, Options{}); err == nil {
		t.Fatal("NewEngine took deterministic without an index")
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func TestSubsetEnvironment(t *testing.T) {
	t.Setenv(EnvClientIndex, "2")
	t.Setenv(EnvClientCount, "3")
	cfg, err := ParseConfig([]byte(`{"subset":{"size":4,"mode":"deterministic"}}`))
	if err != nil {
		t.Fatal(err)
	}
	p, _ := cfg.Subset.resolve()
	if p.index != 2 || p.count != 3 {
		t.Fatalf("from the environment: index %d count %d, want 2 and 3", p.index, p.count)
	}
	// The config wins over the environment.
	cfg.Subset.ClientIndex = new(1)
	if p, _ := cfg.Subset.resolve(); p.index != 1 {
		t.Fatalf("config index 1 with env 2: got %d", p.index)
	}
	t.Setenv(EnvClientIndex, "two")
	cfg.Subset.ClientIndex = nil
	if err := cfg.Validate(); err == nil || !contains(err.Error(), "environment variable LODESTAR_CLIENT_INDEX: want an integer") || contains(err.Error(), "two") {
		t.Fatalf("bad env index: %v", err)
	}
	t.Setenv(EnvClientIndex, "3")
	if err := cfg.Validate(); err == nil || !contains(err.Error(), "subset.clientIndex: 3 is not below subset.clientCount 3") {
		t.Fatalf("env index = env count: %v", err)
	}
	// Rendezvous: the id from the environment, else one per process.
	t.Setenv(EnvClientID, "pod-7")
	p, _ = (&SubsetConfig{Size: 3}).resolve()
	if p.clientID != "pod-7" {
		t.Fatalf("client id %q, want pod-7 from %s", p.clientID, EnvClientID)
	}
	t.Setenv(EnvClientID, "")
	p1, _ := (&SubsetConfig{Size: 3}).resolve()
	p2, _ := (&SubsetConfig{Size: 3}).resolve()
	if p1.clientID == "" || p1.clientID != p2.clientID {
		t.Fatalf("process ids %q, %q: want one non-empty id per process", p1.clientID, p2.clientID)
	}
}

func TestSubsetSizeDefault(t *testing.T) {
	cfg, err := ParseConfig([]byte(`{"subset": {}}`))
	if err != nil {
		t.Fatal(err)
	}
	e := subsetEngine(t, *cfg.Subset, 100, Options{})
	if got := len(e.Eligible()); got != DefaultSubsetSize {
		t.Fatalf("{\"subset\": {}}: %d eligible of 100, want the default %d", got, DefaultSubsetSize)
	}
}

func TestSubsetJSONRoundTrip(t *testing.T) {
	js := `{"subset":{"size":20,"mode":"deterministic","clientId":"a","clientIndex":0,"clientCount":10}}`
	cfg, err := ParseConfig([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	out, err := cfg.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseConfig(out)
	if err != nil {
		t.Fatal(err)
	}
	if *back.Subset.ClientIndex != 0 || back.Subset.Size != 20 || back.Subset.Mode != SubsetDeterministic || *back.Subset.ClientCount != 10 || back.Subset.ClientID != "a" {
		t.Fatalf("round trip %s -> %s -> %+v", js, out, *back.Subset)
	}
}

func TestSubsetReconfigureOff(t *testing.T) {
	e := subsetEngine(t, SubsetConfig{Size: 3, ClientID: "x"}, 10, Options{})
	if got := len(e.Eligible()); got != 3 {
		t.Fatalf("%d eligible, want 3", got)
	}
	if err := e.Reconfigure(Config{Subset: &SubsetConfig{Size: 5, ClientID: "x"}}); err != nil {
		t.Fatal(err)
	}
	if got := len(e.Eligible()); got != 5 {
		t.Fatalf("size 5: %d eligible", got)
	}
	if err := e.Reconfigure(Config{}); err != nil {
		t.Fatal(err)
	}
	if got := len(e.Eligible()); got != 10 {
		t.Fatalf("subsetting off: %d eligible, want all 10", got)
	}
	if _, ok := e.SubsetCandidates(); ok {
		t.Fatal("SubsetCandidates reports subsetting on")
	}
}

func TestSubsetChangeHookAndLog(t *testing.T) {
	var calls atomic.Int64
	var logs logBuffer
	e := subsetEngine(t, SubsetConfig{Size: 2, ClientID: "h"}, 0, Options{
		OnSubsetChange: func() { calls.Add(1) },
		Logger:         slog.New(slog.NewTextHandler(&logs, nil)),
	})
	e.Update(resolverEndpoints(8, nil))
	if calls.Load() != 1 {
		t.Fatalf("first set: %d hook calls, want 1", calls.Load())
	}
	mem := addrs(e.Eligible())
	e.SetCondition(mem[0], NotConnected, true) // not a subset change
	if calls.Load() != 1 {
		t.Fatalf("NotConnected: %d hook calls, want still 1", calls.Load())
	}
	e.SetCondition(mem[0], Ejected, true)
	if calls.Load() != 2 {
		t.Fatalf("ejection: %d hook calls, want 2", calls.Load())
	}
	if n := logs.count("lodestar: subset changed"); n != 2 {
		t.Fatalf("%d subset log lines, want 2 (one per changing rebuild):\n%s", n, logs.String())
	}
}

// The config tables of config_test.go cover the subset section too (names
// exact, ranges checked, zero values written checked).
func init() {
	sections = append(sections, section{"subset", func(members string) string {
		return `{"subset": {` + members + `}}`
	}})
	maps.Copy(goodValues, map[string]string{
		"subset": `{"size": 20}`, "size": "20", "mode": `"rendezvous"`, "clientId": `"pod-3"`,
		"clientIndex": "1", "clientCount": "5",
	})
	rangeCases = append(rangeCases, []struct {
		section, field string
		bad            []string
		ok             []string
		rng            string
	}{
		{"subset", "size", []string{"0", "-1", "100001"}, []string{"1", "100000"}, "[1, 100000]"},
		{"subset", "clientIndex", []string{"-1", "10000001"}, []string{"0", "10000000"}, "[0, 10000000]"},
		{"subset", "clientCount", []string{"0", "-1", "10000001"}, []string{"1", "10000000"}, "[1, 10000000]"},
	}...)
}

// rerank, the O(n) path a rendezvous subset takes on a membership change,
// gives the ranking a full rank gives: 300 random joins and leaves (seed 19)
// among a pool of 600 addresses, the ranking compared whole after each.
func TestSubsetRerankMatchesRank(t *testing.T) {
	for _, sc := range []SubsetConfig{
		{Size: 10, Mode: "rendezvous", ClientID: "c-7"},
		{Size: 7, Mode: "deterministic", ClientIndex: new(12), ClientCount: new(40)},
	} {
		t.Run(sc.Mode, func(t *testing.T) { testRerank(t, sc) })
	}
}

func testRerank(t *testing.T, sc SubsetConfig) {
	e := subsetEngine(t, sc, 0, Options{})
	rnd := rand.New(rand.NewPCG(19, 19))
	pool := resolverEndpoints(600, nil)
	on := make([]bool, len(pool))
	for i := range 300 {
		on[i] = true
	}
	incremental := 0
	for round := range 300 {
		var set []resolver.Endpoint
		for i, ok := range on {
			if ok {
				set = append(set, pool[i])
			}
		}
		e.Update(set)
		e.mu.Lock()
		got := slices.Clone(e.sub.groups[0].ranked)
		fresh := newSubsetter(e.cfg.Subset, e.mode.Load().grouping)
		fresh.rank(e.sorted)
		want := fresh.groups[0].ranked
		incremental = e.sub.reranks
		e.mu.Unlock()
		if !slices.Equal(got, want) {
			t.Fatalf("round %d: ranking differs from a full rank: %v vs %v", round, addrs(got[:5]), addrs(want[:5]))
		}
		k := rnd.IntN(len(pool))
		on[k] = !on[k]
	}
	// Deterministic subsets take the full path when the number of subsets
	// per round changes (N crosses a multiple of the size): about 1 in 7.
	t.Logf("%s: %d of 299 membership changes reranked incrementally", sc.Mode, incremental)
	if incremental < 200 {
		t.Errorf("%d of 299 membership changes took the incremental path, want ≥ 200", incremental)
	}
}

// The status (and so the debug page) tells the endpoints outside the subset
// from the members: 30 endpoints, subset 5.
func TestSubsetStatus(t *testing.T) {
	e := subsetEngine(t, SubsetConfig{Size: 5, ClientID: "status"}, 30, Options{})
	out, in := 0, 0
	for _, es := range e.Status().Endpoints {
		if es.OutsideSubset {
			out++
			if es.State != "outside the subset" {
				t.Errorf("%s: state %q", es.Address, es.State)
			}
		} else {
			in++
		}
	}
	if in != 5 || out != 25 {
		t.Fatalf("status: %d in the subset, %d outside; want 5 and 25", in, out)
	}
}

// With locality on, the subset is taken per zone group: 30 endpoints in the
// caller's zone and 30 in another, subset 5: 5 candidates in each, and while
// the local zone is healthy every pick stays in it (seed 21, 2,000 picks).
// Ejecting a local member brings the next-ranked local endpoint in, not a
// remote one.
func TestSubsetPerZoneGroup(t *testing.T) {
	var eps []resolver.Endpoint
	for z := range 2 {
		for i := range 30 {
			eps = append(eps, resolver.Endpoint{Address: fmt.Sprintf("10.%d.0.%d:80", z, i+1),
				Locality: resolver.Locality{Region: "r", Zone: fmt.Sprintf("z%d", z)}})
		}
	}
	e := locEngine(t, Config{
		Locality: &LocalityConfig{Zone: "z0", Region: "r"},
		Subset:   &SubsetConfig{Size: 5, ClientID: "zoned"},
	}, 21, nil, eps...)
	cand, on := e.SubsetCandidates()
	if !on {
		t.Fatal("subsetting is off")
	}
	perZone := map[string]int{}
	for _, ep := range cand {
		perZone[ep.Info().Locality.Zone]++
	}
	if perZone["z0"] != 5 || perZone["z1"] != 5 {
		t.Fatalf("candidates per zone %v, want 5 in each", perZone)
	}
	local := func(ep *Endpoint) bool { return ep.Info().Locality.Zone == "z0" }
	if got := pickShare(t, e, 2000, local); got != 1 {
		t.Fatalf("%.3f of picks local, want all", got)
	}
	var victim *Endpoint
	for _, ep := range e.Eligible() {
		if local(ep) {
			victim = ep
			break
		}
	}
	e.SetCondition(victim.Address(), Ejected, true)
	perZone = map[string]int{}
	for _, ep := range e.Eligible() {
		perZone[ep.Info().Locality.Zone]++
	}
	if perZone["z0"] != 5 || perZone["z1"] != 5 {
		t.Fatalf("after ejecting a local member, members per zone %v, want 5 in each", perZone)
	}
}
