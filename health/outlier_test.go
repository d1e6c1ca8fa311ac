package health

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar/balancer/outcome"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func TestOutlierDefaults(t *testing.T) {
	c := NewDetector(OutlierDetection{SuccessRate: &SuccessRate{}, FailurePercentage: &FailurePercentage{}, Latency: &LatencyOutlier{}}).Config()
	want := OutlierDetection{
		ConsecutiveFailures: intp(5), ConsecutiveGatewayFailures: intp(0), ConsecutiveLocalOriginFailures: intp(0),
		ConsecutiveConnectionFailures: intp(0),
		Interval:                      10 * time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 300 * time.Second,
		MaxEjectionPercent: intp(10),
		SuccessRate:        &SuccessRate{MinimumHosts: 5, RequestVolume: 100, StdevFactor: 1.9},
		FailurePercentage:  &FailurePercentage{Threshold: 85, MinimumHosts: 5, RequestVolume: 50},
		Latency:            &LatencyOutlier{Quantile: 0.9, Factor: 3, MinimumHosts: 3, RequestVolume: 50},
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("defaults:\n got %s\nwant %s", show(c), show(want))
	}
	// Sections stay off when absent.
	if c := NewDetector(OutlierDetection{}).Config(); c.SuccessRate != nil || c.FailurePercentage != nil || c.Latency != nil {
		t.Fatalf("absent sections turned on: %s", show(c))
	}
	// Written zeros are honoured where they mean something.
	c = NewDetector(OutlierDetection{ConsecutiveFailures: intp(0), MaxEjectionPercent: intp(0)}).Config()
	if *c.ConsecutiveFailures != 0 || *c.MaxEjectionPercent != 0 {
		t.Fatalf("written zeros replaced: %s", show(c))
	}
	// maxEjectionTime defaults to baseEjectionTime when that is longer.
	if c := NewDetector(OutlierDetection{BaseEjectionTime: 10 * time.Minute}).Config(); c.MaxEjectionTime != 10*time.Minute {
		t.Fatalf("baseEjectionTime 10m: maxEjectionTime = %v, want 10m", c.MaxEjectionTime)
	}
	// WithDefaults shares nothing with its input.
	in := OutlierDetection{SuccessRate: &SuccessRate{}}
	out := in.WithDefaults()
	if out.SuccessRate == in.SuccessRate || in.SuccessRate.MinimumHosts != 0 {
		t.Fatal("WithDefaults modified or aliased its input's section")
	}
}

func show(c OutlierDetection) string {
	s := fmt.Sprintf("%+v", c)
	for _, p := range []any{c.ConsecutiveFailures, c.ConsecutiveGatewayFailures, c.ConsecutiveLocalOriginFailures, c.MaxEjectionPercent, c.SuccessRate, c.FailurePercentage, c.Latency} {
		s += fmt.Sprintf(" %v", reflect.Indirect(reflect.ValueOf(p)))
	}
	return s
}

func TestOutlierValidate(t *testing.T) {
	for _, tc := range []struct {
		c    OutlierDetection
		want string // "" for valid
	}{
		{OutlierDetection{}, ""},
		{OutlierDetection{BaseEjectionTime: time.Minute, MaxEjectionTime: time.Minute}, ""},
		{OutlierDetection{MaxEjectionTime: 30 * time.Second}, ""},
		{OutlierDetection{BaseEjectionTime: 10 * time.Minute}, ""},
		{OutlierDetection{BaseEjectionTime: time.Minute, MaxEjectionTime: 30 * time.Second}, "maxEjectionTime: 30s is less than baseEjectionTime (1m0s)"},
		{OutlierDetection{MaxEjectionTime: 10 * time.Second}, "maxEjectionTime: 10s is less than baseEjectionTime's default (30s)"},
	} {
		err := tc.c.Validate()
		if got := fmt.Sprint(err); tc.want == "" && err != nil || tc.want != "" && got != tc.want {
			t.Errorf("Validate(%+v) = %v, want %q", tc.c, err, tc.want)
		}
	}
	if err := (*OutlierDetection)(nil).Validate(); err != nil {
		t.Errorf("nil Validate = %v", err)
	}
}

