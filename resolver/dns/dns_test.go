package dns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/internal/backoff"
	"github.com/lodestar-go/lodestar/resolver"
)

const (
	apiName = "api.lodestar.test."
	srvName = "_http._tcp.api.lodestar.test."
)

// fast are options for tests: quick refreshes and retries.
func fast(z *zone) Options {
	return Options{
		Resolver:    ResolverFor(z.addr),
		MinInterval: 5 * time.Millisecond,
		MaxInterval: 30 * time.Millisecond,
		Timeout:     time.Second,
		Backoff:     backoff.Config{Base: 5 * time.Millisecond, Max: 20 * time.Millisecond},
	}
}

func TestHostFollowsAnswersAndKeepsLastSetOnFailure(t *testing.T) {
	z := newZone(t)
	z.set(t, apiName, mdns.TypeA, apiName+" 5 IN A 127.0.0.1", apiName+" 5 IN A 127.0.0.2")
	z.set(t, apiName, mdns.TypeAAAA, apiName+" 5 IN AAAA ::1")

	// Through the registered scheme, with the server as the authority.
	f, err := resolver.Parse(fmt.Sprintf("dns://%s/%s:8080?minInterval=5ms&maxInterval=30ms&timeout=1s", z.addr, apiName))
	if err != nil {
		t.Fatal(err)
	}
	s := watch(t, f)
	u, i := s.WaitUpdate(t, 0, 5*time.Second, "both A and the AAAA", hasAddrs("127.0.0.1:8080", "127.0.0.2:8080", "[::1]:8080"))
	if ep, _ := byAddr(u.Endpoints, "127.0.0.1:8080"); ep.Weight != 0 || ep.Priority != 0 || ep.Metadata[MetaName] != apiName {
		t.Errorf("A endpoint %+v", ep)
	}

	start := time.Now()
	z.set(t, apiName, mdns.TypeA, apiName+" 5 IN A 127.0.0.3")
	u, i = s.WaitUpdate(t, i+1, 5*time.Second, "the new A record", hasAddrs("127.0.0.3:8080", "[::1]:8080"))
	t.Logf("a changed answer reached the feed after %v (MaxInterval 30ms)", u.At.Sub(start).Round(100*time.Microsecond))

	// Failures: SERVFAIL, then NXDOMAIN, then no answer at all. Nothing is
	// published while they last; each is reported.
	for _, tc := range []struct {
		name  string
		apply func()
		undo  func()
	}{
		{"SERVFAIL", func() { z.fail(apiName, mdns.RcodeServerFailure) }, func() { z.fail(apiName, mdns.RcodeSuccess) }},
		{"NXDOMAIN", func() { z.fail(apiName, mdns.RcodeNameError) }, func() { z.fail(apiName, mdns.RcodeSuccess) }},
		{"no records", func() {
			z.set(t, apiName, mdns.TypeA)
			z.set(t, apiName, mdns.TypeAAAA)
		}, func() { z.set(t, apiName, mdns.TypeA, apiName+" 5 IN A 127.0.0.3") }},
	} {
		_, errs0, _ := s.Snapshot()
		tc.apply()
		errs := s.WaitErrors(t, len(errs0)+3, 5*time.Second)
		t.Logf("%s: reported as %v", tc.name, errs[len(errs)-1])
		if ups, _, _ := s.Snapshot(); len(ups) != i+1 {
			t.Fatalf("%s: the feed published %v", tc.name, ups[i+1:])
		}
		tc.undo()
	}
	start = time.Now()
	z.set(t, apiName, mdns.TypeAAAA, apiName+" 5 IN AAAA ::2")
	u, _ = s.WaitUpdate(t, i+1, 5*time.Second, "the answer after the failures", hasAddrs("127.0.0.3:8080", "[::2]:8080"))
	t.Logf("the first good answer after failures reached the feed after %v", u.At.Sub(start).Round(100*time.Microsecond))
	checkNoRepeats(t, s)
}

