package health

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"time"
)

// OutlierDetection configures passive outlier detection: Envoy's outlier
// detection (and gRFC A50's), in camelCase, plus a latency detector. It is the
// "outlierDetection" section of the balancer's configuration; the section
// being absent turns outlier detection off.
//
// Every numeric field carries a `range` tag, which the configuration's
// JSON decoder checks for every written field (zero included) and
// balancer.CheckRanges checks for Go-built values; a field that is omitted
// (the zero value, or nil for pointer fields) takes its default. The nested
// sections are pointers: nil (absent) turns that detector off, and an empty
// section turns it on with its defaults.
//
// The detectors: three consecutive-failure detectors run inline, on the
// request path, from Stats.Record (an ejection takes effect on the next
// pick); success rate, failure percentage and latency run every Interval
// in Detector.Evaluate over the interval's outcomes. Ejection time is
// BaseEjectionTime × the endpoint's multiplier (times ejected, less one per
// interval spent not ejected), capped at MaxEjectionTime; at most
// MaxEjectionPercent of the endpoints are ejected at once, but one always may
// be.
type OutlierDetection struct {
	// ConsecutiveFailures ejects an endpoint after this many consecutive
	// failed requests of any failure class (outcome.Class.Failure: overloaded,
	// server error, gateway error, timeout, local error, connect error); a
	// success or client error ends the run. Default 5; range [0, 10000]; 0
	// turns the detector off.
	ConsecutiveFailures *int `json:"consecutiveFailures,omitempty" range:"[0, 10000]"`

	// ConsecutiveGatewayFailures ejects an endpoint after this many
	// consecutive gateway errors (HTTP 502, 503, 504; gRPC UNAVAILABLE). Any
	// answer of another class from the server ends the run; local-origin
	// failures neither count nor end it. Default 0 (off); range [0, 10000].
	ConsecutiveGatewayFailures *int `json:"consecutiveGatewayFailures,omitempty" range:"[0, 10000]"`

	// ConsecutiveLocalOriginFailures ejects an endpoint after this many
	// consecutive local-origin failures: connection refused or failed
	// (ConnectError), reset or other transport error (LocalError), timeout
	// (Timeout). Any answer from the server ends the run. Default 0 (off);
	// range [0, 10000].
	ConsecutiveLocalOriginFailures *int `json:"consecutiveLocalOriginFailures,omitempty" range:"[0, 10000]"`

	// ConsecutiveConnectionFailures ejects an endpoint after this many
	// consecutive failures that prove it unusable rather than slow or
	// unhappy: the connection could not be made (ConnectError: refused,
	// unreachable) or failed before any response (LocalError: reset, TLS
	// handshake failure, gRPC stream reset). Any answer from the server
	// ends the run; a timeout neither counts nor ends it (a hanging endpoint
	// may only be slow). It is the detector of the engine's default failure
	// accrual (DefaultFailureAccrual), and can be kept in an explicit
	// section. Default 0 (off); range [0, 10000].
	ConsecutiveConnectionFailures *int `json:"consecutiveConnectionFailures,omitempty" range:"[0, 10000]"`

	// Interval is the time between two evaluations of the interval
	// detectors (success rate, failure percentage, latency), which is also
	// the window they look at; ejections end, and multipliers decay, on the
	// same tick. Default 10s (Envoy's); range [1ms, 24h].
	Interval time.Duration `json:"interval,omitzero" range:"[1ms, 24h]"`

	// BaseEjectionTime is how long a first ejection lasts; the n-th
	// ejection in a row lasts n times as long, up to MaxEjectionTime.
	// Default 30s; range [1ms, 24h].
	BaseEjectionTime time.Duration `json:"baseEjectionTime,omitzero" range:"[1ms, 24h]"`

	// MaxEjectionTime caps an ejection's duration. Default 300s, or
	// BaseEjectionTime if that is longer; range [1ms, 24h], and when
	// written not less than BaseEjectionTime (Validate).
	MaxEjectionTime time.Duration `json:"maxEjectionTime,omitzero" range:"[1ms, 24h]"`

	// MaxEjectionPercent is the largest share of the endpoints, in percent,
	// that may be ejected at once: an ejection happens only if it leaves at
	// most this share ejected, except that one endpoint may always be
	// ejected when none is (so 0 means "one at a time"). Default 10
	// (Envoy's); range [0, 100].
	MaxEjectionPercent *int `json:"maxEjectionPercent,omitempty" range:"[0, 100]"`

	// SuccessRate turns on success-rate ejection (statistical outliers);
	// nil (absent) means off.
	SuccessRate *SuccessRate `json:"successRate,omitempty"`

	// FailurePercentage turns on failure-percentage ejection (a fixed
	// threshold); nil (absent) means off.
	FailurePercentage *FailurePercentage `json:"failurePercentage,omitempty"`

	// Latency turns on latency-outlier ejection; nil (absent) means off.
	Latency *LatencyOutlier `json:"latency,omitempty"`

	// EndEjectionOnHealthy makes a successful active health check end an
	// ejection early (the engine calls Detector.Uneject). Default false:
	// ejections run their time.
	EndEjectionOnHealthy bool `json:"endEjectionOnHealthy,omitempty"`
}

