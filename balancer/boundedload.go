package balancer

import (
	"math"
	"time"
)

func init() { Register("bounded_load", func() Algorithm { return &BoundedLoad{} }) }

// BoundedLoad is consistent hashing with bounded loads (Mirrokni, Thorup and
// Zadimoghaddam, 2018; the scheme HAProxy and Vimeo use): a key goes to its
// endpoint on a hash ring as with ring_hash, unless that endpoint already has
// ⌈Balance × average in-flight⌉ requests, in which case the request walks on
// along the ring to the first endpoint under the cap. Use it for cache affinity
// when some keys are hot: a hot key spills to the next endpoints instead of
// overloading one, and affinity holds for every key while load is even.
//
// The cap counts this request: with T requests in flight on the engine
// (including it) and N endpoints, no endpoint is given a request that takes it
// above ⌈Balance·T·wᵢ/W⌉ (wᵢ/W its share of the weights; 1/N when weights are
// equal). The cap holds under concurrency: the engine's total is counted before
// an endpoint is claimed, and claims are compare-and-swap (Endpoint.TryAcquire).
// A pick costs a ring lookup plus one atomic add on the engine-wide total; each
// full endpoint on the walk costs one more compare.
//
// An endpoint's recent failures count against its cap as requests in flight
// (its failure weight, see FailureWeight): an endpoint that fails fast takes
// fewer requests, and a key whose endpoint keeps failing spills to the next
// one on the ring.
//
// JSON name "bounded_load"; options in JSON:
// {"balance": 1.25, "pointsPerEndpoint": 100, "fallback": "random"}.
type BoundedLoad struct {
	// Balance is c, the factor over the average load an endpoint may carry.
	// 0 means the default, 1.25. Valid [1, 100].
	Balance float64 `json:"balance,omitempty" range:"[1, 100]"`
	// PointsPerEndpoint is how many ring points an endpoint of average weight
	// gets; the cap, not the ring, does the balancing, so fewer than ring_hash
	// needs. Default 100; valid 1-65536.
	PointsPerEndpoint int `json:"pointsPerEndpoint,omitempty" range:"[1, 65536]"`
	// Fallback is where a request without an affinity key starts: "random" (the
	// default: a random point of the ring) or "round_robin" (endpoints in turn);
	// the cap applies to it too.
	Fallback string `json:"fallback,omitempty"`
}

// Name returns "bounded_load".
func (*BoundedLoad) Name() string { return "bounded_load" }

// CountsTotalInFlight marks BoundedLoad as TotalCounting.
func (*BoundedLoad) CountsTotalInFlight() {}

// Validate checks every field.
func (a *BoundedLoad) Validate() error {
	if err := CheckRanges(a); err != nil {
		return err
	}
	return validateFallback(a.Fallback)
}

// Build returns a bounded-load picker over info.Endpoints.
func (a *BoundedLoad) Build(info BuildInfo) Picker {
	c, per := a.Balance, a.PointsPerEndpoint
	if c == 0 {
		c = 1.25
	}
	if per == 0 {
		per = 100
	}
	var wsum float64
	for _, ep := range info.Endpoints {
		wsum += float64(ep.Weight())
	}
	share := make([]float64, len(info.Endpoints))
	for i, ep := range info.Endpoints {
		share[i] = c * float64(ep.Weight()) / wsum
	}
	counts := ringPoints(info.Endpoints, per, 1, maxRingSize)
	add := info.AddTotalInFlight
	if add == nil {
		add = sumInFlight(info.Endpoints)
	}
	var p boundedPicker
	if len(info.Endpoints) <= 1<<16 {
		p = &blPicker[uint16]{ring: buildRing[uint16](info.Endpoints, counts), share: share, add: add}
	} else {
		p = &blPicker[uint32]{ring: buildRing[uint32](info.Endpoints, counts), share: share, add: add}
	}
	p.initKeyless(a.Fallback, info, info.Now)
	return p
}

// sumInFlight stands in for the engine's total when a picker is built without
// one (outside an engine that knows BoundedLoad is TotalCounting, for example
// by a wrapping algorithm): it sums the endpoints' counts, which costs O(n).
func sumInFlight(eps []*Endpoint) func(int64) int64 {
	return func(delta int64) int64 {
		t := delta
		for _, ep := range eps {
			t += ep.inflight.Load()
		}
		return t
	}
}

type boundedPicker interface {
	SelfCounting
	initKeyless(mode string, info BuildInfo, now func() time.Time)
}

type blPicker[T owner] struct {
	*ring[T]
	keyless
	share []float64         // c·wᵢ/W per endpoint
	add   func(int64) int64 // the engine's total in flight
	now   func() time.Time  // for failure weights
}

func (p *blPicker[T]) initKeyless(mode string, info BuildInfo, now func() time.Time) {
	p.keyless.init(mode, info)
	p.now = now
}

// tryAcquire claims ep if its requests in flight plus its failure weight stay
// within limit.
func (p *blPicker[T]) tryAcquire(ep *Endpoint, limit int64, clk *weightClock) bool {
	if ep.penalty.Load() != 0 {
		limit -= int64(clk.weight(ep))
	}
	return ep.TryAcquire(limit)
}

// CountsInFlight marks the picker as SelfCounting.
func (p *blPicker[T]) CountsInFlight() {}

// maxWalks bounds the passes over the ring a pick makes before it takes its
// first candidate regardless of the cap. A pass fails only if, while it walks,
// every endpoint reaches the cap, which needs other picks to raise the total
// (and so the cap) meanwhile; each new pass reads the higher total.
const maxWalks = 64

func (p *blPicker[T]) Pick(info PickInfo) (*Endpoint, error) {
	total := float64(p.add(1))
	clk := weightClock{now: p.now}
	if !info.HasHash && p.rr {
		i := p.index()
		for range maxWalks {
			for range p.n {
				if ep := p.eps[i]; p.tryAcquire(ep, int64(math.Ceil(total*p.share[i])), &clk) {
					return ep, nil
				}
				if i++; i == p.n {
					i = 0
				}
			}
			total = float64(p.add(0))
		}
		p.eps[i].Acquire()
		return p.eps[i], nil
	}
	h := info.Hash
	if !info.HasHash {
		h = p.rand()
	}
	start := p.find(h)
	for range maxWalks {
		i := start
		for range len(p.hashes) {
			o := p.owners[i]
			if p.tryAcquire(p.eps[o], int64(math.Ceil(total*p.share[o])), &clk) {
				return p.eps[o], nil
			}
			if i++; i == len(p.hashes) {
				i = 0
			}
		}
		total = float64(p.add(0))
	}
	ep := p.eps[p.owners[start]]
	ep.Acquire()
	return ep, nil
}