func TestHostNetwork(t *testing.T) {
	z := newZone(t)
	z.set(t, apiName, mdns.TypeA, apiName+" 5 IN A 127.0.0.1")
	z.set(t, apiName, mdns.TypeAAAA, apiName+" 5 IN AAAA ::1")
	for network, want := range map[string]string{"ip4": "127.0.0.1:80", "ip6": "[::1]:80"} {
		o := fast(z)
		o.Network = network
		f, err := NewHost(apiName+":80", o)
		if err != nil {
			t.Fatal(err)
		}
		watch(t, f).WaitUpdate(t, 0, 5*time.Second, network+" only", hasAddrs(want))
	}
}

func TestSRVMappingFromARealServer(t *testing.T) {
	z := newZone(t)
	z.set(t, srvName, mdns.TypeSRV,
		srvName+" 5 IN SRV 10 0 8001 a.lodestar.test.",
		srvName+" 5 IN SRV 10 5 8002 b.lodestar.test.",
		srvName+" 5 IN SRV 10 10 8003 c.lodestar.test.",
		srvName+" 5 IN SRV 20 1 9000 backup.lodestar.test.",
	)
	z.set(t, "a.lodestar.test.", mdns.TypeA, "a.lodestar.test. 5 IN A 127.0.0.1")
	z.set(t, "b.lodestar.test.", mdns.TypeA, "b.lodestar.test. 5 IN A 127.0.0.2", "b.lodestar.test. 5 IN A 127.0.0.22")
	z.set(t, "c.lodestar.test.", mdns.TypeAAAA, "c.lodestar.test. 5 IN AAAA ::3")
	z.set(t, "backup.lodestar.test.", mdns.TypeA, "backup.lodestar.test. 5 IN A 127.0.0.9")

	f, err := resolver.Parse(fmt.Sprintf("srv://%s/%s?minInterval=5ms&maxInterval=30ms", z.addr, srvName))
	if err != nil {
		t.Fatal(err)
	}
	s := watch(t, f)
	u, i := s.WaitUpdate(t, 0, 5*time.Second, "every target's addresses",
		hasAddrs("127.0.0.1:8001", "127.0.0.2:8002", "127.0.0.22:8002", "[::3]:8003", "127.0.0.9:9000"))
	for addr, want := range map[string]struct {
		weight uint32
		tier   int
		target string
		prio   string
	}{
		"127.0.0.1:8001":  {1, 0, "a.lodestar.test.", "10"},
		"127.0.0.2:8002":  {80, 0, "b.lodestar.test.", "10"},
		"127.0.0.22:8002": {80, 0, "b.lodestar.test.", "10"},
		"[::3]:8003":      {160, 0, "c.lodestar.test.", "10"},
		"127.0.0.9:9000":  {16, 1, "backup.lodestar.test.", "20"},
	} {
		ep, _ := byAddr(u.Endpoints, addr)
		if ep.Weight != want.weight || ep.Priority != want.tier || ep.Metadata[MetaSRVTarget] != want.target || ep.Metadata[MetaSRVPriority] != want.prio {
			t.Errorf("%s: weight %d tier %d metadata %v, want weight %d tier %d target %s priority %s",
				addr, ep.Weight, ep.Priority, ep.Metadata, want.weight, want.tier, want.target, want.prio)
		}
	}

	// A target that stops resolving keeps its last addresses (reported); a new
	// target that does not resolve is left out (reported).
	z.fail("b.lodestar.test.", mdns.RcodeServerFailure)
	z.set(t, srvName, mdns.TypeSRV,
		srvName+" 5 IN SRV 10 5 8002 b.lodestar.test.",
		srvName+" 5 IN SRV 10 10 8003 c.lodestar.test.",
		srvName+" 5 IN SRV 10 10 8004 broken.lodestar.test.",
	)
	z.fail("broken.lodestar.test.", mdns.RcodeServerFailure)
	start := time.Now()
	u, i = s.WaitUpdate(t, i+1, 5*time.Second, "a and backup gone, b kept from cache",
		hasAddrs("127.0.0.2:8002", "127.0.0.22:8002", "[::3]:8003"))
	t.Logf("a changed SRV answer reached the feed after %v", u.At.Sub(start).Round(100*time.Microsecond))
	_, errs, _ := s.Snapshot()
	if !containsErr(errs, "b.lodestar.test.", "last addresses") || !containsErr(errs, "broken.lodestar.test.", "left out") {
		t.Errorf("errors %v, want b served from cache and broken left out", errs)
	}

	// The whole lookup failing keeps the set.
	_, errs0, _ := s.Snapshot()
	z.fail(srvName, mdns.RcodeServerFailure)
	s.WaitErrors(t, len(errs0)+5, 5*time.Second)
	if ups, _, _ := s.Snapshot(); len(ups) != i+1 {
		t.Fatalf("published during a SRV failure: %v", ups[i+1:])
	}
	z.fail(srvName, mdns.RcodeSuccess)
	z.fail("b.lodestar.test.", mdns.RcodeSuccess)
	z.set(t, "b.lodestar.test.", mdns.TypeA, "b.lodestar.test. 5 IN A 127.0.0.5")
	s.WaitUpdate(t, i+1, 5*time.Second, "b at its new address", hasAddrs("127.0.0.5:8002", "[::3]:8003"))
	checkNoRepeats(t, s)
}

