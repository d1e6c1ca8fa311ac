package balancer

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/resolver"
)

// The config tables of config_test.go cover the new sections too (names
// exact, ranges checked, zero values written checked).
func init() {
	sections = append(sections,
		section{"locality", in(`{"locality": {%s}}`)},
		section{"priority", in(`{"priority": {%s}}`)},
	)
	maps.Copy(goodValues, map[string]string{
		"locality": `{"zone": "us-east-1a"}`, "priority": `{"overprovisioningFactor": 1.4}`,
		"split": `[{"match": {"version": "v2"}, "weight": 5}, {"match": {"version": "v1"}, "weight": 95}]`,
		"zone":  `"us-east-1a"`, "region": `"us-east-1"`, "minLocalEndpoints": "2", "spillWhenLoaded": "1.5",
		"overprovisioningFactor": "1.4",
	})
	rangeCases = append(rangeCases, []struct {
		section, field string
		bad            []string
		ok             []string
		rng            string
	}{
		{"locality", "minLocalEndpoints", []string{"0", "-1", "100001"}, []string{"1", "100000"}, "[1, 100000]"},
		{"locality", "spillWhenLoaded", []string{"0", "0.99", "1000.5"}, []string{"1", "1000"}, "[1, 1000]"},
		{"priority", "overprovisioningFactor", []string{"0", "0.5", "100.1"}, []string{"1", "100"}, "[1, 100]"},
	}...)
}

// The JSON is the contract: these names, these meanings.
const contractJSON = `{
  "locality": {"zone": "us-east-1a", "region": "us-east-1",
               "minLocalEndpoints": 2, "spillWhenLoaded": 1.5},
  "priority": {"overprovisioningFactor": 1.4},
  "split":    [{"match": {"version": "v2"}, "weight": 5},
               {"match": {"version": "v1"}, "weight": 95}]
}`

func TestLocalityConfigContract(t *testing.T) {
	c, err := ParseConfig([]byte(contractJSON))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Locality: &LocalityConfig{Zone: "us-east-1a", Region: "us-east-1", MinLocalEndpoints: 2, SpillWhenLoaded: 1.5},
		Priority: &PriorityConfig{OverprovisioningFactor: 1.4},
		Split:    []SplitRule{{Match: map[string]string{"version": "v2"}, Weight: 5}, {Match: map[string]string{"version": "v1"}, Weight: 95}},
	}
	got, _ := json.Marshal(c)
	wantJS, _ := json.Marshal(want)
	if !bytes.Equal(got, wantJS) {
		t.Fatalf("parsed %s\nwant   %s", got, wantJS)
	}
	// And back: MarshalJSON writes what ParseConfig reads.
	c2, err := ParseConfig(got)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := json.Marshal(c2); !bytes.Equal(again, got) {
		t.Fatalf("round trip: %s != %s", again, got)
	}
}

// Defaults: omitted fields take them, in Go and in JSON.
func TestLocalityConfigDefaults(t *testing.T) {
	t.Setenv(EnvZone, "")
	t.Setenv(EnvRegion, "")
	for _, js := range []string{`{}`, `{"locality": {}, "priority": {}}`} {
		c, err := ParseConfig([]byte(js))
		if err != nil {
			t.Fatal(err)
		}
		g := newGroupingMode(c, c.algorithm())
		if g.minLocal != 1 || g.factor != 1.4 || g.spill != 0 || g.zone != "" || g.region != "" || g.window != 0 {
			t.Errorf("%s: defaults %+v", js, g)
		}
	}
	c, _ := ParseConfig([]byte(`{"algorithm": {"least_request": {"slowStart": {"window": "3s"}}}}`))
	if g := newGroupingMode(c, c.algorithm()); g.window != int64(3*time.Second) {
		t.Errorf("failback ramp %v, want the algorithm's slow start window 3s", time.Duration(g.window))
	}
}

