package consul

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/internal/backoff"
	"github.com/lodestar-go/lodestar/resolver"
)

// followLimit is the requirement: a change in Consul reaches the feed
// within 1s of being made.
const followLimit = time.Second

// instance registers service instance id of svc on 127.0.0.1:port with a TTL
// check in the given status; mod adjusts the registration.
func instance(t *testing.T, c *api.Client, svc, id string, port int, status string, mod func(*api.AgentServiceRegistration)) {
	t.Helper()
	reg := &api.AgentServiceRegistration{
		ID: id, Name: svc, Address: "127.0.0.1", Port: port,
		Check: &api.AgentServiceCheck{CheckID: "ttl:" + id, TTL: "10m", Status: status},
	}
	if mod != nil {
		mod(reg)
	}
	if err := c.Agent().ServiceRegister(reg); err != nil {
		t.Fatalf("register %s: %v", id, err)
	}
	t.Cleanup(func() { _ = c.Agent().ServiceDeregister(id) })
}

func setHealth(t *testing.T, c *api.Client, id, status string) {
	t.Helper()
	if err := c.Agent().UpdateTTL("ttl:"+id, "", status); err != nil {
		t.Fatalf("set %s %s: %v", id, status, err)
	}
}

// within checks that the update u came within followLimit of start, logs the
// latency and returns it.
func within(t *testing.T, what string, start time.Time, u update) time.Duration {
	t.Helper()
	d := u.At.Sub(start)
	t.Logf("%s reached the feed %v after the change", what, d.Round(100*time.Microsecond))
	if d > followLimit {
		t.Errorf("%s took %v to reach the feed, want ≤ %v", what, d, followLimit)
	}
	return d
}