func containsErr(errs []error, subs ...string) bool {
	for _, err := range errs {
		ok := true
		for _, s := range subs {
			ok = ok && strings.Contains(err.Error(), s)
		}
		if ok {
			return true
		}
	}
	return false
}

func TestIntervals(t *testing.T) {
	z := newZone(t)
	z.set(t, apiName, mdns.TypeA, apiName+" 5 IN A 127.0.0.1")
	o := fast(z)
	o.Network = "ip4"
	o.MinInterval = 100 * time.Millisecond
	o.MaxInterval = time.Hour
	f, err := NewHost(apiName+":80", o)
	if err != nil {
		t.Fatal(err)
	}
	s := watch(t, f)
	_, i := s.WaitUpdate(t, 0, 5*time.Second, "the first answer", hasAddrs("127.0.0.1:80"))
	first := time.Now()

	// MaxInterval is an hour: nothing more happens by itself. ResolveNow asks
	// for a lookup, which MinInterval holds back to 100ms after the last.
	z.set(t, apiName, mdns.TypeA, apiName+" 5 IN A 127.0.0.2")
	f.ResolveNow()
	f.ResolveNow()
	u, i := s.WaitUpdate(t, i+1, 5*time.Second, "the answer ResolveNow asked for", hasAddrs("127.0.0.2:80"))
	if d := u.At.Sub(first); d < 90*time.Millisecond {
		t.Errorf("ResolveNow looked up %v after the last lookup, want ≥ MinInterval 100ms", d)
	}
	t.Logf("ResolveNow right after a lookup: new answer after %v (MinInterval 100ms)", u.At.Sub(first).Round(time.Millisecond))
	if n := z.count(apiName, mdns.TypeA); n != 2 {
		t.Errorf("%d A queries, want 2 (two ResolveNow calls make one lookup)", n)
	}

	// Long after the last lookup, ResolveNow looks up at once (MaxInterval is an
	// hour, so an answer within WaitUpdate's bound can only come from ResolveNow).
	for time.Since(u.At) < 150*time.Millisecond {
		time.Sleep(10 * time.Millisecond)
	}
	z.set(t, apiName, mdns.TypeA, apiName+" 5 IN A 127.0.0.3")
	start := time.Now()
	f.ResolveNow()
	u, _ = s.WaitUpdate(t, i+1, 5*time.Second, "the next answer", hasAddrs("127.0.0.3:80"))
	t.Logf("ResolveNow after MinInterval: new answer after %v", u.At.Sub(start).Round(100*time.Microsecond))
}

