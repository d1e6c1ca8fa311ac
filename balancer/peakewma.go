package balancer

import (
	"encoding/json"
	"fmt"
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
// endpoint that was slow is tried again after a while. A failure (a class that
// counts against the endpoint, see outcome.Class.Failure) counts as a latency of
// at least FailurePenalty, so an endpoint that fails fast does not attract
// traffic; canceled and unsent requests are ignored. An endpoint with no
// outcome yet costs DefaultRTT, decaying from the time it was discovered; its
// first outcome replaces that guess.
//
// A pick reads the engine's clock once.
//
// JSON name "peak_ewma"; options in JSON:
// {"decayTime": "10s", "defaultRTT": "30ms", "failurePenalty": "1s"}.
type PeakEWMA struct {
	// DecayTime is the time constant of the moving average: a latency observed
	// that long ago weighs 1/e of one observed now. 0 means the default, 10s.
	// Valid 1ms-1h.
	DecayTime time.Duration
	// DefaultRTT is the latency assumed for an endpoint with no outcome yet.
	// 0 means the default, 30ms. Valid 1µs-1m.
	DefaultRTT time.Duration
	// FailurePenalty is the least latency a failed request counts as.
	// 0 means the default, 1s. Valid 1µs-1h.
	FailurePenalty time.Duration
}

type peakEWMAJSON struct {
	DecayTime      string `json:"decayTime,omitempty"`
	DefaultRTT     string `json:"defaultRTT,omitempty"`
	FailurePenalty string `json:"failurePenalty,omitempty"`
}

// UnmarshalJSON reads the JSON form, rejecting unknown fields.
func (a *PeakEWMA) UnmarshalJSON(js []byte) error {
	var raw peakEWMAJSON
	if err := decodeStrict(js, &raw); err != nil {
		return err
	}
	var na PeakEWMA
	for _, f := range []struct {
		name string
		s    string
		d    *time.Duration
	}{{"decayTime", raw.DecayTime, &na.DecayTime}, {"defaultRTT", raw.DefaultRTT, &na.DefaultRTT},
		{"failurePenalty", raw.FailurePenalty, &na.FailurePenalty}} {
		if f.s == "" {
			continue
		}
		d, err := time.ParseDuration(f.s)
		if err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
		*f.d = d
	}
	*a = na
	return nil
}

// MarshalJSON writes the form UnmarshalJSON reads.
func (a PeakEWMA) MarshalJSON() ([]byte, error) {
	str := func(d time.Duration) string {
		if d == 0 {
			return ""
		}
		return d.String()
	}
	return json.Marshal(peakEWMAJSON{str(a.DecayTime), str(a.DefaultRTT), str(a.FailurePenalty)})
}

// Name returns "peak_ewma".
func (*PeakEWMA) Name() string { return "peak_ewma" }

// Validate checks the durations.
func (a *PeakEWMA) Validate() error {
	for _, f := range []struct {
		name     string
		d        time.Duration
		min, max time.Duration
		rng      string
	}{
		{"decayTime", a.DecayTime, time.Millisecond, time.Hour, "[1ms, 1h]"},
		{"defaultRTT", a.DefaultRTT, time.Microsecond, time.Minute, "[1µs, 1m]"},
		{"failurePenalty", a.FailurePenalty, time.Microsecond, time.Hour, "[1µs, 1h]"},
	} {
		if f.d != 0 && (f.d < f.min || f.d > f.max) {
			return fmt.Errorf("%s: %v is out of range %s (0 means the default)", f.name, f.d, f.rng)
		}
	}
	return nil
}

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
	p.invTau = -1 / p.tauMs
	return p
}

// Observe folds a reported outcome into ep's moving average. The engine calls it
// from Done.
func (a *PeakEWMA) Observe(ep *Endpoint, o outcome.Outcome, now time.Time) {
	if !o.Class.Counted() {
		return
	}
	p := a.params()
	rtt := float64(max(o.Latency, 0))
	if o.Class.Failure() {
		rtt = max(rtt, p.penalty)
	}
	nowMs := ep.ewmaClock(now.UnixNano())
	for {
		old := ep.ewma.Load()
		cost, stamp := p.decode(old)
		if old == 0 || rtt > cost { // the first outcome replaces DefaultRTT
			cost = rtt
		} else if td := int32(nowMs - stamp); td > 0 {
			w := math.Exp(float64(td) * p.invTau)
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
	p := &ewmaPicker{eps: info.Endpoints, n: uint64(len(info.Endpoints)), rand: info.Rand, now: info.Now,
		ewmaParams: a.params()}
	for _, ep := range info.Endpoints {
		p.weighted = p.weighted || ep.Weight() != info.Endpoints[0].Weight()
	}
	return p
}

type ewmaParams struct {
	tauMs   float64 // decay time in ms
	invTau  float64 // -1/tauMs
	def     float64 // default RTT, ns
	penalty float64 // failure penalty, ns
}

// The state word: the cost in ns as a float32 in the high half, the time of the
// last update in ms since the endpoint's creation (mod 2^32: Δt is right for
// gaps under 49 days) in the low half. 0 means no outcome yet.
func encodeEWMA(cost float64, ms uint32) uint64 {
	c := math.Float32bits(float32(max(cost, 1)))
	return uint64(c)<<32 | uint64(ms)
}

func (p *ewmaParams) decode(v uint64) (cost float64, ms uint32) {
	if v == 0 {
		return p.def, 0
	}
	return float64(math.Float32frombits(uint32(v >> 32))), uint32(v)
}

// ewmaClock returns now as ms since the endpoint's creation, mod 2^32.
func (ep *Endpoint) ewmaClock(nowNs int64) uint32 {
	return uint32(max(nowNs-ep.epoch, 0) / int64(time.Millisecond))
}

// load returns ep's decayed cost times its requests in flight plus one.
func (p *ewmaPicker) load(ep *Endpoint, nowNs int64) float64 {
	cost, stamp := p.decode(ep.ewma.Load())
	if td := int32(ep.ewmaClock(nowNs) - stamp); td > 0 {
		cost *= math.Exp(float64(td) * p.invTau)
	}
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
	now      func() time.Time
	weighted bool
	ewmaParams
}

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
	now := p.now().UnixNano()
	a, b := p.eps[i], p.eps[j]
	if p.load(b, now) < p.load(a, now) {
		return b, nil
	}
	return a, nil
}
