package balancer

import (
	"math"
	"time"

	"github.com/lodestar-go/lodestar/balancer/outcome"
)

// Failure weight: what makes a failing endpoint look busy rather than idle to
// the algorithms that score endpoints by load.
//
// The least-loaded black hole: an endpoint that refuses connections (or
// answers 503 at once) fails in microseconds, so it always has the fewest
// requests in flight and wins every least-request comparison; with six
// endpoints, one of them down, least_request sent it a third of all requests.
// So every failed outcome (outcome.Class.Failure: refused, reset, timeout,
// gateway or server error, overloaded) leaves a weight on its endpoint that
// least_request (plain and weighted) adds to the endpoint's requests in flight,
// and bounded_load to its load against the cap: a failure counts as a request
// still in flight, that fades. (Peak EWMA turns it into latency, below.)
//
//   - Each failure adds FailureWeight (1): one phantom request in flight.
//   - The weight decays exponentially with time constant FailureWeightDecay
//     (1s), so an endpoint that stopped failing is back at full score within
//     a few seconds even if nothing is sent to it, and a dead one is tried
//     again about once per decay time per request its peers carry. In the
//     steady state a fast-failing endpoint gets about one request in
//     (peers' latency / 1s) of a fair share: 0.1% of its share for peers
//     answering in 1ms.
//   - A success halves it: one occasional failure among successes leaves
//     almost nothing (a 1% error rate costs an endpoint no traffic to
//     speak of), while an endpoint that fails every request accumulates one
//     unit per failure. An endpoint failing half its requests carries
//     between one and two phantom requests.
//   - Under 1/64 it is cleared: the word is zero again and picks stop
//     reading the clock for it.
//
// The weight lives in one atomic word on the Endpoint (like peak EWMA's
// state, so it survives picker rebuilds): a float32 weight and the time of
// its last update in milliseconds. A pick on endpoints with no weight reads
// the word once and nothing else (no clock, no lock, no allocation); only when
// a sampled endpoint carries weight does the pick read the clock
// (BuildInfo.Now, injectable) to decay it. Engine.Done updates the word for
// failures and for outcomes on endpoints that carry weight, with the
// outcome's time (outcome.Outcome.At, or the engine's clock).
//
// Peak EWMA adds PeakEWMA.FailurePenalty (a latency) per unit of the same
// weight to an endpoint's cost. Round robin, random and the hashing
// algorithms do not score endpoints; failure accrual (the default outlier
// detection, see Config.FailureAccrual) takes a dead endpoint out of them.
const (
	// FailureWeight is the weight a failed outcome adds to its endpoint, in
	// requests in flight.
	FailureWeight = 1.0
	// FailureWeightDecay is the time constant of the weight's exponential
	// decay: after it, 1/e of the weight is left.
	FailureWeightDecay = time.Second
)

const (
	penaltyInvTauMs = 1 / (float64(FailureWeightDecay) / float64(time.Millisecond))
	penaltyFloor    = 1.0 / 64 // below this the weight is cleared
	penaltyCap      = 1 << 20  // a bound, far above any real in-flight count
)

// encodePenalty packs weight w (≥ penaltyFloor) as of ms into a word that is
// never zero.
func encodePenalty(w float64, ms uint32) uint64 {
	return uint64(math.Float32bits(float32(w)))<<32 | uint64(ms)
}

// penaltyAt returns the weight in word v (non-zero) decayed to nowMs.
func penaltyAt(v uint64, nowMs uint32) float64 {
	w := float64(math.Float32frombits(uint32(v >> 32)))
	if td := int32(nowMs - uint32(v)); td > 0 {
		w *= expNeg(float64(td) * penaltyInvTauMs)
	}
	return w
}

// notePenalty folds one counted outcome at nowMs into ep's weight: a failure
// adds FailureWeight, anything else halves what is there.
func (ep *Endpoint) notePenalty(failed bool, nowMs uint32) {
	for {
		old := ep.penalty.Load()
		if old == 0 && !failed {
			return
		}
		w, stamp := 0.0, nowMs
		if old != 0 {
			w = penaltyAt(old, nowMs)
			if int32(nowMs-uint32(old)) < 0 { // a later update got in first
				stamp = uint32(old)
			}
		}
		if failed {
			w = min(w+FailureWeight, penaltyCap)
		} else {
			w /= 2
		}
		var nv uint64
		if w >= penaltyFloor {
			nv = encodePenalty(w, stamp)
		}
		if ep.penalty.CompareAndSwap(old, nv) {
			return
		}
	}
}

// FailureWeight returns the endpoint's failure weight at now (see
// FailureWeight, the constant): the requests in flight that least_request
// and bounded_load add to its real ones for its recent failures. 0 when it
// has none.
func (ep *Endpoint) FailureWeight(now time.Time) float64 {
	v := ep.penalty.Load()
	if v == 0 {
		return 0
	}
	return penaltyAt(v, ewmaClock(now.UnixNano()))
}

// returned is called when the endpoint becomes eligible again after a
// condition (ejection, failed health check, open breaker, pause, lost
// connection): peak EWMA forgets the latency it learnt before, failure
// penalties included, so that the endpoint is tried at once, as a new one is,
// and its first outcome sets its cost. (Otherwise a penalty of 1s decaying
// with a 10s time constant would keep a recovered endpoint out for a minute
// or more.) If it still fails, that first outcome puts the penalty back.
// The failure weight is left to decay on its own: it is gone within seconds.
func (ep *Endpoint) returned() { ep.ewma.Store(0) }

// failed is Done's slow path, for a failure or an outcome on an endpoint
// that carries failure weight: it updates the weight and feeds the
// protections (which, without an interval detector, need to see only these
// outcomes: see mode.recordAll).
//
//go:noinline
func (e *Engine) failed(m *mode, ep *Endpoint, o outcome.Outcome) {
	if o.Class.Counted() {
		at := o.At
		if at.IsZero() {
			at = e.opts.Now()
		}
		ep.notePenalty(o.Class.Failure(), ewmaClock(at.UnixNano()))
	}
	if m.detector != nil || m.breakers {
		e.record(m, ep, o)
	}
}

// weightClock reads the clock for a pick, once, and only if a sampled
// endpoint carries failure weight.
type weightClock struct {
	now func() time.Time
	ms  uint32
	ok  bool
}

// weight returns ep's failure weight, reading the clock on first need. The
// common case, no weight, inlines into the pick.
func (c *weightClock) weight(ep *Endpoint) float64 {
	if v := ep.penalty.Load(); v != 0 {
		return c.decayed(v)
	}
	return 0
}

// decayed returns the weight in word v (non-zero) at the pick's time.
func (c *weightClock) decayed(v uint64) float64 {
	if !c.ok {
		now := time.Now
		if c.now != nil {
			now = c.now
		}
		c.ms, c.ok = ewmaClock(now().UnixNano()), true
	}
	return penaltyAt(v, c.ms)
}