func TestCancelDuringUnansweredLookup(t *testing.T) {
	z := newZone(t)
	z.set(t, srvName, mdns.TypeSRV, srvName+" 5 IN SRV 1 1 80 a.lodestar.test.")
	z.set(t, "a.lodestar.test.", mdns.TypeA, "a.lodestar.test. 5 IN A 127.0.0.1")
	o := fast(z)
	o.Timeout = time.Hour
	f, err := NewSRV(srvName, o)
	if err != nil {
		t.Fatal(err)
	}
	s := newRecSink()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Watch(ctx, s) }()
	s.WaitUpdate(t, 0, 5*time.Second, "the first answer", hasAddrs("127.0.0.1:80"))
	z.setDrop(true)
	n := z.count(srvName, mdns.TypeSRV)
	for z.count(srvName, mdns.TypeSRV) == n { // a lookup is in flight, unanswered
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		t.Logf("Watch returned %v after cancel, with a query unanswered", time.Since(start))
		if err != context.Canceled {
			t.Errorf("Watch returned %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Watch did not return within 2s of cancel")
	}
}

func TestTimeoutKeepsLastSet(t *testing.T) {
	z := newZone(t)
	z.set(t, apiName, mdns.TypeA, apiName+" 5 IN A 127.0.0.1")
	o := fast(z)
	o.Timeout = 50 * time.Millisecond
	f, err := NewHost(apiName+":80", o)
	if err != nil {
		t.Fatal(err)
	}
	s := watch(t, f)
	_, i := s.WaitUpdate(t, 0, 5*time.Second, "the first answer", hasAddrs("127.0.0.1:80"))
	z.setDrop(true)
	errs := s.WaitErrors(t, 2, 5*time.Second)
	t.Logf("an unanswered lookup: %v", errs[0])
	z.set(t, apiName, mdns.TypeA, apiName+" 5 IN A 127.0.0.4")
	z.setDrop(false)
	s.WaitUpdate(t, i+1, 5*time.Second, "the answer after the timeouts", hasAddrs("127.0.0.4:80"))
	checkNoRepeats(t, s)
}

