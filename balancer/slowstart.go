package balancer

import (
	"math"
	"sync/atomic"
	"time"
)

// SlowStart ramps a new or returning endpoint's share of traffic up over a
// window instead of sending it a full share at once, so that a cold cache, a JIT
// or a connection pool can warm up (Envoy's slow_start_config). It applies to
// round_robin, weighted_round_robin and least_request.
//
// During the window an endpoint's weight is multiplied by
//
//	max(MinWeightPercent/100, (age/Window)^(1/Aggression))
//
// where age is the time since the endpoint became eligible (Endpoint.EligibleSince:
// discovered, or back from ejection, unhealth or disconnection), measured on the
// engine's clock. Endpoints from the engine's first discovery answer ramp as
// well; since they all ramp alike, their relative shares do not change.
//
// In JSON: {"window": "30s", "aggression": 1.0, "minWeightPercent": 10}.
// The zero value turns slow start off.
type SlowStart struct {
	// Window is how long a new endpoint ramps. 0, the default, turns slow start
	// off. Valid 0-1h. JSON: a duration string such as "30s".
	Window time.Duration `json:"window,omitempty" range:"[0, 1h]"`
	// Aggression shapes the ramp: 1 is linear, above 1 ramps faster early, below
	// 1 slower. 0 means the default, 1.0. Valid (0, 100].
	Aggression float64 `json:"aggression,omitempty" range:"(0, 100]"`
	// MinWeightPercent is the smallest share of its full weight an endpoint gets
	// while it ramps, in percent. 0 means the default, 10. Valid (0, 100].
	MinWeightPercent float64 `json:"minWeightPercent,omitempty" range:"(0, 100]"`
}

// slowStartFields is SlowStart without its JSON methods, for the strict codec.
type slowStartFields SlowStart

// UnmarshalJSON reads the JSON form, as Config's doc describes: exact field
// names, the window as a duration string, written values range-checked.
func (s *SlowStart) UnmarshalJSON(js []byte) error {
	return decodeStrict(js, (*slowStartFields)(s))
}

// MarshalJSON writes the form UnmarshalJSON reads.
func (s SlowStart) MarshalJSON() ([]byte, error) {
	return encodeJSON((*slowStartFields)(&s))
}

// Validate reports the first out-of-range field, as "slowStart.FIELD: ...".
func (s SlowStart) Validate() error {
	return inField("slowStart", CheckRanges(&s))
}

// slowStart is a picker's view of the ramp: it knows when the last endpoint of
// its set stops ramping, and reads the clock (once per pick) only until then.
type slowStart struct {
	window  int64   // ns
	invAggr float64 // 1/aggression
	min     float64 // fraction
	end     int64   // unix ns when the last endpoint of the set stops ramping
	now     func() time.Time
	rand    func() uint64
	ramping atomic.Bool
}

// newSlowStart returns nil when cfg is off or no endpoint of info ramps now.
func newSlowStart(cfg SlowStart, info BuildInfo) *slowStart {
	if cfg.Window <= 0 {
		return nil
	}
	var end int64
	for _, ep := range info.Endpoints {
		end = max(end, ep.since.Load()+int64(cfg.Window))
	}
	if info.Now().UnixNano() >= end {
		return nil
	}
	s := &slowStart{window: int64(cfg.Window), invAggr: 1, min: 0.10, end: end, now: info.Now, rand: info.Rand}
	if cfg.Aggression > 0 {
		s.invAggr = 1 / cfg.Aggression
	}
	if cfg.MinWeightPercent > 0 {
		s.min = cfg.MinWeightPercent / 100
	}
	s.ramping.Store(true)
	return s
}

// active reads the clock and reports whether an endpoint may still ramp.
func (s *slowStart) active() (now int64, ok bool) {
	if !s.ramping.Load() {
		return 0, false
	}
	now = s.now().UnixNano()
	if now >= s.end {
		s.ramping.Store(false)
		return 0, false
	}
	return now, true
}

// factor returns ep's weight multiplier at now, in [min, 1].
func (s *slowStart) factor(ep *Endpoint, now int64) float64 {
	age := now - ep.since.Load()
	if age >= s.window {
		return 1
	}
	age = max(age, int64(time.Millisecond)) // as Envoy: a just-added endpoint is not at zero
	f := float64(age) / float64(s.window)
	if s.invAggr != 1 {
		f = math.Pow(f, s.invAggr)
	}
	return max(f, s.min)
}

// accept reports, with probability f, that a ramping endpoint takes a pick.
func (s *slowStart) accept(f float64) bool {
	return f >= 1 || float64(s.rand()>>11)*0x1p-53 < f
}

// maxRejects bounds the re-picks a ramping set costs one pick; past it the last
// candidate is taken (only reachable when every endpoint is at a tiny factor).
const maxRejects = 32