// SuccessRate configures success-rate ejection (Envoy's success_rate_*
// fields): every interval, among the endpoints with at least RequestVolume
// requests in it, if there are at least MinimumHosts of them, those whose
// success rate is below mean − StdevFactor × standard deviation (over those
// endpoints) are ejected.
type SuccessRate struct {
	// MinimumHosts is how many endpoints must have RequestVolume requests
	// in the interval for the detector to run. Default 5; range [1, 100000].
	MinimumHosts int `json:"minimumHosts,omitzero" range:"[1, 100000]"`
	// RequestVolume is the least number of requests (of counted outcomes) in
	// the interval for an endpoint to be judged and to count in the
	// statistics. Default 100; range [1, 1e9].
	RequestVolume int `json:"requestVolume,omitzero" range:"[1, 1000000000]"`
	// StdevFactor is how many standard deviations below the mean success
	// rate makes an outlier (Envoy's success_rate_stdev_factor / 1000).
	// Default 1.9; range (0, 100].
	StdevFactor float64 `json:"stdevFactor,omitzero" range:"(0, 100]"`
}

// FailurePercentage configures failure-percentage ejection (Envoy's
// failure_percentage_* fields): every interval, among the endpoints with at
// least RequestVolume requests in it, if there are at least MinimumHosts of
// them, those whose share of failed requests is at least Threshold percent
// are ejected.
type FailurePercentage struct {
	// Threshold is the failure percentage at or above which an endpoint is
	// ejected. Default 85; range [1, 100].
	Threshold int `json:"threshold,omitzero" range:"[1, 100]"`
	// MinimumHosts is how many endpoints must have RequestVolume requests
	// in the interval for the detector to run. Default 5; range [1, 100000].
	MinimumHosts int `json:"minimumHosts,omitzero" range:"[1, 100000]"`
	// RequestVolume is the least number of requests in the interval for an
	// endpoint to be judged. Default 50; range [1, 1e9].
	RequestVolume int `json:"requestVolume,omitzero" range:"[1, 1000000000]"`
}

// LatencyOutlier configures latency-outlier ejection (Envoy's issue #288):
// every interval, among the endpoints with at least RequestVolume latency
// samples in it, if there are at least MinimumHosts of them, each one's
// latency at Quantile is read from its histogram (within ~6%), and those
// whose value exceeds Factor × the median of those values are ejected.
type LatencyOutlier struct {
	// Quantile is the latency quantile compared, as a fraction. Default
	// 0.9; range (0, 1].
	Quantile float64 `json:"quantile,omitzero" range:"(0, 1]"`
	// Factor is how many times the fleet's median an endpoint's latency
	// must exceed to be an outlier. Default 3; range (1, 1000].
	Factor float64 `json:"factor,omitzero" range:"(1, 1000]"`
	// MinimumHosts is how many endpoints must have RequestVolume samples in
	// the interval for the detector to run. Default 3; range [1, 100000].
	MinimumHosts int `json:"minimumHosts,omitzero" range:"[1, 100000]"`
	// RequestVolume is the least number of latency samples (counted
	// outcomes with a known latency) in the interval for an endpoint to be
	// judged and to count in the median. Default 50; range [1, 1e9].
	RequestVolume int `json:"requestVolume,omitzero" range:"[1, 1000000000]"`
}