func TestThroughEngine(t *testing.T) {
	z := newZone(t)
	z.set(t, srvName, mdns.TypeSRV, srvName+" 5 IN SRV 1 1 80 a.lodestar.test.", srvName+" 5 IN SRV 1 3 81 a.lodestar.test.")
	z.set(t, "a.lodestar.test.", mdns.TypeA, "a.lodestar.test. 5 IN A 127.0.0.1")
	f, err := NewSRV(srvName, fast(z))
	if err != nil {
		t.Fatal(err)
	}
	eng, err := balancer.NewEngine(balancer.Config{}, balancer.Options{Service: "api"})
	if err != nil {
		t.Fatal(err)
	}
	eng.Start(f)
	defer eng.Close()
	waitEligible := func(want ...string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			var got []string
			for _, ep := range eng.Eligible() {
				got = append(got, ep.Address())
			}
			if slices.Equal(got, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("eligible %v, want %v", got, want)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	waitEligible("127.0.0.1:80", "127.0.0.1:81")
	if w := eng.Endpoint("127.0.0.1:81").Weight(); w != 48 {
		t.Errorf("engine weight %d for SRV weight 3, want 48", w)
	}
	z.set(t, srvName, mdns.TypeSRV, srvName+" 5 IN SRV 1 1 81 a.lodestar.test.")
	waitEligible("127.0.0.1:81")
	for range 10 {
		ep, err := eng.Pick(balancer.PickInfo{Ctx: context.Background()})
		if err != nil || ep.Address() != "127.0.0.1:81" {
			t.Fatalf("pick %v %v", ep, err)
		}
		eng.Done(ep, outcome.Outcome{Class: outcome.Success})
	}
}

func TestSRVEndpoints(t *testing.T) {
	a4 := func(s ...string) []netip.Addr {
		var out []netip.Addr
		for _, x := range s {
			out = append(out, netip.MustParseAddr(x))
		}
		return out
	}
	srvs := []*net.SRV{
		{Target: "x.", Port: 80, Priority: 5, Weight: 0},
		{Target: "y.", Port: 80, Priority: 1, Weight: 2}, // same address as x: y wins (lower priority)
		{Target: "z.", Port: 0, Priority: 1, Weight: 9},  // port 0: skipped
		{Target: "w.", Port: 81, Priority: 9, Weight: 65535},
		{Target: "missing.", Port: 82, Priority: 1, Weight: 1},
		nil,
	}
	eps := SRVEndpoints(srvs, map[string][]netip.Addr{
		"x.": a4("10.0.0.1"), "y.": a4("10.0.0.1", "::ffff:10.0.0.2"), "z.": a4("10.0.0.3"), "w.": a4("fe80::1"),
	})
	want := []resolver.Endpoint{
		{Address: "10.0.0.1:80", Weight: 32, Priority: 0, Metadata: map[string]string{MetaSRVTarget: "y.", MetaSRVPort: "80", MetaSRVPriority: "1", MetaSRVWeight: "2"}},
		{Address: "10.0.0.2:80", Weight: 32, Priority: 0, Metadata: map[string]string{MetaSRVTarget: "y.", MetaSRVPort: "80", MetaSRVPriority: "1", MetaSRVWeight: "2"}},
		{Address: "[fe80::1]:81", Weight: 65535 * 16, Priority: 2, Metadata: map[string]string{MetaSRVTarget: "w.", MetaSRVPort: "81", MetaSRVPriority: "9", MetaSRVWeight: "65535"}},
	}
	if !resolver.EqualSets(eps, want) || !slices.IsSortedFunc(eps, func(a, b resolver.Endpoint) int { return strings.Compare(a.Address, b.Address) }) {
		t.Errorf("got  %+v\nwant %+v", eps, want)
	}
	if err := resolver.ValidateSet(eps); err != nil {
		t.Error(err)
	}
}

func TestParseTargetAndOptions(t *testing.T) {
	for _, s := range []string{"dns", "srv"} {
		if !slices.Contains(resolver.Schemes(), s) {
			t.Errorf("scheme %s not registered: %v", s, resolver.Schemes())
		}
	}
	f, err := ParseTarget("dns://10.0.0.2/api.internal:8080?network=ip4&minInterval=2s&maxInterval=1m&timeout=3s")
	if err != nil {
		t.Fatal(err)
	}
	o := f.Options()
	if o.Server != "10.0.0.2:53" || o.Network != "ip4" || o.MinInterval != 2*time.Second || o.MaxInterval != time.Minute || o.Timeout != 3*time.Second || o.Resolver == nil {
		t.Errorf("options %+v", o)
	}
	if f.String() != "dns feed api.internal:8080 via 10.0.0.2:53" {
		t.Errorf("String() = %q", f)
	}
	f, err = ParseTarget("srv:///_grpc._tcp.api.internal")
	if err != nil {
		t.Fatal(err)
	}
	if o := f.Options(); o.Resolver != net.DefaultResolver || o.MinInterval != DefaultMinInterval || o.MaxInterval != DefaultMaxInterval || o.Network != "ip" {
		t.Errorf("defaults %+v", o)
	}
	if _, err := ParseTarget("dns:///[::1]:80"); err != nil {
		t.Errorf("IPv6 literal: %v", err)
	}

	for target, part := range map[string]string{
		"dns:///api.internal":                   "port",
		"dns:///api.internal:0":                 "port",
		"dns:///api.internal:http":              "port",
		"dns:///":                               "no name",
		"srv://":                                "no name",
		"dns:///a/b:80":                         "more than one segment",
		"srv:///_x._tcp.api..internal":          "label",
		"srv:///_x._tcp.api:80":                 "character",
		"dns:///a:80?network=ip5":               "network=",
		"dns:///a:80?minInterval=soon":          "minInterval=",
		"dns:///a:80?maxInterval=0s":            "maxInterval=",
		"dns:///a:80?timeout=-1s":               "timeout=",
		"dns:///a:80?minInterval=2m":            "MinInterval",
		"dns:///a:80?ttl=5":                     `unknown parameter "ttl"`,
		"dns:///a:80?network=ip&network=ip4":    `"network" given 2 times`,
		"dns://10.0.0.1:99999/a:80":             "port",
		"dns://u@10.0.0.1/a:80":                 "user information",
		"dns:a:80":                              "//[server]/name",
		"dns:///a:80#x":                         "fragment",
		"consul:///a":                           "neither dns nor srv",
		"srv:///" + strings.Repeat("a.", 130):   "longer than 253",
		"srv:///" + strings.Repeat("a", 64):     "63",
		"dns://[::1/a:80":                       "",
		"dns:///a:80?minInterval=%zz":           "query",
		"srv://10.0.0.1:53:53/_x._tcp.internal": "port",
	} {
		_, err := ParseTarget(target)
		if err == nil {
			t.Errorf("%s: no error", target)
			continue
		}
		if !strings.Contains(err.Error(), part) {
			t.Errorf("%s: error %q does not name %q", target, err, part)
		}
	}

	for _, tc := range []struct {
		o     Options
		field string
	}{
		{Options{Network: "tcp"}, "Options.Network"},
		{Options{MinInterval: -1}, "Options.MinInterval"},
		{Options{MaxInterval: -1}, "Options.MaxInterval"},
		{Options{Timeout: -1}, "Options.Timeout"},
		{Options{MinInterval: time.Minute, MaxInterval: time.Second}, "Options.MinInterval"},
		{Options{Server: "1.2.3.4:x"}, "Options.Server"},
	} {
		if _, err := NewHost("a:80", tc.o); err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("NewHost with %+v: %v, want an error naming %s", tc.o, err, tc.field)
		}
	}
}

// TestCancelWithAResolverThatIgnoresCancel: the standard resolver's queries
// wait for their own timeout even when cancelled; Watch must return at once
// anyway, and the abandoned lookup must end by Options.Timeout.
func TestCancelWithAResolverThatIgnoresCancel(t *testing.T) {
	z := newZone(t)
	z.set(t, srvName, mdns.TypeSRV, srvName+" 5 IN SRV 1 1 80 a.lodestar.test.")
	z.set(t, "a.lodestar.test.", mdns.TypeA, "a.lodestar.test. 5 IN A 127.0.0.1")
	var open atomic.Int64
	var d net.Dialer
	o := fast(z)
	o.Timeout = 300 * time.Millisecond
	o.Resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, z.addr) // no close on cancel
		if err == nil {
			open.Add(1)
			c = &countedConn{c.(*net.UDPConn), &open}
		}
		return c, err
	}}
	f, err := NewSRV(srvName, o)
	if err != nil {
		t.Fatal(err)
	}
	s := newRecSink()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Watch(ctx, s) }()
	s.WaitUpdate(t, 0, 5*time.Second, "the first answer", hasAddrs("127.0.0.1:80"))
	z.setDrop(true)
	for open.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	cancel()
	select {
	case <-done:
		t.Logf("Watch returned %v after cancel", time.Since(start))
	case <-time.After(time.Second):
		t.Fatal("Watch did not return within 1s of cancel")
	}
	deadline := time.Now().Add(5 * time.Second)
	for open.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d resolver connections still open 5s after cancel", open.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("the abandoned lookup ended %v after cancel (Timeout 300ms)", time.Since(start).Round(time.Millisecond))
}

type countedConn struct {
	*net.UDPConn
	open *atomic.Int64
}

func (c *countedConn) Close() error { c.open.Add(-1); return c.UDPConn.Close() }