// TestOutlierJSONContract holds the field names to the JSON contract
// and puts a range tag on every numeric field.
func TestOutlierJSONContract(t *testing.T) {
	want := map[reflect.Type][]string{
		reflect.TypeFor[OutlierDetection](): {"consecutiveFailures", "consecutiveGatewayFailures", "consecutiveLocalOriginFailures",
			"consecutiveConnectionFailures", "interval", "baseEjectionTime", "maxEjectionTime", "maxEjectionPercent", "successRate", "failurePercentage", "latency", "endEjectionOnHealthy"},
		reflect.TypeFor[SuccessRate]():       {"minimumHosts", "requestVolume", "stdevFactor"},
		reflect.TypeFor[FailurePercentage](): {"threshold", "minimumHosts", "requestVolume"},
		reflect.TypeFor[LatencyOutlier]():    {"quantile", "factor", "minimumHosts", "requestVolume"},
	}
	for typ, names := range want {
		var got []string
		for f := range typ.Fields() {
			tag := f.Tag.Get("json")
			name, opts, _ := strings.Cut(tag, ",")
			got = append(got, name)
			if opts != "omitempty" && opts != "omitzero" {
				t.Errorf("%v.%s: json tag %q: want omitempty or omitzero", typ, f.Name, tag)
			}
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			numeric := ft.Kind() >= reflect.Int && ft.Kind() <= reflect.Float64
			if _, ok := f.Tag.Lookup("range"); ok != numeric {
				t.Errorf("%v.%s: range tag present = %v, numeric = %v", typ, f.Name, ok, numeric)
			}
		}
		if !slices.Equal(got, names) {
			t.Errorf("%v: JSON names %v, want %v", typ, got, names)
		}
	}
}

func TestEjectionTimeGrowsCapsAndDecays(t *testing.T) {
	d := NewDetector(OutlierDetection{Interval: time.Second, BaseEjectionTime: 10 * time.Second, MaxEjectionTime: 35 * time.Second})
	s := NewStats()
	hosts := []Host{{Key: "a", Stats: s}}
	now := t0
	// Eject, let the ejection run its time, eject again at once: 10s, 20s,
	// 30s, then capped at 35s.
	for i, want := range []time.Duration{10, 20, 30, 35, 35, 35} {
		want *= time.Second
		until, ok := d.Ejected(s, ReasonConsecutiveFailures, now)
		if !ok || until.Sub(now) != want {
			t.Fatalf("ejection %d: until now+%v (ok %v), want now+%v", i+1, until.Sub(now), ok, want)
		}
		if acts := d.Evaluate(until.Add(-time.Nanosecond), hosts); len(acts) != 0 {
			t.Fatalf("ejection %d: a nanosecond early, Evaluate = %v", i+1, acts)
		}
		now = until
		acts := d.Evaluate(now, hosts)
		if len(acts) != 1 || acts[0] != (Action{Key: "a", Eject: false, Why: ReasonConsecutiveFailures}) {
			t.Fatalf("ejection %d: at its end, Evaluate = %+v, want the end of it", i+1, acts)
		}
		if s.IsEjected() {
			t.Fatal("still ejected after its end")
		}
	}
	if e := s.Ejection(); e.Multiplier != 4 || e.Ejections != 6 {
		t.Fatalf("after 6 ejections: %+v, want multiplier 4 (35s/10s rounded up), 6 ejections", e)
	}
	// The multiplier decays by one per interval spent not ejected (the
	// Evaluate that ended the last ejection did not count).
	for want := 3; want >= 0; want-- {
		now = now.Add(time.Second)
		d.Evaluate(now, hosts)
		if m := s.Ejection().Multiplier; m != want {
			t.Fatalf("multiplier %d, want %d", m, want)
		}
	}
	d.Evaluate(now.Add(time.Second), hosts)
	if m := s.Ejection().Multiplier; m != 0 {
		t.Fatalf("multiplier decayed to %d", m)
	}
	// Two intervals of good behaviour after a second ejection bring it back to base.
	until, _ := d.Ejected(s, ReasonConsecutiveFailures, now)
	now = until
	d.Evaluate(now, hosts) // ends it
	until, _ = d.Ejected(s, ReasonConsecutiveFailures, now)
	if until.Sub(now) != 20*time.Second {
		t.Fatalf("second ejection in a row lasts %v, want 20s", until.Sub(now))
	}
	now = until
	d.Evaluate(now, hosts)
	for range 2 {
		now = now.Add(time.Second)
		d.Evaluate(now, hosts)
	}
	if until, _ := d.Ejected(s, ReasonConsecutiveFailures, now); until.Sub(now) != 10*time.Second {
		t.Fatalf("after decay, ejection lasts %v, want 10s", until.Sub(now))
	}
}