// Defaults of OutlierDetection's fields, applied to a field left out (or
// zero); Envoy's defaults.
const (
	// DefaultConsecutiveFailures is ConsecutiveFailures' default.
	DefaultConsecutiveFailures = 5
	// DefaultOutlierInterval is OutlierDetection.Interval's default.
	DefaultOutlierInterval = 10 * time.Second
	// DefaultBaseEjectionTime is BaseEjectionTime's default.
	DefaultBaseEjectionTime = 30 * time.Second
	// DefaultMaxEjectionTime is MaxEjectionTime's default (unless
	// BaseEjectionTime is longer).
	DefaultMaxEjectionTime = 300 * time.Second
	// DefaultMaxEjectionPercent is MaxEjectionPercent's default.
	DefaultMaxEjectionPercent = 10
)

// Validate checks the rules that involve more than one field (the caller
// checks each field's range from its tag): MaxEjectionTime, when written,
// must not be less than BaseEjectionTime (or its default). Errors name the
// field by its JSON name, relative to the section ("maxEjectionTime: ...").
// A nil *OutlierDetection is valid.
func (c *OutlierDetection) Validate() error {
	if c == nil {
		return nil
	}
	base := cmp.Or(c.BaseEjectionTime, DefaultBaseEjectionTime)
	if c.MaxEjectionTime != 0 && c.MaxEjectionTime < base {
		what := "baseEjectionTime"
		if c.BaseEjectionTime == 0 {
			what += "'s default"
		}
		return fmt.Errorf("maxEjectionTime: %v is less than %s (%v)", c.MaxEjectionTime, what, base)
	}
	return nil
}

// WithDefaults returns c with every default filled in: every pointer field
// set (sections stay nil when absent, and are copied when present, so the
// result shares nothing with c) and every zero field given its default.
// Out-of-range values a Go caller built (which Validate's caller rejects)
// are made harmless: negative thresholds mean off, non-positive durations
// and factors the default, percentages are clamped to [0, 100].
func (c OutlierDetection) WithDefaults() OutlierDetection {
	intOr := func(p *int, def, lo, hi int) *int {
		v := def
		if p != nil {
			v = min(max(*p, lo), hi)
		}
		return &v
	}
	durOr := func(d, def time.Duration) time.Duration {
		if d <= 0 {
			return def
		}
		return d
	}
	c.ConsecutiveFailures = intOr(c.ConsecutiveFailures, DefaultConsecutiveFailures, 0, math.MaxInt32)
	c.ConsecutiveGatewayFailures = intOr(c.ConsecutiveGatewayFailures, 0, 0, math.MaxInt32)
	c.ConsecutiveLocalOriginFailures = intOr(c.ConsecutiveLocalOriginFailures, 0, 0, math.MaxInt32)
	c.ConsecutiveConnectionFailures = intOr(c.ConsecutiveConnectionFailures, 0, 0, math.MaxInt32)
	c.Interval = durOr(c.Interval, DefaultOutlierInterval)
	c.BaseEjectionTime = durOr(c.BaseEjectionTime, DefaultBaseEjectionTime)
	c.MaxEjectionTime = max(durOr(c.MaxEjectionTime, max(DefaultMaxEjectionTime, c.BaseEjectionTime)), c.BaseEjectionTime)
	c.MaxEjectionPercent = intOr(c.MaxEjectionPercent, DefaultMaxEjectionPercent, 0, 100)
	if c.SuccessRate != nil {
		sr := *c.SuccessRate
		sr.MinimumHosts = positiveOr(sr.MinimumHosts, 5)
		sr.RequestVolume = positiveOr(sr.RequestVolume, 100)
		sr.StdevFactor = floatOr(sr.StdevFactor, 1.9)
		c.SuccessRate = &sr
	}
	if c.FailurePercentage != nil {
		fp := *c.FailurePercentage
		fp.Threshold = min(positiveOr(fp.Threshold, 85), 100)
		fp.MinimumHosts = positiveOr(fp.MinimumHosts, 5)
		fp.RequestVolume = positiveOr(fp.RequestVolume, 50)
		c.FailurePercentage = &fp
	}
	if c.Latency != nil {
		l := *c.Latency
		l.Quantile = floatOr(l.Quantile, 0.9)
		if l.Quantile > 1 {
			l.Quantile = 1
		}
		l.Factor = floatOr(l.Factor, 3)
		l.MinimumHosts = positiveOr(l.MinimumHosts, 3)
		l.RequestVolume = positiveOr(l.RequestVolume, 50)
		c.Latency = &l
	}
	return c
}

