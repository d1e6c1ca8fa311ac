package balancer

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar/balancer/outcome"
)

// Discovery errors are logged at most once per DiscoveryErrorLogInterval
// (by the engine's clock): the first at once, the next a minute later with
// the number not logged in between; a good answer logs the recovery and
// starts over.
func TestDiscoveryErrorLogRateLimited(t *testing.T) {
	var buf bytes.Buffer
	clk := newFakeClock()
	e, err := NewEngine(Config{}, Options{Service: "svc", Now: clk.Now, Target: "dns:///svc.example",
		Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	lines := func() []string { return strings.Split(strings.TrimSpace(buf.String()), "\n") }
	for range 10 {
		e.ReportError(errors.New("lookup failed"))
		clk.Advance(time.Second)
	}
	if l := lines(); len(l) != 1 || !strings.Contains(l[0], "level=WARN") || strings.Contains(l[0], "suppressed") ||
		!strings.Contains(l[0], "target=dns:///svc.example") {
		t.Fatalf("after 10 errors in 10s: %q", l)
	}
	clk.Advance(DiscoveryErrorLogInterval)
	e.ReportError(errors.New("lookup failed"))
	if l := lines(); len(l) != 2 || !strings.Contains(l[1], "suppressed=9") {
		t.Fatalf("a minute later: %q", l)
	}
	e.Update(resolverEndpoints(2, nil))
	if l := lines(); len(l) != 3 || !strings.Contains(l[2], "level=INFO") || !strings.Contains(l[2], "discovery recovered") || !strings.Contains(l[2], "errors=1") {
		t.Fatalf("after a good answer: %q", l)
	}
	e.ReportError(errors.New("lookup failed again"))
	if l := lines(); len(l) != 4 || !strings.Contains(l[3], "lookup failed again") {
		t.Fatalf("the first error after a recovery: %q", l)
	}
	if evs := e.RecentEvents(); len(evs) == 0 || evs[len(evs)-1].Kind != DiscoveryError {
		t.Fatalf("the last event is not the discovery error: %v", evs)
	}
}

// The event history keeps the last EventHistory events, oldest first.
func TestRecentEventsBounded(t *testing.T) {
	e := newTestEngine(t, &RoundRobin{}, newFakeClock(), 1, resolverEndpoints(2, nil))
	for i := range 3 * EventHistory {
		e.SetConditionWhy(addr(0), Ejected, i%2 == 0, "flip")
	}
	// The flips outrun the pace: the paced rebuild's timer may be delivering
	// the last events when the loop ends.
	e.settled()
	evs := e.RecentEvents()
	if len(evs) != EventHistory {
		t.Fatalf("%d events kept, want %d", len(evs), EventHistory)
	}
	last := evs[len(evs)-1]
	if last.Kind != ConditionChanged || last.New != 0 {
		t.Fatalf("the last event is %+v, want the last un-ejection", last)
	}
}

// A closed engine leaves the process's list.
func TestEnginesRegistry(t *testing.T) {
	e, err := NewEngine(Config{}, Options{Service: "registered", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	has := func() bool {
		for _, x := range Engines() {
			if x == e {
				return true
			}
		}
		return false
	}
	if !has() {
		t.Fatal("a new engine is not in Engines()")
	}
	e.Close()
	if has() {
		t.Fatal("a closed engine is still in Engines()")
	}
}

// The recent latency figures: p50, p99 and EWMA of what Done recorded;
// canceled and unsent attempts are left out.
func TestLatencyStatus(t *testing.T) {
	var r recentLatency
	for i := 1; i <= 100; i++ {
		r.add(time.Duration(i) * time.Millisecond)
	}
	ls := latencyStatus(r.samples())
	if ls.Samples != 100 || ls.P50Millis != 50 || ls.P99Millis != 99 {
		t.Fatalf("1..100ms: %+v", ls)
	}
	for range 3 * recentSamples {
		r.add(7 * time.Millisecond)
	}
	ls = latencyStatus(r.samples())
	if ls.Samples != recentSamples || ls.P50Millis != 7 || ls.P99Millis != 7 || ls.EWMAMillis < 6.99 || ls.EWMAMillis > 7.01 {
		t.Fatalf("after %d samples of 7ms: %+v", 3*recentSamples, ls)
	}
}

// The share of recent attempts looks back to the oldest reading the engine
// kept once it is 5s old; before that, and when the window holds no
// attempt, it is the share of every attempt.
func TestStatusShareWindow(t *testing.T) {
	clk := newFakeClock()
	e := newTestEngine(t, &RoundRobin{}, clk, 1, resolverEndpoints(2, nil))
	a, b := e.Endpoint(addr(0)), e.Endpoint(addr(1))
	for range 30 {
		e.Done(mustPick(t, e, a), outcomeOK)
	}
	for range 10 {
		e.Done(mustPick(t, e, b), outcomeOK)
	}
	share := func(st EngineStatus, ep *Endpoint) float64 {
		for _, es := range st.Endpoints {
			if es.Address == ep.Address() {
				return es.SharePercent
			}
		}
		t.Fatalf("no %s in the status", ep.Address())
		return 0
	}
	st := e.Status() // the first reading
	if st.ShareWindowSeconds != 0 || share(st, a) != 75 {
		t.Fatalf("first status: window %v, a's share %v; want 0 (every attempt) and 75", st.ShareWindowSeconds, share(st, a))
	}
	clk.Advance(6 * time.Second)
	for range 10 {
		e.Done(mustPick(t, e, b), outcomeOK)
	}
	st = e.Status()
	if st.ShareWindowSeconds != 6 || share(st, b) != 100 {
		t.Fatalf("6s later: window %v, b's share %v; want 6 and 100", st.ShareWindowSeconds, share(st, b))
	}
}

var outcomeOK = outcome.Outcome{Class: outcome.Success, Latency: time.Millisecond}