func TestEjectedTwiceAndUneject(t *testing.T) {
	d := NewDetector(OutlierDetection{})
	s := NewStats()
	until, ok := d.Ejected(s, ReasonLatency, t0)
	if !ok || until != t0.Add(30*time.Second) {
		t.Fatalf("Ejected = %v, %v", until, ok)
	}
	if u2, ok := d.Ejected(s, ReasonSuccessRate, t0.Add(time.Second)); ok || u2 != until {
		t.Fatalf("second Ejected = %v, %v; want %v, false", u2, ok, until)
	}
	if e := s.Ejection(); !e.Ejected || e.Why != ReasonLatency || e.Until != until || e.Multiplier != 1 || e.Ejections != 1 {
		t.Fatalf("Ejection() = %+v", e)
	}
	// A successful active check ends it early (EndEjectionOnHealthy).
	if why, ok := d.Uneject(s); !ok || why != ReasonLatency {
		t.Fatalf("Uneject = %q, %v", why, ok)
	}
	if why, ok := d.Uneject(s); ok {
		t.Fatalf("second Uneject = %q, %v; want false", why, ok)
	}
	if acts := d.Evaluate(until, []Host{{Key: "a", Stats: s}}); len(acts) != 0 {
		t.Fatalf("Evaluate after Uneject: %v", acts)
	}
	if !NewDetector(OutlierDetection{EndEjectionOnHealthy: true}).EndEjectionOnHealthy() || d.EndEjectionOnHealthy() {
		t.Fatal("EndEjectionOnHealthy does not follow the config")
	}
	if d.Interval() != 10*time.Second {
		t.Fatalf("Interval = %v", d.Interval())
	}
}

func TestAdmit(t *testing.T) {
	for _, tc := range []struct {
		pct, total, ejected int
		want                bool
	}{
		{10, 5, 0, true}, // one may always be ejected: 20% > 10%
		{10, 5, 1, false},
		{10, 20, 1, true}, // 2 of 20 = 10%
		{10, 20, 2, false},
		{50, 4, 1, true},
		{50, 4, 2, false},
		{50, 5, 1, true},  // 2 of 5 = 40%
		{50, 5, 2, false}, // 3 of 5 = 60% > 50% (A50's own test would allow it)
		{0, 3, 0, true},
		{0, 3, 1, false},
		{100, 3, 2, true},
		{100, 3, 3, false},
		{100, 1, 0, true},
		{10, 0, 0, false},
	} {
		d := NewDetector(OutlierDetection{MaxEjectionPercent: intp(tc.pct)})
		if got := d.Admit(tc.total, tc.ejected); got != tc.want {
			t.Errorf("maxEjectionPercent %d: Admit(total %d, ejected %d) = %v, want %v", tc.pct, tc.total, tc.ejected, got, tc.want)
		}
	}
}

// fleet makes n hosts "h0".."h(n-1)".
func fleet(n int) []Host {
	hosts := make([]Host, n)
	for i := range hosts {
		hosts[i] = Host{Key: fmt.Sprintf("h%d", i), Stats: NewStats()}
	}
	return hosts
}

