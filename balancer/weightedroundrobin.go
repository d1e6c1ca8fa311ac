package balancer

import (
	"math"
	"sync/atomic"
)

func init() {
	Register("weighted_round_robin", func() Algorithm { return &WeightedRoundRobin{} })
}

// WeightedRoundRobin sends each endpoint a share of requests proportional to its
// static weight (resolver.Endpoint.Weight), interleaved smoothly: with weights
// 5, 1, 1 the order is A A A B C A A, never A A A A A B C. Use it when endpoints
// differ in capacity by a known ratio (bigger machines, canaries at a fixed
// share) and requests cost about the same. With equal weights it is plain round
// robin, at the same cost.
//
// The order is an earliest-deadline-first schedule (endpoint i's k-th turn falls
// at (k+½)/wᵢ, ties to the lower address), computed once per endpoint set into a
// table that picks walk with one atomic counter: no lock, cost independent of
// the number of endpoints. Weights are reduced by their greatest common divisor;
// a table whose period would exceed max(65536, 8·endpoints) entries is scaled
// down to that, keeping every endpoint at least one turn (shares then round to
// within 1/(period/endpoints) of exact).
//
// JSON name "weighted_round_robin"; options: {"slowStart": {...}}.
type WeightedRoundRobin struct {
	// SlowStart ramps new and returning endpoints up (see SlowStart). Default off.
	SlowStart SlowStart `json:"slowStart,omitzero"`
}

// Name returns "weighted_round_robin".
func (*WeightedRoundRobin) Name() string { return "weighted_round_robin" }

// Validate checks SlowStart.
func (a *WeightedRoundRobin) Validate() error { return a.SlowStart.Validate() }

// Build returns a weighted round robin picker over info.Endpoints.
func (a *WeightedRoundRobin) Build(info BuildInfo) Picker {
	ss := newSlowStart(a.SlowStart, info)
	weights := make([]uint64, len(info.Endpoints))
	equal := true
	for i, ep := range info.Endpoints {
		weights[i] = uint64(ep.Weight())
		equal = equal && weights[i] == weights[0]
	}
	if equal {
		return newRRPicker(info, ss)
	}
	seq := edfSequence(weights, max(1<<16, 8*len(weights)))
	p := &wrrPicker{eps: info.Endpoints, seq: seq, n: uint32(len(seq)), ss: ss}
	p.next.Store(uint32(info.Rand() % uint64(p.n)))
	return p
}

type wrrPicker struct {
	eps  []*Endpoint
	seq  []uint32 // one period of the schedule, as indexes into eps
	n    uint32
	ss   *slowStart
	next atomic.Uint32
}

func (p *wrrPicker) Pick(PickInfo) (*Endpoint, error) {
	ep := p.eps[p.seq[(p.next.Add(1)-1)%p.n]]
	if p.ss != nil {
		return p.ramp(ep), nil
	}
	return ep, nil
}

func (p *wrrPicker) ramp(ep *Endpoint) *Endpoint {
	now, ok := p.ss.active()
	if !ok {
		return ep
	}
	for range maxRejects {
		if p.ss.accept(p.ss.factor(ep, now)) {
			break
		}
		ep = p.eps[p.seq[(p.next.Add(1)-1)%p.n]]
	}
	return ep
}

// edfSequence returns one period of the smooth weighted schedule for weights
// (each ≥ 1): sum(weights) entries after reduction by their gcd, or about limit
// entries when the sum exceeds limit.
func edfSequence(weights []uint64, limit int) []uint32 {
	g := weights[0]
	var sum uint64
	for _, w := range weights {
		g = gcd(g, w)
	}
	w := make([]uint64, len(weights))
	for i := range weights {
		w[i] = weights[i] / g
		sum += w[i]
	}
	if sum > uint64(limit) {
		scale := float64(limit) / float64(sum)
		sum = 0
		for i := range w {
			w[i] = max(1, uint64(math.Round(float64(w[i])*scale)))
			sum += w[i]
		}
	}
	// Endpoint i's k-th turn is due at (2k+1)/(2wᵢ). A binary heap on that
	// deadline, compared exactly as (2kₐ+1)·w_b < (2k_b+1)·wₐ.
	turns := make([]uint64, len(w))
	heap := make([]uint32, len(w))
	for i := range heap {
		heap[i] = uint32(i)
	}
	less := func(a, b uint32) bool {
		l, r := (2*turns[a]+1)*w[b], (2*turns[b]+1)*w[a]
		return l < r || (l == r && a < b)
	}
	down := func(i int) {
		n := len(heap)
		for {
			c := 2*i + 1
			if c >= n {
				return
			}
			if c+1 < n && less(heap[c+1], heap[c]) {
				c++
			}
			if !less(heap[c], heap[i]) {
				return
			}
			heap[i], heap[c] = heap[c], heap[i]
			i = c
		}
	}
	for i := len(heap)/2 - 1; i >= 0; i-- {
		down(i)
	}
	seq := make([]uint32, sum)
	for k := range seq {
		top := heap[0]
		seq[k] = top
		turns[top]++
		down(0)
	}
	return seq
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
