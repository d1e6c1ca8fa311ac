package balancer

import (
	"math"
	"time"
)

func init() { Register("least_request", func() Algorithm { return &LeastRequest{} }) }

// LeastRequest samples ChoiceCount eligible endpoints at random and sends the
// request to the one with the fewest requests in flight (the "power of two
// choices"). Use it when request costs vary or endpoints differ in speed: it
// steers away from busy endpoints at the cost of one extra random draw, and unlike
// a full scan it never herds every client onto the same idle endpoint.
//
// When endpoint weights differ (or an endpoint ramps under SlowStart), each
// candidate is drawn in proportion to its effective weight (static weight,
// from an alias table, times its slow-start factor, by rejection) and the
// less loaded one wins, its load being its requests in flight divided by its
// weight^(1/ActiveRequestBias). The win is soft below one request of
// difference (counted in requests of the lighter endpoint): a gap g takes the
// pick with probability g. So at zero load every draw is a tie and shares are
// the weights exactly; at low concurrency one request in flight does not
// tip the shares (they stay within 3 points of the weights and of the
// slow-start ramp at 0 to 40 requests open); and under load the less loaded
// endpoint wins, as in the equal-weight case. Envoy scores weight /
// (inflight+1)^bias through a locked EDF scheduler; lodestar keeps the pick
// lock-free, and its shares, unlike that score's, stay on the weights when
// in-flight counts are small.
//
// An endpoint's recent failures count as requests in flight (its failure
// weight, see FailureWeight), so an endpoint that fails fast looks busy, not
// idle: without it, a backend refusing connections wins every comparison.
//
// JSON name "least_request".
type LeastRequest struct {
	// ChoiceCount is how many endpoints are sampled per pick (Envoy's
	// choice_count). Default 2; valid 2-100.
	ChoiceCount int `json:"choiceCount,omitempty" range:"[2, 100]"`
	// ActiveRequestBias is how strongly in-flight requests count against a
	// weighted endpoint (after Envoy's active_request_bias): 0 ignores them
	// (weighted random), 1 compares inflight/weight, b compares
	// inflight/weight^(1/b), so above 1 the weights count less against load.
	// nil means the default, 1.0. Valid 0-100. Used only when weights differ
	// or an endpoint ramps.
	ActiveRequestBias *float64 `json:"activeRequestBias,omitempty" range:"[0, 100]"`
	// SlowStart ramps new and returning endpoints up (see SlowStart). Default off.
	SlowStart SlowStart `json:"slowStart,omitzero"`
}

// Name returns "least_request".
func (*LeastRequest) Name() string { return "least_request" }

// Validate checks ChoiceCount, ActiveRequestBias and SlowStart.
func (a *LeastRequest) Validate() error {
	if err := CheckRanges(a); err != nil {
		return err
	}
	return a.SlowStart.Validate()
}

// Build returns a least-request picker over info.Endpoints.
func (a *LeastRequest) Build(info BuildInfo) Picker {
	k := a.ChoiceCount
	if k == 0 {
		k = 2
	}
	p := &lrPicker{eps: info.Endpoints, n: uint64(len(info.Endpoints)), choices: k, rand: info.Rand,
		bias: 1, ss: newSlowStart(a.SlowStart, info), now: info.Now}
	if a.ActiveRequestBias != nil {
		p.bias = *a.ActiveRequestBias
	}
	eps := info.Endpoints
	weights := make([]uint64, len(eps))
	var sum uint64
	for i, ep := range eps {
		weights[i] = uint64(ep.Weight())
		sum += weights[i]
		p.weighted = p.weighted || weights[i] != weights[0]
	}
	if !p.weighted && p.ss == nil {
		return p // always the plain form
	}
	p.oldest = eps[0]
	for _, ep := range eps {
		if ep.since.Load() < p.oldest.since.Load() {
			p.oldest = ep
		}
	}
	if p.weighted {
		p.prob, p.alias = aliasTable(weights, sum)
	}
	p.norm = make([]float64, len(eps))
	for i, w := range weights {
		switch p.bias {
		case 0, 1:
			p.norm[i] = float64(w)
		default:
			p.norm[i] = math.Pow(float64(w), 1/p.bias)
		}
	}
	return p
}

type lrPicker struct {
	eps      []*Endpoint
	n        uint64
	choices  int
	rand     func() uint64
	weighted bool    // weights differ
	bias     float64 // active request bias
	ss       *slowStart
	now      func() time.Time // for failure weights
	// For the weighted form (weights differ, or slow start is on): Vose's
	// alias table over the static weights (nil when they are equal), and each
	// endpoint's static weight raised to 1/bias, its load normalizer.
	prob  []uint32
	alias []uint32
	norm  []float64
	// oldest is the endpoint eligible longest: it has the largest slow-start
	// factor.
	oldest *Endpoint
}

func (p *lrPicker) Pick(PickInfo) (*Endpoint, error) {
	if p.n == 1 {
		return p.eps[0], nil
	}
	if p.weighted || p.ss != nil {
		return p.pickWeighted(), nil
	}
	return p.pickPlain(), nil
}

