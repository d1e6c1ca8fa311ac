package balancer

import (
	"math"
	"time"

	"github.com/lodestar-go/lodestar/balancer/outcome"
)

func init() { Register("peak_ewma", func() Algorithm { return &PeakEWMA{} }) }

// PeakEWMA samples two eligible endpoints at random and sends the request to the
// one with the lower expected cost, a peak-sensitive moving average of its
// latency times its requests in flight plus one, divided by its weight (Finagle's
// and Linkerd's "peak EWMA"). Use it when endpoints differ in speed or slow down
// under load (GC pauses, noisy neighbours, a far zone): it reacts to a latency
// spike at once and forgets it over DecayTime, and it needs no configuration of
// capacities.
//
// The average is kept per endpoint (as one atomic word on the Endpoint, so it
// survives picker rebuilds) and updated from every outcome reported to
// Engine.Done: a latency above the average replaces it (the peak); a lower one is
// blended in with weight 1-e^(-Δt/DecayTime), Δt being the time since the last
// update. While an endpoint is idle its average decays toward zero, so an
// endpoint that was slow is tried again after a while. An endpoint with no
// outcome yet costs DefaultRTT, decaying from the time it was discovered; its
// first outcome replaces that guess. Canceled and unsent requests are ignored.
//
// A failure (a class that counts against the endpoint, see
// outcome.Class.Failure) is not a latency sample: it adds FailurePenalty times
// the endpoint's failure weight (see FailureWeight: one unit per failure,
// fading with a 1s time constant, halved by each success) to the endpoint's
// average. So an endpoint that fails fast does not attract traffic, and one
// that stopped failing is tried again within seconds, not after its penalty
// has decayed over DecayTime (a 1s penalty folded into a 10s average kept a
// recovered endpoint out for more than a minute).
//
// A pick over endpoints with no failure weight reads no clock at all: idle
// decay scales every endpoint's average by the same factor, so comparing two
// needs only the gap between their last updates. A pick that samples an
// endpoint with failure weight reads the clock (BuildInfo.Now) to decay it.
// Done needs the time of the outcome: pass outcome.Outcome.At, or the engine
// reads its clock.
//
// JSON name "peak_ewma"; options in JSON:
// {"decayTime": "10s", "defaultRTT": "30ms", "failurePenalty": "1s"}.
type PeakEWMA struct {
	// DecayTime is the time constant of the moving average: a latency observed
	// that long ago weighs 1/e of one observed now. 0 means the default, 10s.
	// Valid 1ms-1h.
	DecayTime time.Duration `json:"decayTime,omitempty" range:"[1ms, 1h]"`
	// DefaultRTT is the latency assumed for an endpoint with no outcome yet.
	// 0 means the default, 30ms. Valid 1µs-1m.
	DefaultRTT time.Duration `json:"defaultRTT,omitempty" range:"[1µs, 1m]"`
	// FailurePenalty is the latency one unit of failure weight adds to an
	// endpoint's cost: a fresh failure costs about this much, fading with
	// the weight. 0 means the default, 1s. Valid 1µs-1h.
	FailurePenalty time.Duration `json:"failurePenalty,omitempty" range:"[1µs, 1h]"`
}

// peakEWMAFields is PeakEWMA without its JSON methods, for the strict codec.
type peakEWMAFields PeakEWMA

// UnmarshalJSON reads the JSON form, as Config's doc describes: exact field
// names, durations as strings, written values range-checked.
func (a *PeakEWMA) UnmarshalJSON(js []byte) error {
	return decodeStrict(js, (*peakEWMAFields)(a))
}

// MarshalJSON writes the form UnmarshalJSON reads.
func (a PeakEWMA) MarshalJSON() ([]byte, error) {
	return encodeJSON((*peakEWMAFields)(&a))
}

// Name returns "peak_ewma".
func (*PeakEWMA) Name() string { return "peak_ewma" }

// Validate checks the durations.
func (a *PeakEWMA) Validate() error { return CheckRanges(a) }

func (a *PeakEWMA) params() ewmaParams {
	p := ewmaParams{tauMs: 10_000, def: float64(30 * time.Millisecond), penalty: float64(time.Second)}
	if a.DecayTime != 0 {
		p.tauMs = float64(a.DecayTime) / float64(time.Millisecond)
	}
	if a.DefaultRTT != 0 {
		p.def = float64(a.DefaultRTT)
	}
	if a.FailurePenalty != 0 {
		p.penalty = float64(a.FailurePenalty)
	}
	p.invTau = 1 / p.tauMs
	return p
}

// Observe folds a reported outcome into ep's moving average. The engine calls it
// from Done.
func (a *PeakEWMA) Observe(ep *Endpoint, o outcome.Outcome, now time.Time) {
	if !o.Class.Counted() || o.Class.Failure() { // failures go to the failure weight
		return
	}
	rtt := float64(max(o.Latency, 0))
	decayMs := 10_000.0
	if a.DecayTime != 0 {
		decayMs = float64(a.DecayTime) / float64(time.Millisecond)
	}
	def := float64(30 * time.Millisecond)
	if a.DefaultRTT != 0 {
		def = float64(a.DefaultRTT)
	}
	nowMs := ewmaClock(now.UnixNano())
	for {
		old := ep.ewma.Load()
		cost, stamp := decodeEWMA(old, def)
		if old == 0 || rtt > cost { // the first outcome replaces DefaultRTT
			cost = rtt
		} else if td := int32(nowMs - stamp); td > 0 {
			w := expNeg(float64(td) / decayMs)
			cost = cost*w + rtt*(1-w)
		} else {
			// Same millisecond (or a concurrent later update): the blend weight
			// 1-e^(-Δt/τ) is ~0; keep the average.
		}
		if ep.ewma.CompareAndSwap(old, encodeEWMA(cost, nowMs)) {
			return
		}
	}
}