// feed records succ successes and fail server errors on h.
func feed(h Host, d *Detector, succ, fail int) {
	for range succ {
		h.Stats.Record(d, outcome.Success, time.Millisecond)
	}
	for range fail {
		h.Stats.Record(d, outcome.ServerError, time.Millisecond)
	}
}

func ejectedKeys(acts []Action, why Reason) []string {
	var keys []string
	for _, a := range acts {
		if !a.Eject || a.Why != why {
			continue
		}
		keys = append(keys, a.Key)
	}
	return keys
}

func TestSuccessRate(t *testing.T) {
	cfg := OutlierDetection{ConsecutiveFailures: intp(0), MaxEjectionPercent: intp(50), SuccessRate: &SuccessRate{}}
	setup := func(n, badVolume int) ([]Host, *Detector) {
		d := NewDetector(cfg)
		hosts := fleet(n)
		for i, h := range hosts[1:] {
			feed(h, d, 198+i%3, 2) // ~99%
		}
		feed(hosts[0], d, badVolume/2, badVolume-badVolume/2) // 50%
		return hosts, d
	}
	t.Run("ejects", func(t *testing.T) {
		hosts, d := setup(6, 200)
		acts := d.Evaluate(t0, hosts)
		if got := ejectedKeys(acts, ReasonSuccessRate); !slices.Equal(got, []string{"h0"}) || len(acts) != 1 {
			t.Fatalf("actions %+v, want h0 ejected for success rate", acts)
		}
		if acts[0].Until != t0.Add(30*time.Second) {
			t.Fatalf("until %v", acts[0].Until)
		}
		// The interval's counters were reset: the next interval has no data.
		if acts := d.Evaluate(t0.Add(10*time.Second), hosts); len(acts) != 0 {
			t.Fatalf("second interval, no traffic: %v", acts)
		}
	})
	t.Run("request volume", func(t *testing.T) {
		hosts, d := setup(6, 99) // the bad host has 99 requests, below 100
		if acts := d.Evaluate(t0, hosts); len(acts) != 0 {
			t.Fatalf("ejected below the request volume: %+v", acts)
		}
	})
	t.Run("minimum hosts", func(t *testing.T) {
		d := NewDetector(cfg)
		hosts := fleet(5)
		feed(hosts[0], d, 100, 100)
		for _, h := range hosts[1:4] {
			feed(h, d, 198, 2)
		}
		feed(hosts[4], d, 50, 0) // below the volume: 4 hosts have it
		if acts := d.Evaluate(t0, hosts); len(acts) != 0 {
			t.Fatalf("ejected with 4 hosts with volume (minimum 5): %+v", acts)
		}
	})
	t.Run("uniform fleet", func(t *testing.T) {
		d := NewDetector(cfg)
		hosts := fleet(10)
		for _, h := range hosts {
			feed(h, d, 180, 20)
		}
		if acts := d.Evaluate(t0, hosts); len(acts) != 0 {
			t.Fatalf("a uniform fleet had outliers: %+v", acts)
		}
	})
}

func TestFailurePercentage(t *testing.T) {
	cfg := OutlierDetection{ConsecutiveFailures: intp(0), MaxEjectionPercent: intp(50), FailurePercentage: &FailurePercentage{}}
	t.Run("threshold", func(t *testing.T) {
		d := NewDetector(cfg)
		hosts := fleet(6)
		feed(hosts[0], d, 15, 85) // 85%: ejected (at or above)
		feed(hosts[1], d, 16, 84) // 84%: not
		feed(hosts[2], d, 0, 100) // 100%: ejected
		feed(hosts[3], d, 100, 0) // fine
		feed(hosts[4], d, 100, 0) // fine
		feed(hosts[5], d, 2, 48)  // 96% but 50 requests: ejected (volume 50)
		acts := d.Evaluate(t0, hosts)
		if got := ejectedKeys(acts, ReasonFailurePercentage); !slices.Equal(got, []string{"h0", "h2", "h5"}) || len(acts) != 3 {
			t.Fatalf("actions %+v, want h0, h2, h5 ejected for failure percentage", acts)
		}
	})
	t.Run("request volume", func(t *testing.T) {
		d := NewDetector(cfg)
		hosts := fleet(6)
		for _, h := range hosts[1:] {
			feed(h, d, 100, 0)
		}
		feed(hosts[0], d, 0, 49) // 100% failures, 49 requests
		if acts := d.Evaluate(t0, hosts); len(acts) != 0 {
			t.Fatalf("ejected below the request volume: %+v", acts)
		}
	})
	t.Run("minimum hosts", func(t *testing.T) {
		d := NewDetector(cfg)
		hosts := fleet(8)
		feed(hosts[0], d, 0, 100)
		for _, h := range hosts[1:4] {
			feed(h, d, 100, 0)
		}
		for _, h := range hosts[4:] {
			feed(h, d, 10, 0) // below the volume
		}
		if acts := d.Evaluate(t0, hosts); len(acts) != 0 {
			t.Fatalf("ejected with 4 hosts with volume (minimum 5): %+v", acts)
		}
	})
}