// Bad input gets an error that names the field.
func TestLocalityConfigErrors(t *testing.T) {
	for _, tc := range []struct{ js, want string }{
		{`{"locality": {"minLocalEndpoints": 0}}`, "locality.minLocalEndpoints: 0 is out of range [1, 100000]"},
		{`{"locality": {"spillWhenLoaded": 0.5}}`, "locality.spillWhenLoaded: 0.5 is out of range [1, 1000]"},
		{`{"locality": {"zone": 3}}`, "locality.zone: want a string"},
		{`{"locality": {"Zone": "a"}}`, `locality: unknown field "Zone", did you mean "zone"?`},
		{`{"priority": {"overprovisioningFactor": 0.9}}`, "priority.overprovisioningFactor: 0.9 is out of range [1, 100]"},
		{`{"priority": {"overprovisioning": 2}}`, `priority: unknown field "overprovisioning"`},
		{`{"split": [{"match": {"version": "v2"}, "weight": 5}, {"match": {"version": "v1"}, "weight": -1}]}`, "split[1].weight: -1 is out of range [0, 1000000]"},
		{`{"split": [{"match": {"version": "v2"}, "weigth": 5}]}`, `split[0]: unknown field "weigth", did you mean "weight"?`},
		{`{"split": [{"match": {"version": 2}, "weight": 5}]}`, `split[0].match."version": want a string`},
		{`{"split": [{"match": {"version": "v2"}}]}`, "split: every weight is 0"},
		{`{"split": [{"match": {"": "v2"}, "weight": 1}]}`, "split[0].match: empty metadata key"},
		{`{"split": []}`, "split: want at least one rule"},
		{`{"split": {"match": {}}}`, "split: want an array"},
	} {
		_, err := ParseConfig([]byte(tc.js))
		if err == nil || !strings.HasPrefix(err.Error(), "lodestar config: ") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.js, err, tc.want)
		}
	}
	// Go-built values are held to the same ranges and rules.
	for _, tc := range []struct {
		c    Config
		want string
	}{
		{Config{Locality: &LocalityConfig{MinLocalEndpoints: -1}}, "lodestar config: locality.minLocalEndpoints: -1 is out of range [1, 100000]"},
		{Config{Priority: &PriorityConfig{OverprovisioningFactor: 200}}, "lodestar config: priority.overprovisioningFactor: 200 is out of range [1, 100]"},
		{Config{Split: []SplitRule{{Weight: 2_000_000}}}, "lodestar config: split[0].weight: 2000000 is out of range [0, 1000000]"},
		{Config{Split: []SplitRule{{Weight: 0}}}, "lodestar config: split: every weight is 0; at least one must be above 0"},
	} {
		if err := tc.c.Validate(); err == nil || err.Error() != tc.want {
			t.Errorf("%+v: %v, want %q", tc.c, err, tc.want)
		}
	}
}

// The caller's locality: the config's, else the environment's, else unknown.
func TestLocalityCallerFromEnv(t *testing.T) {
	t.Setenv(EnvZone, "env-zone")
	t.Setenv(EnvRegion, "env-region")
	if got := (*LocalityConfig)(nil).Caller(); got != (resolver.Locality{Region: "env-region", Zone: "env-zone"}) {
		t.Errorf("no section: %+v", got)
	}
	if got := (&LocalityConfig{Zone: "cfg-zone"}).Caller(); got != (resolver.Locality{Region: "env-region", Zone: "cfg-zone"}) {
		t.Errorf("zone configured: %+v", got)
	}
	// The environment reaches the engine: requests stay in env-zone.
	e := locEngine(t, Config{}, 1, nil, tierEndpoints(0, "env-region", "env-zone", "other-zone", 2)...)
	if got := pickShare(t, e, 2000, func(ep *Endpoint) bool { return ep.Info().Locality.Zone == "env-zone" }); got != 1 {
		t.Errorf("share in the environment's zone %.3f, want 1", got)
	}
	t.Setenv(EnvZone, "")
	t.Setenv(EnvRegion, "")
	if got := (*LocalityConfig)(nil).Caller(); got != (resolver.Locality{}) {
		t.Errorf("nothing set: %+v", got)
	}
	e = locEngine(t, Config{}, 1, nil, tierEndpoints(0, "env-region", "env-zone", "other-zone", 2)...)
	if got := pickShare(t, e, 4000, func(ep *Endpoint) bool { return ep.Info().Locality.Zone == "env-zone" }); math.Abs(got-0.5) > 0.03 {
		t.Errorf("unknown locality: share in env-zone %.3f, want 0.5±0.03 (no preference)", got)
	}
}