// pickPlain keeps the sampled endpoint with the fewest requests in flight.
func (p *lrPicker) pickPlain() *Endpoint {
	r := p.rand()
	// Two distinct indexes from one draw: i in [0,n), j in [0,n) \ {i}.
	i := fastrange(uint32(r), p.n)
	j := fastrange(uint32(r>>32), p.n-1)
	if j >= i {
		j++
	}
	best := p.eps[i]
	c := p.eps[j]
	if best.penalty.Load()|c.penalty.Load() != 0 || p.choices > 2 {
		return p.pickLoaded(best, c)
	}
	if c.inflight.Load() < best.inflight.Load() {
		best = c
	}
	return best
}

// pickLoaded is pickPlain when a sampled endpoint carries failure weight, or
// more than two are sampled: it compares requests in flight plus failure
// weight.
func (p *lrPicker) pickLoaded(best, c *Endpoint) *Endpoint {
	clk := weightClock{now: p.now}
	bestLoad := float64(best.inflight.Load()) + clk.weight(best)
	for k := 1; ; k++ {
		if l := float64(c.inflight.Load()) + clk.weight(c); l < bestLoad {
			best, bestLoad = c, l
		}
		if k+1 >= p.choices {
			return best
		}
		c = p.eps[fastrange(uint32(p.rand()), p.n)]
	}
}

// pickWeighted draws each candidate in proportion to its effective weight
// (static weight from the alias table, times its slow-start factor by
// rejection), then keeps the least loaded by normalized load, softly: see
// prefer. At zero load every comparison is a tie and the first draw wins, so
// shares follow the effective weights exactly; under load the less loaded
// endpoint wins, as in the plain form.
func (p *lrPicker) pickWeighted() *Endpoint {
	now, ramping := int64(0), false
	if p.ss != nil {
		now, ramping = p.ss.active()
	}
	if !p.weighted && !ramping {
		return p.pickPlain()
	}
	clk := weightClock{now: p.now}
	fmax := 1.0
	if ramping {
		fmax = p.ss.factor(p.oldest, now)
	}
	best, bw := p.draw(now, ramping, fmax)
	for k := 1; k < p.choices; k++ {
		c, cw := p.draw(now, ramping, fmax)
		// A candidate with failure weight is not compared with itself: drawn
		// twice, a dead endpoint would win (its weight share)² of picks.
		for tries := 0; c == best && tries < maxRejects && best.penalty.Load() != 0; tries++ {
			c, cw = p.draw(now, ramping, fmax)
		}
		if c != best && p.prefer(best, bw, c, cw, &clk) {
			best, bw = c, cw
		}
	}
	return best
}

// draw returns an endpoint drawn in proportion to its effective weight, and
// that weight raised to 1/bias (its load normalizer). A ramping endpoint is
// accepted with probability factor/fmax, fmax being the largest factor of
// the set (the oldest endpoint's), so that a set ramping together costs no
// re-draws.
func (p *lrPicker) draw(now int64, ramping bool, fmax float64) (*Endpoint, float64) {
	for tries := 0; ; tries++ {
		r := p.rand()
		i := fastrange(uint32(r), p.n)
		if p.prob != nil && uint32(r>>32) >= p.prob[i] {
			i = uint64(p.alias[i])
		}
		ep := p.eps[i]
		if !ramping {
			return ep, p.norm[i]
		}
		f := p.ss.factor(ep, now)
		if tries+1 < maxRejects && f < fmax && !p.ss.accept(f/fmax) {
			continue
		}
		switch p.bias {
		case 1:
			return ep, p.norm[i] * f
		case 0:
			return ep, 1
		default:
			return ep, p.norm[i] * math.Pow(f, 1/p.bias)
		}
	}
}

// prefer reports whether candidate c (normalizer cw) takes the pick from best
// (normalizer bw). Each one's load is its requests in flight plus its failure
// weight, divided by its normalizer; c wins when it is less loaded by a gap g,
// counted in requests of the lighter of the two: with probability g, and
// certainly from one request up. The soft margin is what keeps shares on the
// weights at low concurrency: a single request in flight on a heavy endpoint
// would otherwise send every pick that samples a light one to it.
func (p *lrPicker) prefer(best *Endpoint, bw float64, c *Endpoint, cw float64, clk *weightClock) bool {
	if p.bias == 0 {
		return false
	}
	lb := float64(best.inflight.Load()) + clk.weight(best)
	lc := float64(c.inflight.Load()) + clk.weight(c)
	g := (lb/bw - lc/cw) * min(bw, cw)
	if g <= 0 {
		return false
	}
	return g >= 1 || float64(p.rand()>>11)*0x1p-53 < g
}

// fastrange maps a uniform 32-bit value onto [0, n) without a division
// (Lemire's multiply-shift), for n < 2^32.
func fastrange(x uint32, n uint64) uint64 { return (uint64(x) * n) >> 32 }
