package balancer

import (
	"math"
	"sync/atomic"
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
// A request without an affinity key does not touch the ring: it goes to an
// endpoint drawn in proportion to weight (uniformly when weights are equal),
// by the Fallback option, and is redrawn while the drawn endpoint is at its
// cap, so keyless traffic is as even as the endpoints' weights (a random point
// of the ring, as before, would follow the ring's uneven arcs: the busiest of
// 100 endpoints got 1.24× the mean).
//
// The ring is kept across eligibility changes and updated for joins and
// leaves, as ring_hash's is: the walk skips ineligible endpoints, and the
// caps are the eligible endpoints' shares, recomputed (O(n)) per snapshot.
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
	// Fallback is where a request without an affinity key goes: "random" (the
	// default: an endpoint drawn at random with probability proportional to its
	// weight) or "round_robin" (endpoints in turn, as weighted_round_robin
	// interleaves them when weights differ). The cap applies to it too: an
	// endpoint at its cap is passed over for another draw or the next turn.
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

// Build returns a bounded-load picker over info.Endpoints, its ring over
// info.Members (info.Endpoints when Members is not set).
func (a *BoundedLoad) Build(info BuildInfo) Picker {
	members := membersOf(info)
	per := a.PointsPerEndpoint
	if per == 0 {
		per = 100
	}
	counts := ringPoints(members, per, 1, maxRingSize)
	if len(members) <= maxOwners[uint16]() {
		return newBLPicker(a, newHashTable[uint16](members, counts), info)
	}
	return newBLPicker(a, newHashTable[uint32](members, counts), info)
}

func newBLPicker[T owner](a *BoundedLoad, t *hashTable[T], info BuildInfo) Picker {
	v, ok := t.view(info.Endpoints)
	if !ok { // an eligible endpoint outside Members: build over both
		return a.Build(BuildInfo{Endpoints: info.Endpoints, Now: info.Now, Rand: info.Rand, AddTotalInFlight: info.AddTotalInFlight})
	}
	c := a.Balance
	if c == 0 {
		c = 1.25
	}
	var wsum float64
	for _, ep := range info.Endpoints {
		wsum += float64(ep.Weight())
	}
	share := make([]float64, len(t.eps))
	for e, ep := range info.Endpoints {
		share[v.eidx[e]] = c * float64(ep.Weight()) / wsum
	}
	add := info.AddTotalInFlight
	if add == nil {
		add = sumInFlight(info.Endpoints)
	}
	p := &blPicker[T]{alg: a, hashView: v, share: share, add: add, now: info.Now}
	p.blKeyless.init(a.Fallback, info)
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

type blPicker[T owner] struct {
	alg *BoundedLoad
	hashView[T]
	blKeyless
	share []float64         // c·wᵢ/W by index in eps (W: the eligible endpoints' weights)
	add   func(int64) int64 // the engine's total in flight
	now   func() time.Time  // for failure weights
}

// Update keeps the ring for a new eligible set, and updates it for new
// members (see hashTable): an ejection or a readmission builds no ring.
func (p *blPicker[T]) Update(info BuildInfo) Picker {
	members := membersOf(info)
	t, ok := p.hashTable.update(members)
	if !ok {
		return p.alg.Build(info)
	}
	return newBLPicker(p.alg, t, info)
}

// blKeyless is where bounded_load sends a request without an affinity key:
// endpoint i with probability wᵢ/W, drawn directly (not through the ring, whose
// arcs are uneven: with 100 points an endpoint, a random point of the ring gave
// the busiest of 100 endpoints 1.24× the mean). Random draws one uniform value
// (with unequal weights, into Vose's alias table); round robin takes the next
// turn of a shared counter (with unequal weights, of weighted_round_robin's
// smooth schedule). Both are O(1) and allocation-free.
type blKeyless struct {
	eps   []*Endpoint
	n     uint64
	rand  func() uint64
	rr    bool
	prob  []uint32 // random, unequal weights: the alias table (see aliasPicker)
	alias []uint32
	seq   []uint32 // round robin, unequal weights: one period of the schedule
	nseq  uint64
	_     [64]byte // next, written by every keyless pick under round robin, on a line of its own
	next  atomic.Uint64
	_     [56]byte
}

func (k *blKeyless) init(mode string, info BuildInfo) {
	k.eps, k.n, k.rand, k.rr = info.Endpoints, uint64(len(info.Endpoints)), info.Rand, mode == FallbackRoundRobin
	weights := make([]uint64, k.n)
	var sum uint64
	equal := true
	for i, ep := range k.eps {
		weights[i] = uint64(max(ep.Weight(), 1))
		sum += weights[i]
		equal = equal && weights[i] == weights[0]
	}
	switch {
	case equal:
	case k.rr:
		k.seq = edfSequence(weights, max(1<<16, 8*len(weights)))
		k.nseq = uint64(len(k.seq))
	default:
		k.prob, k.alias = aliasTable(weights, sum)
	}
	if k.rr {
		k.next.Store(info.Rand())
	}
}

// draw returns the index of the endpoint a keyless request tries next.
func (k *blKeyless) draw() uint64 {
	if k.rr {
		c := k.next.Add(1) - 1
		if k.seq != nil {
			return uint64(k.seq[c%k.nseq])
		}
		return c % k.n
	}
	r := k.rand()
	i := fastrange(uint32(r), k.n)
	if k.prob != nil && uint32(r>>32) >= k.prob[i] {
		i = uint64(k.alias[i])
	}
	return i
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

// keylessDraws is how many draws a keyless pick makes before it walks the
// endpoints in index order. Redrawing when the drawn endpoint is at its cap
// keeps the choice proportional to weight among those under it (rejection
// sampling); the walk would favour the endpoint just after a full one. With a
// fraction f of the weight at the cap every draw misses with probability
// f³², which is under 0.1% at f = 0.8, the most the default balance of 1.25
// allows without failure weights (8 draws were measurably biased: with the
// weight-10 endpoint of 1:2:3:10 held full, the weight-1 endpoint got 17.9%
// instead of 16.7%). A draw costs a random number and a load of the drawn
// endpoint's count, so even all 32 cost less than a walk over many endpoints.
const keylessDraws = 32

func (p *blPicker[T]) Pick(info PickInfo) (*Endpoint, error) {
	total := float64(p.add(1))
	clk := weightClock{now: p.now}
	if !info.HasHash {
		return p.pickKeyless(total, &clk), nil
	}
	var got *Endpoint
	for range maxWalks {
		if p.walk(info.Hash, func(i T) bool {
			if ep := p.hashView.eps[i]; p.tryAcquire(ep, int64(math.Ceil(total*p.share[i])), &clk) {
				got = ep
				return true
			}
			return false
		}) {
			return got, nil
		}
		total = float64(p.add(0))
	}
	ep := p.hashView.eps[p.successor(info.Hash)]
	ep.Acquire()
	return ep, nil
}

// pickKeyless claims an endpoint for a request without a key: drawn by weight,
// redrawn while the draw is at its cap, then walked in index order.
func (p *blPicker[T]) pickKeyless(total float64, clk *weightClock) *Endpoint {
	i := p.draw()
	for range keylessDraws {
		if ep := p.blKeyless.eps[i]; p.tryAcquire(ep, int64(math.Ceil(total*p.share[p.eidx[i]])), clk) {
			return ep
		}
		i = p.draw()
	}
	for range maxWalks {
		for range p.n {
			if ep := p.blKeyless.eps[i]; p.tryAcquire(ep, int64(math.Ceil(total*p.share[p.eidx[i]])), clk) {
				return ep
			}
			if i++; i == p.n {
				i = 0
			}
		}
		total = float64(p.add(0))
	}
	p.blKeyless.eps[i].Acquire()
	return p.blKeyless.eps[i]
}

// Lagging reports whether the ring carries enough dead points or joined
// members' points that a full build is due (see Lagging).
func (p *blPicker[T]) Lagging() bool { return p.lagging() }