func newFeed(t *testing.T, opts Options) *Feed {
	t.Helper()
	f, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestAgentFollowsRegistrationsAndHealth(t *testing.T) {
	c, addr := needAgent(t)
	const svc = "follow"
	instance(t, c, svc, "follow-1", 21001, api.HealthPassing, func(r *api.AgentServiceRegistration) {
		r.Weights = &api.AgentWeights{Passing: 7, Warning: 2}
		r.Tags = []string{"primary", "region=eu-west"}
		r.Meta = map[string]string{"version": "1.4", "zone": "eu-west-1a", "priority": "1"}
	})
	instance(t, c, svc, "follow-2", 21002, api.HealthPassing, func(r *api.AgentServiceRegistration) {
		r.Address = "" // the node's address, 127.0.0.1
	})
	instance(t, c, svc, "follow-warn", 21009, api.HealthWarning, nil)

	s := watch(t, newFeed(t, Options{Service: svc, Address: addr, WaitTime: 30 * time.Second}))
	u, i := s.WaitUpdate(t, 0, 10*time.Second, "follow-1 and follow-2", hasAddrs("127.0.0.1:21001", "127.0.0.1:21002"))

	ep, _ := byAddr(u.Endpoints, "127.0.0.1:21001")
	if ep.Weight != 7 {
		t.Errorf("follow-1 weight %d, want 7 (Weights.Passing)", ep.Weight)
	}
	if want := (resolver.Locality{Region: "eu-west", Zone: "eu-west-1a"}); ep.Locality != want {
		t.Errorf("follow-1 locality %+v, want %+v", ep.Locality, want)
	}
	if ep.Priority != 1 {
		t.Errorf("follow-1 priority %d, want 1", ep.Priority)
	}
	for k, v := range map[string]string{
		"version": "1.4", "tag:primary": "true", "tag:region=eu-west": "true",
		MetaServiceID: "follow-1", MetaHealth: "passing", MetaDatacenter: "dc1",
	} {
		if ep.Metadata[k] != v {
			t.Errorf("follow-1 metadata[%q] = %q, want %q (metadata %v)", k, ep.Metadata[k], v, ep.Metadata)
		}
	}
	if ep.Metadata[MetaNode] == "" {
		t.Errorf("follow-1 metadata has no %s: %v", MetaNode, ep.Metadata)
	}
	if ep2, _ := byAddr(u.Endpoints, "127.0.0.1:21002"); ep2.Weight != 1 {
		t.Errorf("follow-2 weight %d, want Consul's default 1", ep2.Weight)
	}

	start := time.Now()
	instance(t, c, svc, "follow-3", 21003, api.HealthPassing, nil)
	u, i = s.WaitUpdate(t, i+1, 5*time.Second, "follow-3 added", hasAddrs("127.0.0.1:21001", "127.0.0.1:21002", "127.0.0.1:21003"))
	within(t, "a registration", start, u)

	start = time.Now()
	if err := c.Agent().ServiceDeregister("follow-2"); err != nil {
		t.Fatal(err)
	}
	u, i = s.WaitUpdate(t, i+1, 5*time.Second, "follow-2 gone", hasAddrs("127.0.0.1:21001", "127.0.0.1:21003"))
	within(t, "a deregistration", start, u)

	start = time.Now()
	setHealth(t, c, "follow-1", api.HealthCritical)
	u, i = s.WaitUpdate(t, i+1, 5*time.Second, "critical follow-1 gone", hasAddrs("127.0.0.1:21003"))
	within(t, "a check turning critical", start, u)

	start = time.Now()
	setHealth(t, c, "follow-1", api.HealthPassing)
	u, i = s.WaitUpdate(t, i+1, 5*time.Second, "follow-1 back", hasAddrs("127.0.0.1:21001", "127.0.0.1:21003"))
	within(t, "a check turning passing", start, u)

	start = time.Now()
	setHealth(t, c, "follow-3", api.HealthWarning)
	u, i = s.WaitUpdate(t, i+1, 5*time.Second, "warning follow-3 gone", hasAddrs("127.0.0.1:21001"))
	within(t, "a check turning warning", start, u)

	start = time.Now()
	if err := c.Agent().EnableServiceMaintenance("follow-1", "test"); err != nil {
		t.Fatal(err)
	}
	u, i = s.WaitUpdate(t, i+1, 5*time.Second, "follow-1 in maintenance gone", hasAddrs())
	within(t, "maintenance mode", start, u)
	if err := c.Agent().DisableServiceMaintenance("follow-1"); err != nil {
		t.Fatal(err)
	}
	s.WaitUpdate(t, i+1, 5*time.Second, "follow-1 out of maintenance", hasAddrs("127.0.0.1:21001"))

	// A change to an instance's metadata arrives too.
	start = time.Now()
	instance(t, c, svc, "follow-1", 21001, api.HealthPassing, func(r *api.AgentServiceRegistration) {
		r.Weights = &api.AgentWeights{Passing: 3, Warning: 1}
		r.Meta = map[string]string{"version": "1.5"}
	})
	u, _ = s.WaitUpdate(t, 0, 5*time.Second, "follow-1 at version 1.5", func(eps []resolver.Endpoint) bool {
		ep, ok := byAddr(eps, "127.0.0.1:21001")
		return ok && ep.Metadata["version"] == "1.5" && ep.Weight == 3
	})
	within(t, "a metadata change", start, u)
	checkNoRepeats(t, s)
}

func TestAgentIncludeWarning(t *testing.T) {
	c, addr := needAgent(t)
	const svc = "warnings"
	instance(t, c, svc, "warn-1", 22001, api.HealthPassing, func(r *api.AgentServiceRegistration) {
		r.Weights = &api.AgentWeights{Passing: 10, Warning: 3}
	})
	instance(t, c, svc, "warn-2", 22002, api.HealthWarning, func(r *api.AgentServiceRegistration) {
		r.Weights = &api.AgentWeights{Passing: 10, Warning: 4}
	})
	instance(t, c, svc, "warn-crit", 22003, api.HealthCritical, nil)

	f, err := resolver.Parse(fmt.Sprintf("consul://%s/%s?passingOnly=false&wait=30s", addr, svc))
	if err != nil {
		t.Fatal(err)
	}
	s := watch(t, f)
	u, i := s.WaitUpdate(t, 0, 10*time.Second, "passing and warning instances", hasAddrs("127.0.0.1:22001", "127.0.0.1:22002"))
	if ep, _ := byAddr(u.Endpoints, "127.0.0.1:22002"); ep.Weight != 4 || ep.Metadata[MetaHealth] != api.HealthWarning {
		t.Errorf("warning instance: weight %d health %q, want 4 (Weights.Warning) and warning", ep.Weight, ep.Metadata[MetaHealth])
	}

	start := time.Now()
	setHealth(t, c, "warn-1", api.HealthWarning)
	u, _ = s.WaitUpdate(t, i+1, 5*time.Second, "warn-1 at its warning weight", func(eps []resolver.Endpoint) bool {
		ep, ok := byAddr(eps, "127.0.0.1:22001")
		return ok && ep.Weight == 3
	})
	within(t, "a passing→warning weight change", start, u)

	start = time.Now()
	setHealth(t, c, "warn-2", api.HealthCritical)
	u, _ = s.WaitUpdate(t, i+1, 5*time.Second, "critical warn-2 gone", hasAddrs("127.0.0.1:22001"))
	within(t, "a warning→critical change", start, u)

	// A warning weight of 0 means no traffic while warning.
	instance(t, c, svc, "warn-zero", 22004, api.HealthWarning, func(r *api.AgentServiceRegistration) {
		r.Weights = &api.AgentWeights{Passing: 1, Warning: 0}
	})
	instance(t, c, svc, "warn-marker", 22005, api.HealthPassing, nil)
	u, _ = s.WaitUpdate(t, i+1, 5*time.Second, "warn-marker", func(eps []resolver.Endpoint) bool {
		_, ok := byAddr(eps, "127.0.0.1:22005")
		return ok
	})
	if _, ok := byAddr(u.Endpoints, "127.0.0.1:22004"); ok {
		t.Errorf("an instance warning with Weights.Warning 0 is served: %v", addrs(u.Endpoints))
	}
	checkNoRepeats(t, s)
}

func TestAgentTagsAndFilterFromTarget(t *testing.T) {
	c, addr := needAgent(t)
	const svc = "tagged"
	instance(t, c, svc, "tagged-1", 23001, api.HealthPassing, func(r *api.AgentServiceRegistration) {
		r.Tags = []string{"v2", "blue"}
		r.Meta = map[string]string{"track": "stable"}
	})
	instance(t, c, svc, "tagged-2", 23002, api.HealthPassing, func(r *api.AgentServiceRegistration) {
		r.Tags = []string{"v2"}
		r.Meta = map[string]string{"track": "stable"}
	})
	instance(t, c, svc, "tagged-3", 23003, api.HealthPassing, func(r *api.AgentServiceRegistration) {
		r.Tags = []string{"v2", "blue"}
		r.Meta = map[string]string{"track": "canary"}
	})

	filter := url.QueryEscape(`Service.Meta.track == "stable"`)
	f, err := resolver.Parse(fmt.Sprintf("consul://%s/%s?tag=v2&tag=blue&filter=%s&stale=true&dc=dc1&near=_agent", addr, svc, filter))
	if err != nil {
		t.Fatal(err)
	}
	s := watch(t, f)
	_, i := s.WaitUpdate(t, 0, 10*time.Second, "the one instance with both tags and the stable track", hasAddrs("127.0.0.1:23001"))

	start := time.Now()
	instance(t, c, svc, "tagged-4", 23004, api.HealthPassing, func(r *api.AgentServiceRegistration) {
		r.Tags = []string{"blue", "v2", "extra"}
		r.Meta = map[string]string{"track": "stable"}
	})
	u, _ := s.WaitUpdate(t, i+1, 5*time.Second, "tagged-4", hasAddrs("127.0.0.1:23001", "127.0.0.1:23004"))
	within(t, "a matching registration", start, u)
	checkNoRepeats(t, s)
}

// TestAgentThroughEngine feeds a real balancer.Engine and checks that its picks
// follow Consul.
func TestAgentThroughEngine(t *testing.T) {
	c, addr := needAgent(t)
	const svc = "engine"
	instance(t, c, svc, "engine-1", 24001, api.HealthPassing, nil)
	instance(t, c, svc, "engine-2", 24002, api.HealthPassing, nil)

	eng, err := balancer.NewEngine(balancer.Config{}, balancer.Options{Service: svc})
	if err != nil {
		t.Fatal(err)
	}
	eng.Start(newFeed(t, Options{Service: svc, Address: addr, WaitTime: 30 * time.Second}))
	defer func() {
		start := time.Now()
		eng.Close()
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Errorf("Engine.Close took %v with a blocking query in flight", d)
		}
	}()

	// picked returns the addresses 20 round-robin picks choose.
	picked := func() map[string]int {
		got := map[string]int{}
		for range 20 {
			ep, err := eng.Pick(balancer.PickInfo{Ctx: context.Background()})
			if err != nil {
				return map[string]int{"error: " + err.Error(): 1}
			}
			got[ep.Address()]++
			eng.Done(ep, outcome.Outcome{Class: outcome.Success})
		}
		return got
	}
	waitPicks := func(what string, start time.Time, want ...string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			got := picked()
			ok := len(got) == len(want)
			for _, w := range want {
				ok = ok && got[w] > 0
			}
			if ok {
				t.Logf("picks follow %s after %v", what, time.Since(start).Round(100*time.Microsecond))
				if d := time.Since(start); d > followLimit {
					t.Errorf("picks took %v to follow %s, want ≤ %v", d, what, followLimit)
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("picks %v, want exactly %v after %s", got, want, what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitPicks("the first answer", time.Now(), "127.0.0.1:24001", "127.0.0.1:24002")

	start := time.Now()
	instance(t, c, svc, "engine-3", 24003, api.HealthPassing, nil)
	waitPicks("a registration", start, "127.0.0.1:24001", "127.0.0.1:24002", "127.0.0.1:24003")

	start = time.Now()
	if err := c.Agent().ServiceDeregister("engine-1"); err != nil {
		t.Fatal(err)
	}
	waitPicks("a deregistration", start, "127.0.0.1:24002", "127.0.0.1:24003")

	start = time.Now()
	setHealth(t, c, "engine-2", api.HealthCritical)
	waitPicks("a critical check", start, "127.0.0.1:24003")
}

// tee sends to several sinks.
type tee []resolver.Sink

func (t tee) Update(eps []resolver.Endpoint) {
	for _, s := range t {
		s.Update(append([]resolver.Endpoint(nil), eps...))
	}
}

func (t tee) ReportError(err error) {
	for _, s := range t {
		s.ReportError(err)
	}
}

// TestAgentRestart stops the shared agent under a running feed, checks the last
// good set stays in force (no update at all, errors reported, picks still
// served), then starts a new agent on the same HTTP port and checks the feed
// follows it. The new agent becomes the shared one.
func TestAgentRestart(t *testing.T) {
	c, addr := needAgent(t)
	const svc = "restart"
	instance(t, c, svc, "restart-1", 25001, api.HealthPassing, nil)
	instance(t, c, svc, "restart-2", 25002, api.HealthPassing, nil)

	eng, err := balancer.NewEngine(balancer.Config{}, balancer.Options{Service: svc})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	rec := newRecSink()
	f := newFeed(t, Options{Service: svc, Address: addr, WaitTime: 30 * time.Second,
		Backoff: backoff.Config{Base: 20 * time.Millisecond, Max: 200 * time.Millisecond}})
	// A second, concurrent watch of the same feed, which must also return at
	// once on cancel after the outage (checked by watch at the end).
	other := watch(t, f)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f.Watch(ctx, tee{rec, eng}) }()
	defer func() { cancel(); <-done }()

	_, i := rec.WaitUpdate(t, 0, 10*time.Second, "both instances", hasAddrs("127.0.0.1:25001", "127.0.0.1:25002"))

	shared.mu.Lock()
	old := shared.srv
	httpPort := old.Config.Ports.HTTP
	shared.stopped = true
	shared.mu.Unlock()
	stopAt := time.Now()
	if err := old.Stop(); err != nil {
		t.Logf("agent stop: %v", err)
	}
	t.Logf("agent stopped in %v", time.Since(stopAt).Round(time.Millisecond))
	_, errs0, _ := rec.Snapshot()
	errs := rec.WaitErrors(t, len(errs0)+3, 10*time.Second)
	t.Logf("with the agent down: %d errors reported, e.g. %v", len(errs)-len(errs0), errs[len(errs)-1])
	for range 5 { // picks keep being served from the last good set
		ep, err := eng.Pick(balancer.PickInfo{Ctx: context.Background()})
		if err != nil {
			t.Fatalf("pick with the agent down: %v", err)
		}
		eng.Done(ep, outcome.Outcome{Class: outcome.Success})
	}
	if got := len(eng.Eligible()); got != 2 {
		t.Errorf("engine has %d eligible endpoints with the agent down, want the last good 2", got)
	}
	if ups, _, _ := rec.Snapshot(); len(ups) != i+1 {
		t.Errorf("the feed published %d update(s) with the agent down: %v", len(ups)-i-1, ups[i+1:])
	}
	if ups, _, _ := other.Snapshot(); len(ups) != 1 {
		t.Errorf("the second watch published %d updates, want 1 (before the outage)", len(ups))
	}

	restartAt := time.Now()
	srv, c2, err := startAgent(httpPort)
	if err != nil {
		t.Fatalf("restarting the agent on port %d: %v", httpPort, err)
	}
	t.Logf("a new agent took over %s in %v", srv.HTTPAddr, time.Since(restartAt).Round(time.Millisecond))
	shared.mu.Lock()
	shared.srv, shared.client, shared.stopped = srv, c2, false
	shared.mu.Unlock()
	if ups, _, _ := rec.Snapshot(); len(ups) != i+1 {
		// A fresh dev agent knows no services: the feed may rightly report the
		// empty set before they are registered again; the engine keeps the
		// last non-empty one unless AllowEmpty.
		t.Logf("updates before re-registration: %v", ups[i+1:])
	}

	start := time.Now()
	instance(t, c2, svc, "restart-1", 25001, api.HealthPassing, nil)
	instance(t, c2, svc, "restart-3", 25003, api.HealthPassing, nil)
	u, _ := rec.WaitUpdate(t, i+1, 5*time.Second, "the new agent's instances", hasAddrs("127.0.0.1:25001", "127.0.0.1:25003"))
	t.Logf("the new agent's set reached the feed %v after registration", u.At.Sub(start).Round(100*time.Microsecond))
	ups, _, _ := rec.Snapshot()
	for _, u := range ups[i+1:] {
		t.Logf("update %v after re-registration: %v", u.At.Sub(start).Round(100*time.Microsecond), addrs(u.Endpoints))
	}
	// Not the 1s requirement: a query that reaches the new agent during its
	// leader election is held and retried by Consul itself (rpc_hold_timeout).
	if d := u.At.Sub(start); d > 5*time.Second {
		t.Errorf("the feed took %v to follow the new agent", d)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(eng.Eligible()) != 2 || eng.Endpoint("127.0.0.1:25003") == nil {
		if time.Now().After(deadline) {
			t.Fatalf("engine did not follow the new agent: %v", eng.Eligible())
		}
		time.Sleep(5 * time.Millisecond)
	}
}