// tierEndpoints returns n endpoints in each of two zones of region, at
// priority prio, addressed 10.<prio>.<zone>.<i>.
func tierEndpoints(prio int, region, zoneA, zoneB string, n int) []resolver.Endpoint {
	var eps []resolver.Endpoint
	for z, zone := range []string{zoneA, zoneB} {
		for i := range n {
			eps = append(eps, resolver.Endpoint{Address: fmt.Sprintf("10.%d.%d.%d:80", prio, z, i+1), Priority: prio,
				Locality: resolver.Locality{Region: region, Zone: zone}})
		}
	}
	return eps
}

// locEngine returns an engine with cfg, seeded, over eps.
func locEngine(t testing.TB, cfg Config, seed uint64, clk *fakeClock, eps ...resolver.Endpoint) *Engine {
	t.Helper()
	opts := Options{Service: "loc", Rand: seededRand(seed)}
	if clk != nil {
		opts.Now = clk.Now
	}
	e, err := NewEngine(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	e.Update(eps)
	return e
}

// pickShare picks n times (each done at once) and returns the share of picks
// for which in is true.
func pickShare(t testing.TB, e *Engine, n int, in func(*Endpoint) bool) float64 {
	t.Helper()
	hits := 0
	for range n {
		ep, err := e.Pick(PickInfo{Ctx: context.Background()})
		if err != nil {
			t.Fatal(err)
		}
		if in(ep) {
			hits++
		}
		e.Done(ep, outcome.Outcome{Class: outcome.Success})
	}
	return float64(hits) / float64(n)
}

func prioIs(p int) func(*Endpoint) bool {
	return func(ep *Endpoint) bool { return ep.Info().Priority == p }
}

// Envoy's priority-load table (two tiers, P=1 fully healthy), with 100
// endpoints in P=0 so that the percentages are exact: the plan's loads
// match the formula exactly, and 20,000 seeded picks (seed 11) match it
// within ±1.5 percentage points.
func TestPriorityLoadFormula(t *testing.T) {
	var eps []resolver.Endpoint
	for p := range 2 {
		for i := range 100 {
			eps = append(eps, resolver.Endpoint{Address: fmt.Sprintf("10.%d.0.%d:80", p, i+1), Priority: p})
		}
	}
	e := locEngine(t, Config{}, 11, nil, eps...)
	for _, tc := range []struct{ healthy, want0 int }{{100, 100}, {72, 100}, {71, 99}, {50, 70}, {25, 35}, {0, 0}} {
		for i := range 100 {
			e.SetCondition(fmt.Sprintf("10.0.0.%d:80", i+1), Unhealthy, i >= tc.healthy)
		}
		e.settled() // 100 changes in a burst: the last are paced (see settle)
		want := math.Min(1, 1.4*float64(tc.healthy)/100)
		plan := e.snap.Load().picker
		if tc.healthy == 100 || tc.healthy == 72 || tc.healthy == 0 {
			// One tier takes everything, in one leaf: the plain picker.
			if _, ok := plan.(*grouped); ok {
				t.Errorf("%d%% healthy: a grouped picker for one leaf", tc.healthy)
			}
		}
		got := pickShare(t, e, 20_000, prioIs(0))
		if math.Abs(got-want) > 0.015 {
			t.Errorf("P0 %d%% healthy: %.3f of picks to P0, want %.3f±0.015 (Envoy: %d%%)", tc.healthy, got, want, tc.want0)
		}
	}
}

// Three tiers and the normalisation when the total health is below 100%
// (Envoy's tables), checked on the plan's loads.
func TestPriorityLoadNormalised(t *testing.T) {
	for _, tc := range []struct {
		healthy [3]int // of 100 per tier
		want    [3]float64
	}{
		{[3]int{25, 25, 100}, [3]float64{0.35, 0.35, 0.30}},
		{[3]int{25, 25, 20}, [3]float64{0.35 / 0.98, 0.35 / 0.98, 0.28 / 0.98}},
		{[3]int{50, 50, 100}, [3]float64{0.70, 0.30, 0}},
	} {
		g := &groupingMode{factor: 1.4, minLocal: 1, subs: map[int]*subsetMemory{}}
		var members []*Endpoint
		for p := range 3 {
			for i := range 100 {
				ep := newEndpoint(resolver.Endpoint{Address: fmt.Sprintf("10.%d.0.%d:80", p, i+1), Priority: p}, time.Unix(0, 0))
				if i >= tc.healthy[p] {
					ep.conds.Store(uint32(Unhealthy))
				}
				members = append(members, ep)
			}
		}
		sp, ok, _ := g.planSubset(-1, "", members, 0, 0)
		if !ok {
			t.Fatalf("%v: no plan", tc.healthy)
		}
		got := map[int]float64{}
		for i, tp := range sp.tiers {
			got[tp.prio] = sp.loads[i]
		}
		for p := range 3 {
			if math.Abs(got[p]-tc.want[p]) > 1e-9 {
				t.Errorf("%v healthy: loads %v, want %v", tc.healthy, got, tc.want)
				break
			}
		}
	}
}

// Zone-aware routing: everything healthy keeps 100% in the caller's zone;
// half the local zone out spills what Envoy's formula says (local keeps
// u/l = (1/3)/(1/2) = 2/3), to the region first; with too few local
// endpoints (minLocalEndpoints), the region is the local group; 10,000
// seeded picks (seed 5), ±3 percentage points.
func TestZoneAwareSpill(t *testing.T) {
	loc := &LocalityConfig{Zone: "a", Region: "r1"}
	eps := append(tierEndpoints(0, "r1", "a", "b", 2), tierEndpoints(1, "r2", "c", "d", 2)...)
	e := locEngine(t, Config{Locality: loc}, 5, nil, eps...)
	inZone := func(z string) func(*Endpoint) bool {
		return func(ep *Endpoint) bool { return ep.Info().Locality.Zone == z }
	}
	if got := pickShare(t, e, 2000, inZone("a")); got != 1 {
		t.Fatalf("all healthy: %.4f in the caller's zone, want 1", got)
	}
	e.SetCondition("10.0.0.1:80", Ejected, true)
	if got := pickShare(t, e, 10_000, inZone("a")); math.Abs(got-2.0/3) > 0.03 {
		t.Errorf("half the local zone ejected: %.4f local, want %.4f±0.03", got, 2.0/3)
	}
	// Both local endpoints out: the region's other zone takes it all (P0 is
	// still 50% healthy × 1.4 = 70%; the rest goes to P1).
	e.SetCondition("10.0.0.2:80", Ejected, true)
	if got := pickShare(t, e, 10_000, inZone("b")); math.Abs(got-0.7) > 0.03 {
		t.Errorf("local zone out: %.4f in the region's zone b, want 0.70±0.03", got)
	}
	// minLocalEndpoints 2 with one local endpoint left: no zone preference
	// (the region is the local group and holds the whole tier): the three
	// usable endpoints of P0 share alike.
	e.SetCondition("10.0.0.2:80", Ejected, false)
	if err := e.Reconfigure(Config{Locality: &LocalityConfig{Zone: "a", Region: "r1", MinLocalEndpoints: 2}}); err != nil {
		t.Fatal(err)
	}
	if got := pickShare(t, e, 10_000, inZone("a")); math.Abs(got-1.0/3) > 0.03 {
		t.Errorf("minLocalEndpoints 2, one local left: %.4f local, want %.4f±0.03", got, 1.0/3)
	}
}

// Region preference: with the caller's zone empty of endpoints in its tier,
// the rest of its region comes before other regions, as far as its capacity
// covers.
func TestZoneSharesFormula(t *testing.T) {
	for _, tc := range []struct {
		name string
		z    zoneInputs
		m    float64
		want [3]float64
	}{
		{"healthy", zoneInputs{level: 1, l: [3]float64{0.5, 0.25, 0.25}, u: [3]float64{0.5, 0.25, 0.25}}, 1, [3]float64{1, 0, 0}},
		// Local 1 of 2 usable (u=1/3 of 3), region 1/3, rest 1/3 (each
		// with l=1/2, 1/4, 1/4): keep 2/3; the residual 1/3 goes to the
		// region as far as its surplus 1/12 of the deficit 1/6 (half), the
		// rest to the rest.
		{"spill", zoneInputs{level: 1, l: [3]float64{0.5, 0.25, 0.25}, u: [3]float64{1.0 / 3, 1.0 / 3, 1.0 / 3}}, 1, [3]float64{2.0 / 3, 1.0 / 6, 1.0 / 6}},
		{"load spill", zoneInputs{level: 1, l: [3]float64{0.5, 0.5, 0}, u: [3]float64{0.5, 0.5, 0}}, 0.6, [3]float64{0.6, 0.4, 0}},
		{"region level", zoneInputs{level: 2, l: [3]float64{0.25, 0.25, 0.5}, u: [3]float64{0.25, 0.25, 0.5}}, 1, [3]float64{0.5, 0.5, 0}},
		{"no preference", zoneInputs{l: [3]float64{0.5, 0.25, 0.25}, u: [3]float64{0.2, 0.3, 0.5}}, 1, [3]float64{0.2, 0.3, 0.5}},
	} {
		got := tc.z.shares(tc.m)
		for i := range got {
			if math.Abs(got[i]-tc.want[i]) > 1e-9 {
				t.Errorf("%s: shares %v, want %v", tc.name, got, tc.want)
				break
			}
		}
	}
}

// The canary split: 5%/95% over 10,000 seeded picks (seed 3), within ±2
// percentage points of the configured weights; endpoints matching no rule
// get nothing; a subset with no usable endpoint hands its share to the
// other, logged once per change, not per request.
func TestSplitWeights(t *testing.T) {
	var logs bytes.Buffer
	var logMu sync.Mutex
	logger := slog.New(slog.NewTextHandler(lockedWriter{&logs, &logMu}, nil))
	var eps []resolver.Endpoint
	for i, v := range []string{"v1", "v1", "v1", "v2", "v2", "v3"} {
		eps = append(eps, resolver.Endpoint{Address: fmt.Sprintf("10.9.0.%d:80", i+1), Metadata: map[string]string{"version": v}})
	}
	cfg, err := ParseConfig([]byte(contractJSON))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Locality = nil
	e, err := NewEngine(cfg, Options{Service: "canary", Rand: seededRand(3), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	e.Update(eps)
	version := func(v string) func(*Endpoint) bool {
		return func(ep *Endpoint) bool { return ep.Info().Metadata["version"] == v }
	}
	counts := map[string]int{}
	for range 10_000 {
		ep, err := e.Pick(PickInfo{})
		if err != nil {
			t.Fatal(err)
		}
		counts[ep.Info().Metadata["version"]]++
		e.Done(ep, outcome.Outcome{Class: outcome.Success})
	}
	if v2 := float64(counts["v2"]) / 10_000; math.Abs(v2-0.05) > 0.02 || counts["v3"] != 0 || counts["v1"]+counts["v2"] != 10_000 {
		t.Errorf("split %v: want v2 5%%±2, v1 the rest, v3 none", counts)
	}
	// v2 out: v1 takes everything, and the log says so once.
	e.SetCondition("10.9.0.4:80", Ejected, true)
	e.SetCondition("10.9.0.5:80", Ejected, true)
	if got := pickShare(t, e, 2000, version("v1")); got != 1 {
		t.Errorf("v2 out: %.4f to v1, want 1", got)
	}
	e.SetCondition("10.9.0.6:80", Ejected, true) // another rebuild: no new log line
	logMu.Lock()
	n := strings.Count(logs.String(), "hand their share to the others")
	logMu.Unlock()
	if n != 1 {
		t.Errorf("%d log lines about the empty subset, want 1:\n%s", n, logs.String())
	}
	// A live weight change.
	cfg.Split[0].Weight, cfg.Split[1].Weight = 50, 50
	e.SetCondition("10.9.0.4:80", Ejected, false)
	e.SetCondition("10.9.0.5:80", Ejected, false)
	if err := e.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	if got := pickShare(t, e, 10_000, version("v2")); math.Abs(got-0.5) > 0.02 {
		t.Errorf("after the change to 50/50: %.4f to v2", got)
	}
	// Every subset empty but endpoints outside them usable: serve from them
	// (with panic off: 1 usable of 6 would be a panic otherwise).
	cfg.PanicThreshold = ptr(0.0)
	if err := e.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		e.SetCondition(fmt.Sprintf("10.9.0.%d:80", i+1), Ejected, true)
	}
	e.SetCondition("10.9.0.6:80", Ejected, false)
	if got := pickShare(t, e, 100, version("v3")); got != 1 {
		t.Errorf("only v3 usable: %.3f to v3, want 1", got)
	}
}

type lockedWriter struct {
	b  *bytes.Buffer
	mu *sync.Mutex
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// Affinity: a keyed request lands on the same endpoint every time, across
// tiers and zones, and keys spread over the leaves by their shares.
func TestGroupedAffinityStable(t *testing.T) {
	eps := append(tierEndpoints(0, "r1", "a", "b", 3), tierEndpoints(1, "r2", "c", "d", 3)...)
	e := locEngine(t, Config{Algorithm: &RingHash{}, Locality: &LocalityConfig{Zone: "a", Region: "r1"}}, 9, nil, eps...)
	e.SetCondition("10.0.0.1:80", Ejected, true) // some spill, so that keys spread over two leaves
	local := 0
	for k := range 2000 {
		h := HashKey(fmt.Sprintf("user-%d", k))
		var first *Endpoint
		for range 3 {
			ep, err := e.Pick(PickInfo{Hash: h, HasHash: true})
			if err != nil {
				t.Fatal(err)
			}
			e.Done(ep, outcome.Outcome{Class: outcome.Success})
			if first == nil {
				first = ep
			} else if ep != first {
				t.Fatalf("key %d: %s then %s", k, first.Address(), ep.Address())
			}
		}
		if first.Info().Locality.Zone == "a" {
			local++
		}
	}
	// Local keeps (2/5)/(3/6) = 0.8 of the keys.
	if got := float64(local) / 2000; math.Abs(got-0.8) > 0.04 {
		t.Errorf("%.3f of keys local, want 0.8±0.04", got)
	}
}

// Panic per tier (Envoy): with enough capacity over the tiers, no panic;
// with too little, a tier below the threshold spreads over its connected
// endpoints, and picks may return its ejected ones.
func TestPriorityPanicPerTier(t *testing.T) {
	var eps []resolver.Endpoint
	for p := range 2 {
		for i := range 4 {
			eps = append(eps, resolver.Endpoint{Address: fmt.Sprintf("10.%d.0.%d:80", p, i+1), Priority: p})
		}
	}
	e := locEngine(t, Config{}, 4, nil, eps...)
	for i := range 4 {
		e.SetCondition(fmt.Sprintf("10.0.0.%d:80", i+1), Ejected, true)
	}
	if e.Panicking() {
		t.Fatal("P0 out with P1 healthy: panicking; want all of it on P1")
	}
	if got := pickShare(t, e, 1000, prioIs(1)); got != 1 {
		t.Fatalf("P0 out: %.3f on P1", got)
	}
	// P1 down to 1 of 4: total health 0.35, P1 in panic: spread over all 4
	// of P1, ejected or not; P0 stays out (nothing usable: no load).
	for i := range 3 {
		e.SetCondition(fmt.Sprintf("10.1.0.%d:80", i+1), Ejected, true)
	}
	if !e.Panicking() {
		t.Fatal("P1 at 25% and P0 out: not panicking")
	}
	seen := map[string]int{}
	for range 4000 {
		ep, err := e.Pick(PickInfo{})
		if err != nil {
			t.Fatal(err)
		}
		seen[ep.Address()]++
		e.Done(ep, outcome.Outcome{Class: outcome.Success})
	}
	for i := range 4 {
		if n := seen[fmt.Sprintf("10.1.0.%d:80", i+1)]; n < 800 {
			t.Errorf("panic in P1: %v; want every P1 endpoint near 1000", seen)
			break
		}
	}
	if len(seen) != 4 {
		t.Errorf("panic: picks went to %v; want only P1", seen)
	}
}

// Failback is gradual: when the primary tier returns, its load climbs
// linearly over the algorithm's slow start window (injected clock); failover
// is immediate.
func TestPriorityFailbackRamp(t *testing.T) {
	clk := newFakeClock()
	var eps []resolver.Endpoint
	for p := range 2 {
		for i := range 4 {
			eps = append(eps, resolver.Endpoint{Address: fmt.Sprintf("10.%d.0.%d:80", p, i+1), Priority: p})
		}
	}
	cfg := Config{Algorithm: &RoundRobin{SlowStart: SlowStart{Window: 10 * time.Second}}}
	e := locEngine(t, cfg, 21, clk, eps...)
	if got := pickShare(t, e, 1000, prioIs(0)); got != 1 {
		t.Fatalf("start: %.3f on P0, want 1 at once (no ramp at start)", got)
	}
	for i := range 4 {
		e.SetCondition(fmt.Sprintf("10.0.0.%d:80", i+1), Ejected, true)
	}
	if got := pickShare(t, e, 1000, prioIs(1)); got != 1 {
		t.Fatalf("failover: %.3f on P1, want 1 at once", got)
	}
	clk.Advance(time.Minute)
	for i := range 4 {
		e.SetCondition(fmt.Sprintf("10.0.0.%d:80", i+1), Ejected, false)
	}
	// Refreshes run on about one pick in 64: 5,000 picks per step.
	back := clk.Now()
	for _, step := range []struct {
		at   time.Duration
		want float64
	}{{0, 0}, {2500 * time.Millisecond, 0.25}, {5 * time.Second, 0.5}, {7500 * time.Millisecond, 0.75}, {10 * time.Second, 1}} {
		clk.Advance(back.Add(step.at).Sub(clk.Now()))
		pickShare(t, e, 200, prioIs(0)) // let a refresh see the time
		if got := pickShare(t, e, 5000, prioIs(0)); math.Abs(got-step.want) > 0.04 {
			t.Errorf("failback at %v: %.3f on P0, want %.2f±0.04", step.at, got, step.want)
		}
	}
}

// Load-aware spill: local endpoints loaded beyond spillWhenLoaded × the
// others' in-flight share move traffic out; unloaded, it comes back.
func TestLoadAwareSpill(t *testing.T) {
	loc := &LocalityConfig{Zone: "a", Region: "r1", SpillWhenLoaded: 2}
	e := locEngine(t, Config{Locality: loc}, 8, nil, tierEndpoints(0, "r1", "a", "b", 2)...)
	local := func(ep *Endpoint) bool { return ep.Info().Locality.Zone == "a" }
	if got := pickShare(t, e, 2000, local); got != 1 {
		t.Fatalf("unloaded: %.3f local, want 1", got)
	}
	// 20 requests stuck on each local endpoint; the others idle (counted
	// as 1): local is 10× over the 2× limit.
	var held []*Endpoint
	for _, ep := range e.Endpoints() {
		if local(ep) {
			for range 20 {
				ep.Acquire()
				held = append(held, ep)
			}
		}
	}
	pickShare(t, e, 3000, local) // refreshes move the multiplier down
	if got := pickShare(t, e, 4000, local); got > 0.6 {
		t.Errorf("loaded: %.3f still local, want a spill (≤ 0.6)", got)
	}
	for _, ep := range held {
		e.Done(ep, outcome.Outcome{Class: outcome.Success})
	}
	pickShare(t, e, 3000, local)
	if got := pickShare(t, e, 2000, local); got < 0.99 {
		t.Errorf("unloaded again: %.3f local, want it back (≥ 0.99)", got)
	}
}

// With nothing to group (one priority, no caller locality, no split) the
// engine publishes the algorithm's own picker, as before; and grouped picks
// of every built-in algorithm allocate nothing.
func TestGroupedPickAllocatesNothing(t *testing.T) {
	t.Setenv(EnvZone, "")
	t.Setenv(EnvRegion, "")
	e := locEngine(t, Config{}, 1, nil, resolverEndpoints(10, nil)...)
	if _, ok := e.snap.Load().picker.(*rrPicker); !ok {
		t.Fatalf("plain engine: picker %T, want the round robin picker itself", e.snap.Load().picker)
	}
	eps := append(tierEndpoints(0, "r1", "a", "b", 4), tierEndpoints(1, "r2", "c", "d", 4)...)
	for i := range eps {
		eps[i].Metadata = map[string]string{"version": []string{"v1", "v2"}[i%2]}
	}
	cfg, err := ParseConfig([]byte(contractJSON))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Locality.Zone, cfg.Locality.Region, cfg.Locality.MinLocalEndpoints = "a", "r1", 1
	for _, name := range Algorithms() {
		if strings.HasPrefix(name, "test_") {
			continue
		}
		c := cfg
		c.Algorithm = churnAlgorithm(t, name)
		e := locEngine(t, c, 2, nil, eps...)
		e.SetCondition("10.0.0.1:80", Ejected, true) // zone spill on
		if _, ok := e.snap.Load().picker.(Picker); !ok {
			t.Fatal("no picker")
		}
		switch e.snap.Load().picker.(type) {
		case *grouped, *groupedCounting:
		default:
			t.Fatalf("%s: picker %T, want grouped", name, e.snap.Load().picker)
		}
		for _, info := range []PickInfo{{}, {Hash: 42, HasHash: true}} {
			allocs := testing.AllocsPerRun(2000, func() {
				ep, err := e.Pick(info)
				if err != nil {
					t.Fatal(err)
				}
				e.Done(ep, outcome.Outcome{Class: outcome.Success})
			})
			if allocs != 0 {
				t.Errorf("%s (keyed %v): %.2f allocations per grouped pick", name, info.HasHash, allocs)
			}
		}
		// Every pick is in P0 (75% usable × 1.4 > 1), in the caller's zone
		// or region.
		if got := pickShare(t, e, 2000, prioIs(0)); got != 1 {
			t.Errorf("%s: %.3f in P0", name, got)
		}
		for _, ep := range e.Endpoints() {
			if ep.InFlight() != 0 {
				t.Errorf("%s: %s has %d in flight after every Done", name, ep.Address(), ep.InFlight())
			}
		}
	}
}

// Endpoints connecting at start, in any order (the gRPC door starts them
// NotConnected), never trigger the failback ramp: the primary tier takes its
// traffic as soon as it is connected.
func TestPriorityNoRampWhileConnecting(t *testing.T) {
	clk := newFakeClock()
	e, err := NewEngine(Config{Algorithm: &RoundRobin{SlowStart: SlowStart{Window: time.Hour}}},
		Options{Now: clk.Now, Rand: seededRand(6), InitialConditions: NotConnected})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	var eps []resolver.Endpoint
	for p := range 2 {
		for i := range 4 {
			eps = append(eps, resolver.Endpoint{Address: fmt.Sprintf("10.%d.0.%d:80", p, i+1), Priority: p})
		}
	}
	e.Update(eps)
	e.SetCondition("10.0.0.1:80", NotConnected, false) // one primary first
	for i := range 4 {                                 // then the passive site
		e.SetCondition(fmt.Sprintf("10.1.0.%d:80", i+1), NotConnected, false)
	}
	for i := 1; i < 4; i++ { // then the rest of the primary
		e.SetCondition(fmt.Sprintf("10.0.0.%d:80", i+1), NotConnected, false)
	}
	if got := pickShare(t, e, 2000, prioIs(0)); got != 1 {
		t.Errorf("all connected: %.3f on P0, want 1 (no ramp while connecting)", got)
	}
}