// feedLatency records n successes on h with latencies around lat (±10%).
func feedLatency(r *rand.Rand, h Host, d *Detector, n int, lat time.Duration) {
	for range n {
		jitter := 0.9 + 0.2*r.Float64()
		h.Stats.Record(d, outcome.Success, time.Duration(float64(lat)*jitter))
	}
}

func TestLatencyOutlier(t *testing.T) {
	cfg := OutlierDetection{ConsecutiveFailures: intp(0), MaxEjectionPercent: intp(50), Latency: &LatencyOutlier{}}
	r := rand.New(rand.NewPCG(5, 6))
	run := func(slow float64, slowN, n int) []Action {
		d := NewDetector(cfg)
		hosts := fleet(n)
		for i, h := range hosts {
			lat := 10 * time.Millisecond
			if i == 2 {
				lat = time.Duration(float64(lat) * slow)
				feedLatency(r, h, d, slowN, lat)
				continue
			}
			feedLatency(r, h, d, 100, lat)
		}
		return d.Evaluate(t0, hosts)
	}
	if acts := run(10, 100, 5); len(acts) != 1 || acts[0].Key != "h2" || !acts[0].Eject || acts[0].Why != ReasonLatency {
		t.Fatalf("10× slow host among 5: actions %+v, want h2 ejected for latency", acts)
	}
	if acts := run(1.5, 100, 5); len(acts) != 0 {
		t.Fatalf("1.5× slow host among 5: actions %+v, want none", acts)
	}
	if acts := run(10, 49, 5); len(acts) != 0 {
		t.Fatalf("10× slow host with 49 samples (volume 50): actions %+v, want none", acts)
	}
	if acts := run(10, 100, 2); len(acts) != 0 {
		t.Fatalf("10× slow host among 2 (minimum 3): actions %+v, want none", acts)
	}
	// Unknown latencies (0) are not samples.
	d := NewDetector(cfg)
	hosts := fleet(5)
	for _, h := range hosts {
		for range 100 {
			h.Stats.Record(d, outcome.Success, 0)
		}
	}
	if acts := d.Evaluate(t0, hosts); len(acts) != 0 {
		t.Fatalf("no known latency: actions %+v", acts)
	}
}