// Build returns a peak EWMA picker over info.Endpoints.
func (a *PeakEWMA) Build(info BuildInfo) Picker {
	p := &ewmaPicker{eps: info.Endpoints, n: uint64(len(info.Endpoints)), rand: info.Rand, ewmaParams: a.params(), now: info.Now}
	for _, ep := range info.Endpoints {
		p.weighted = p.weighted || ep.Weight() != info.Endpoints[0].Weight()
	}
	return p
}

type ewmaParams struct {
	tauMs   float64 // decay time in ms
	invTau  float64 // 1/tauMs
	def     float64 // default RTT, ns
	penalty float64 // failure penalty, ns
}

// The state word: the cost in ns as a float32 in the high half, the time of the
// last update in ms since the Unix epoch mod 2^32 in the low half (gaps are
// read as signed 32-bit differences, right under 24 days). 0 means no outcome
// yet.
func encodeEWMA(cost float64, ms uint32) uint64 {
	c := math.Float32bits(float32(max(cost, 1)))
	return uint64(c)<<32 | uint64(ms)
}

// decodeEWMA returns the cost and time of state v, or def and 0 for no state.
func decodeEWMA(v uint64, def float64) (cost float64, ms uint32) {
	if v == 0 {
		return def, 0
	}
	return float64(math.Float32frombits(uint32(v >> 32))), uint32(v)
}

// expNeg returns e^(-x) for x ≥ 0 to a relative error below 1e-7, in about half
// math.Exp's time: 2^(-k)·e^(-y) with k = round(x·log₂e) and |y| ≤ ln2/2 done by
// a degree-7 Taylor polynomial.
func expNeg(x float64) float64 {
	t := x * math.Log2E
	if !(t < 1000) { // also NaN
		return 0
	}
	k := int64(t + 0.5)
	y := (t - float64(k)) * math.Ln2
	p := 1 - y*(1-y*(1.0/2-y*(1.0/6-y*(1.0/24-y*(1.0/120-y*(1.0/720-y*(1.0/5040)))))))
	return p * math.Float64frombits(uint64(1023-k)<<52)
}

// ewmaClock returns a time as ms since the Unix epoch, mod 2^32 (only
// differences under 24 days are read).
func ewmaClock(ns int64) uint32 { return uint32(uint64(ns) / uint64(time.Millisecond)) }

// state returns ep's average and the time of its last update; an endpoint with
// no outcome yet has def, as of its creation.
func (p *ewmaParams) state(ep *Endpoint) (cost float64, ms uint32) {
	v := ep.ewma.Load()
	if v == 0 {
		return p.def, ewmaClock(ep.epoch)
	}
	return decodeEWMA(v, p.def)
}

// load returns ep's cost at nowNs: its average decayed to now, times its
// requests in flight plus one, over its weight if weights differ. Picks compare
// loads without the clock (see Pick); this is for tests and inspection.
func (p *ewmaPicker) load(ep *Endpoint, nowNs int64) float64 {
	cost, stamp := p.state(ep)
	if td := int32(ewmaClock(nowNs) - stamp); td > 0 {
		cost *= expNeg(float64(td) * p.invTau)
	}
	if v := ep.penalty.Load(); v != 0 {
		cost += p.penalty * penaltyAt(v, ewmaClock(nowNs))
	}
	return p.undecayed(ep, cost)
}

// undecayed returns cost times ep's requests in flight plus one, over its
// weight if weights differ.
func (p *ewmaPicker) undecayed(ep *Endpoint, cost float64) float64 {
	l := cost * float64(ep.inflight.Load()+1)
	if p.weighted {
		l /= float64(ep.weight.Load())
	}
	return l
}

type ewmaPicker struct {
	eps      []*Endpoint
	n        uint64
	rand     func() uint64
	weighted bool
	now      func() time.Time // for failure weights
	ewmaParams
}

// Pick compares two endpoints' loads without reading the clock: decay while
// idle multiplies every average by e^(-(now-t)/τ), t being its last update, so
// the common factor e^(-now/τ) cancels and only the gap between the two last
// updates matters.
func (p *ewmaPicker) Pick(PickInfo) (*Endpoint, error) {
	if p.n == 1 {
		return p.eps[0], nil
	}
	r := p.rand()
	i := fastrange(uint32(r), p.n)
	j := fastrange(uint32(r>>32), p.n-1)
	if j >= i {
		j++
	}
	a, b := p.eps[i], p.eps[j]
	if a.penalty.Load()|b.penalty.Load() != 0 {
		return p.pickFailing(a, b), nil
	}
	ca, sa := p.state(a)
	cb, sb := p.state(b)
	la, lb := p.undecayed(a, ca), p.undecayed(b, cb)
	if d := int32(sb - sa); d > 0 { // a's average is older: decay it by the gap
		la *= expNeg(float64(d) * p.invTau)
	} else if d < 0 {
		lb *= expNeg(float64(-d) * p.invTau)
	}
	if lb < la {
		return b, nil
	}
	return a, nil
}

// pickFailing compares a and b when one carries failure weight: their costs at
// the clock's time, each with FailurePenalty × its weight added.
func (p *ewmaPicker) pickFailing(a, b *Endpoint) *Endpoint {
	now := time.Now
	if p.now != nil {
		now = p.now
	}
	ns := now().UnixNano()
	if p.load(b, ns) < p.load(a, ns) {
		return b
	}
	return a
}