func positiveOr(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

func floatOr(v, def float64) float64 {
	if !(v > 0) || math.IsInf(v, 0) { // catches NaN too
		return def
	}
	return v
}

// Reason says why an endpoint was ejected: which detector fired.
type Reason string

// The detectors' reasons (the strings follow outcome.Class's names).
const (
	ReasonConsecutiveFailures            Reason = "consecutive_failures"
	ReasonConsecutiveGatewayFailures     Reason = "consecutive_gateway_failures"
	ReasonConsecutiveLocalOriginFailures Reason = "consecutive_local_origin_failures"
	ReasonConsecutiveConnectionFailures  Reason = "consecutive_connection_failures"
	ReasonSuccessRate                    Reason = "success_rate"
	ReasonFailurePercentage              Reason = "failure_percentage"
	ReasonLatency                        Reason = "latency"
)

// Detector runs outlier detection for one engine: it holds the resolved
// configuration, which Stats.Record reads for its thresholds, and drives the
// ejection state kept in each endpoint's Stats. It starts no goroutine and
// reads no clock: the engine passes the time to Ejected and Evaluate, and
// calls Evaluate every Interval from its one ticker goroutine.
//
// A Detector is immutable after NewDetector and safe for concurrent use; a
// reconfiguration builds a new one over the same Stats. Ejected, Uneject and
// Evaluate may run concurrently (each endpoint's ejection state has its own
// lock), but the engine must not run two Evaluates of one endpoint set at
// once; and for maxEjectionPercent to hold exactly, the engine's inline
// Admit-then-Ejected pairs and Evaluate must not interleave (run them under
// one lock: Evaluate counts the ejections it sees when it starts).
type Detector struct {
	cfg OutlierDetection // resolved

	consecFailures, consecGateway, consecLocalOrigin int64
	consecConn                                       int64
	periodic                                         bool // an interval detector is on
	base, max                                        time.Duration
	maxMultiplier                                    int
	pct                                              int
	successRate                                      *SuccessRate
	failurePct                                       *FailurePercentage
	latency                                          *LatencyOutlier
}

// NewDetector returns a Detector for cfg with its defaults applied
// (WithDefaults). cfg is assumed validated (ranges and Validate);
// out-of-range values are made harmless, not reported.
func NewDetector(cfg OutlierDetection) *Detector {
	cfg = cfg.WithDefaults()
	d := &Detector{
		cfg:               cfg,
		consecFailures:    int64(*cfg.ConsecutiveFailures),
		consecGateway:     int64(*cfg.ConsecutiveGatewayFailures),
		consecLocalOrigin: int64(*cfg.ConsecutiveLocalOriginFailures),
		consecConn:        int64(*cfg.ConsecutiveConnectionFailures),
		base:              cfg.BaseEjectionTime,
		max:               cfg.MaxEjectionTime,
		pct:               *cfg.MaxEjectionPercent,
		successRate:       cfg.SuccessRate,
		failurePct:        cfg.FailurePercentage,
		latency:           cfg.Latency,
	}
	d.periodic = d.successRate != nil || d.failurePct != nil || d.latency != nil
	// The multiplier stops growing once base × multiplier reaches the cap,
	// so that it decays from there in as many intervals as it matters.
	d.maxMultiplier = int(min((d.max+d.base-1)/d.base, math.MaxInt32))
	return d
}

// Config returns the detector's configuration with every default filled in.
func (d *Detector) Config() OutlierDetection {
	c := d.cfg
	return c.WithDefaults() // copies the pointers' targets
}

// Interval returns how often the engine should call Evaluate.
func (d *Detector) Interval() time.Duration { return d.cfg.Interval }

// Periodic reports whether an interval detector (success rate, failure
// percentage, latency) is on: those need Evaluate every Interval, and every
// outcome recorded. Without one, only the consecutive-failure detectors run:
// Stats.Record needs to see an outcome only when it may move a run (a
// failure, or the first success after one), and Evaluate matters only while
// some endpoint is not Settled, to end ejections and decay multipliers. The
// engine then runs its ticker only while it matters.
func (d *Detector) Periodic() bool { return d.periodic }

// EndEjectionOnHealthy reports whether a successful active health check
// should end an ejection early (the engine then calls Uneject).
func (d *Detector) EndEjectionOnHealthy() bool { return d.cfg.EndEjectionOnHealthy }

// EjectionTime returns how long an ejection with the given multiplier
// (1 for a first ejection) lasts: BaseEjectionTime × multiplier, capped at
// MaxEjectionTime.
func (d *Detector) EjectionTime(multiplier int) time.Duration {
	multiplier = max(multiplier, 1)
	if int64(multiplier) > int64(d.max/d.base) {
		return d.max
	}
	return min(d.base*time.Duration(multiplier), d.max)
}

// Admit reports whether one more endpoint may be ejected when ejected of
// total endpoints already are: if none is, one may always be (Envoy's and
// gRFC A50's rule); otherwise only if the ejection leaves at most
// MaxEjectionPercent of total ejected. (A50's own test, "ejected·100/total <
// maxEjectionPercent" before the ejection, can overshoot: with 5 endpoints
// and 50% it allows a third ejection, 60%; this one never goes past the
// percentage except for the one.)
func (d *Detector) Admit(total, ejected int) bool {
	if total <= 0 || ejected >= total {
		return false
	}
	if ejected <= 0 {
		return true
	}
	return (int64(ejected)+1)*100 <= int64(d.pct)*int64(total)
}

// Ejected records that the endpoint of s is ejected, for why, from now:
// its multiplier grows by one (up to where the cap is reached), the
// ejection lasts EjectionTime(multiplier), and its consecutive-failure runs
// start again. It returns when the ejection ends, and ok=false (with the
// current ejection's end) if the endpoint was already ejected, which
// changes nothing. The caller has checked Admit; the engine calls Ejected
// after Stats.Record fired (Evaluate calls it itself).
func (d *Detector) Ejected(s *Stats, why Reason, now time.Time) (until time.Time, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ejected.Load() {
		return s.until, false
	}
	if s.multiplier < d.maxMultiplier {
		s.multiplier++
	}
	s.until = now.Add(d.EjectionTime(s.multiplier))
	s.why = why
	s.ejections++
	s.resetConsecutive()
	s.ejected.Store(true)
	return s.until, true
}

// Uneject ends the endpoint's ejection now (the engine calls it when an
// active health check succeeds and EndEjectionOnHealthy is set; Evaluate
// calls it when the ejection time has passed). The multiplier stays, to
// decay while the endpoint is not ejected; the consecutive-failure runs
// start again. It returns the ejection's reason, and ok=false if the
// endpoint was not ejected.
func (d *Detector) Uneject(s *Stats) (why Reason, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unejectLocked()
}

func (s *Stats) unejectLocked() (Reason, bool) {
	if !s.ejected.Load() {
		return "", false
	}
	s.resetConsecutive()
	s.ejected.Store(false)
	return s.why, true
}

// Host is one endpoint as Evaluate sees it.
type Host struct {
	// Key identifies the endpoint (its address); Evaluate works in Key
	// order and names endpoints by Key in its actions.
	Key string
	// Stats is the endpoint's passive state.
	Stats *Stats
}

// Action is a change Evaluate made to an endpoint's ejection state, for
// the engine to apply (set or clear its Ejected condition) and report.
type Action struct {
	// Key is the endpoint's Host.Key.
	Key string
	// Eject is true for an ejection, false for the end of one.
	Eject bool
	// Why is the detector that ejected the endpoint (for an ejection's
	// end, the reason it had been ejected for).
	Why Reason
	// Until is when the ejection ends (zero for the end of one).
	Until time.Time
}

// hostView is one host's interval figures in Evaluate.
type hostView struct {
	h          *Host
	succ, fail uint64
	latN       uint64        // latency samples
	lat        time.Duration // latency at the configured quantile, if latN > 0
	wasEjected bool          // ejected when the evaluation began (not judged)
	out        bool          // ejected during this evaluation (judged once)
}

// Evaluate runs one interval of outlier detection over hosts (the engine's
// endpoints; order does not matter, Evaluate works in Key order so that
// results are reproducible) at time now. The engine calls it every
// Interval, off the request path. In order:
//
//  1. Each host's interval counters (successes, failures, latency
//     histogram) are read and reset.
//  2. Ejections whose time has passed end (Eject=false actions); the
//     multiplier of every host not ejected decays by one.
//  3. Success rate, failure percentage and latency detectors, those that
//     are configured, judge the hosts that were not ejected when the
//     evaluation began (an ejected host's interval says little), each over
//     the hosts with its RequestVolume and only if there are MinimumHosts of
//     them. Each ejection is subject to Admit, counting the ejections
//     made so far; its action carries Until.
//
// Evaluate returns the actions in the order it took them. It allocates, and
// runs in O(n log n) for n hosts plus a pass over each one's histogram when
// the latency detector is on.
func (d *Detector) Evaluate(now time.Time, hosts []Host) []Action {
	views := make([]hostView, len(hosts))
	for i := range hosts {
		views[i].h = &hosts[i]
	}
	slices.SortFunc(views, func(a, b hostView) int { return cmp.Compare(a.h.Key, b.h.Key) })

	var actions []Action
	var buf [histBuckets]uint32
	ejected := 0
	for i := range views {
		v := &views[i]
		s := v.h.Stats
		c := s.counts.Swap(0)
		v.succ, v.fail = c&(failureUnit-1), c>>32
		if d.latency != nil {
			if v.latN = s.latency.drain(&buf); v.latN > 0 {
				v.lat = histQuantile(&buf, v.latN, d.latency.Quantile)
			}
		}
		s.mu.Lock()
		switch {
		case s.ejected.Load() && !now.Before(s.until):
			why, _ := s.unejectLocked()
			actions = append(actions, Action{Key: v.h.Key, Why: why})
			v.wasEjected = true
		case s.ejected.Load():
			v.wasEjected = true
			ejected++
		case s.multiplier > 0:
			s.multiplier--
		}
		s.mu.Unlock()
	}

	eject := func(v *hostView, why Reason) {
		if v.out || !d.Admit(len(views), ejected) {
			return
		}
		v.out = true // by this detector, or inline since step 1
		ejected++
		if until, ok := d.Ejected(v.h.Stats, why, now); ok {
			actions = append(actions, Action{Key: v.h.Key, Eject: true, Why: why, Until: until})
		}
	}

	if sr := d.successRate; sr != nil {
		var rates []float64
		for i := range views {
			v := &views[i]
			if n := v.succ + v.fail; !v.wasEjected && n >= uint64(sr.RequestVolume) {
				rates = append(rates, float64(v.succ)/float64(n))
			}
		}
		if len(rates) >= sr.MinimumHosts {
			var sum float64
			for _, r := range rates {
				sum += r
			}
			mean := sum / float64(len(rates))
			var sq float64
			for _, r := range rates {
				sq += (r - mean) * (r - mean)
			}
			threshold := mean - sr.StdevFactor*math.Sqrt(sq/float64(len(rates)))
			for i := range views {
				v := &views[i]
				if n := v.succ + v.fail; !v.wasEjected && n >= uint64(sr.RequestVolume) &&
					float64(v.succ)/float64(n) < threshold {
					eject(v, ReasonSuccessRate)
				}
			}
		}
	}

	if fp := d.failurePct; fp != nil {
		qualified := 0
		for i := range views {
			if v := &views[i]; !v.wasEjected && v.succ+v.fail >= uint64(fp.RequestVolume) {
				qualified++
			}
		}
		if qualified >= fp.MinimumHosts {
			for i := range views {
				v := &views[i]
				if n := v.succ + v.fail; !v.wasEjected && n >= uint64(fp.RequestVolume) &&
					v.fail*100 >= uint64(fp.Threshold)*n {
					eject(v, ReasonFailurePercentage)
				}
			}
		}
	}

	if l := d.latency; l != nil {
		var lats []time.Duration
		for i := range views {
			if v := &views[i]; !v.wasEjected && v.latN >= uint64(l.RequestVolume) {
				lats = append(lats, v.lat)
			}
		}
		if len(lats) >= l.MinimumHosts {
			slices.Sort(lats)
			median := float64(lats[len(lats)/2])
			if len(lats)%2 == 0 {
				median = (float64(lats[len(lats)/2-1]) + median) / 2
			}
			limit := l.Factor * median
			for i := range views {
				v := &views[i]
				if !v.wasEjected && v.latN >= uint64(l.RequestVolume) && float64(v.lat) > limit {
					eject(v, ReasonLatency)
				}
			}
		}
	}
	return actions
}