func TestEvaluateMaxEjectionPercent(t *testing.T) {
	// Half the fleet fails entirely: 50% may be ejected, no more.
	d := NewDetector(OutlierDetection{MaxEjectionPercent: intp(50), FailurePercentage: &FailurePercentage{}})
	hosts := fleet(10)
	for i, h := range hosts {
		if i < 7 {
			feed(h, d, 0, 100)
		} else {
			feed(h, d, 100, 0)
		}
	}
	// One is already ejected inline (before Evaluate): it counts.
	if _, ok := d.Ejected(hosts[9].Stats, ReasonConsecutiveFailures, t0.Add(-time.Second)); !ok {
		t.Fatal("Ejected failed")
	}
	acts := d.Evaluate(t0, hosts)
	if got := ejectedKeys(acts, ReasonFailurePercentage); !slices.Equal(got, []string{"h0", "h1", "h2", "h3"}) {
		t.Fatalf("ejected %v, want h0..h3 (4 + the one already ejected = 50%% of 10)", got)
	}
	n := 0
	for _, h := range hosts {
		if h.Stats.IsEjected() {
			n++
		}
	}
	if n != 5 {
		t.Fatalf("%d of 10 ejected, want 5", n)
	}
	// Each host is ejected once even when several detectors would.
	d = NewDetector(OutlierDetection{MaxEjectionPercent: intp(100), FailurePercentage: &FailurePercentage{MinimumHosts: 1}, SuccessRate: &SuccessRate{MinimumHosts: 1}})
	hosts = fleet(6)
	for _, h := range hosts[1:] {
		feed(h, d, 100, 0)
	}
	feed(hosts[0], d, 0, 100)
	if acts := d.Evaluate(t0, hosts); len(acts) != 1 || acts[0].Why != ReasonSuccessRate {
		t.Fatalf("actions %+v, want one ejection, for success rate (evaluated first)", acts)
	}
}

func TestEvaluateDeterministic(t *testing.T) {
	var first []Action
	for seed := range uint64(20) {
		d := NewDetector(OutlierDetection{MaxEjectionPercent: intp(30), FailurePercentage: &FailurePercentage{}})
		hosts := fleet(12)
		for i, h := range hosts {
			if i%2 == 0 {
				feed(h, d, 0, 60)
			} else {
				feed(h, d, 60, 0)
			}
		}
		rand.New(rand.NewPCG(seed, seed)).Shuffle(len(hosts), func(i, j int) { hosts[i], hosts[j] = hosts[j], hosts[i] })
		acts := d.Evaluate(t0, hosts)
		if first == nil {
			first = acts
			if want := []string{"h0", "h10", "h2"}; !slices.Equal(ejectedKeys(acts, ReasonFailurePercentage), want) {
				t.Fatalf("ejected %v, want %v (the first 3 = 30%% of 12 in key order)", ejectedKeys(acts, ReasonFailurePercentage), want)
			}
		} else if !slices.Equal(acts, first) {
			t.Fatalf("seed %d: actions %+v, want %+v", seed, acts, first)
		}
	}
}

// TestEvaluateConcurrentWithRecord runs Evaluate while 8 goroutines record
// outcomes and eject inline, as the engine will (run it with -race): the
// ejected share stays within maxEjectionPercent's rule as Evaluate sees it.
func TestEvaluateConcurrentWithRecord(t *testing.T) {
	d := NewDetector(OutlierDetection{
		Interval: time.Second, BaseEjectionTime: time.Second, MaxEjectionPercent: intp(50),
		SuccessRate: &SuccessRate{MinimumHosts: 2, RequestVolume: 10}, FailurePercentage: &FailurePercentage{MinimumHosts: 2, RequestVolume: 10},
		Latency: &LatencyOutlier{MinimumHosts: 2, RequestVolume: 10},
	})
	hosts := fleet(8)
	var mu sync.Mutex // the engine's lock around Admit and Ejected
	now := t0
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				h := hosts[r.IntN(len(hosts))]
				c := outcome.Success
				if r.IntN(3) == 0 || h.Key == "h1" {
					c = outcome.GatewayError
				}
				if eject, why := h.Stats.Record(d, c, time.Duration(1+r.IntN(20))*time.Millisecond); eject {
					mu.Lock()
					n := 0
					for _, h := range hosts {
						if h.Stats.IsEjected() {
							n++
						}
					}
					if d.Admit(len(hosts), n) {
						d.Ejected(h.Stats, why, now)
					}
					mu.Unlock()
				}
			}
		})
	}
	for range 200 {
		mu.Lock()
		now = now.Add(100 * time.Millisecond)
		d.Evaluate(now, hosts)
		mu.Unlock()
	}
	close(stop)
	wg.Wait()
	n := 0
	for _, h := range hosts {
		if h.Stats.IsEjected() {
			n++
		}
	}
	if n > 4 {
		t.Fatalf("%d of 8 ejected, maxEjectionPercent 50", n)
	}
}
