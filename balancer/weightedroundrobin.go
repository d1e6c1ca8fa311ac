package balancer

import (
	"math"
)

func init() {
	Register("weighted_round_robin", func() Algorithm { return &WeightedRoundRobin{} })
}

// WeightedRoundRobin sends each endpoint a share of requests proportional to its
// static weight (resolver.Endpoint.Weight), interleaved smoothly: with weights
// 5, 1, 1 the order is A A B A A A C, then again, never A A A A A B C, and
// the heaviest endpoint's longest run of consecutive picks (across periods too)
// is the shortest possible, ⌈w/r⌉ for weight w against the others' total r (3
// here; 2 for weights 1, 2, 3, 10). Use it when endpoints
// differ in capacity by a known ratio (bigger machines, canaries at a fixed
// share) and requests cost about the same. With equal weights it is plain round
// robin, at the same cost.
//
// The order is an earliest-deadline-first schedule of every endpoint but the
// heaviest (endpoint i's k-th turn falls at (k+½)/wᵢ, ties to the lower
// address), with the heaviest endpoint's turns then spread over its gaps as
// evenly as they divide (an EDF schedule alone lets the heaviest run on from
// the end of one period into the next: A A A B C A A | A A A B C A A has a run
// of 5), computed once per endpoint set (in
// linear time) into a table that picks walk with one atomic counter: no lock,
// cost independent of the number of endpoints. Weights are reduced by their greatest common divisor;
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
		return newRRPicker(info.Endpoints, info.Rand, ss)
	}
	// One period of the schedule, as the endpoints themselves: a pick is then
	// exactly a round robin pick over it.
	seq := edfSequence(weights, max(1<<16, 8*len(weights)))
	cycle := make([]*Endpoint, len(seq))
	for i, x := range seq {
		cycle[i] = info.Endpoints[x]
	}
	return newRRPicker(cycle, info.Rand, ss)
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
	// The heaviest endpoint (the first of equals) is spread over the others'
	// schedule afterwards: its W turns go into the R gaps before each of the
	// others' turns, ⌊(j+1)W/R⌋ − ⌊jW/R⌋ into gap j, so that its runs, across
	// periods too, are ⌈W/R⌉ at most, the fewest possible.
	h := 0
	for i := range w {
		if w[i] > w[h] {
			h = i
		}
	}
	heavy := w[h]
	rest := sum - heavy
	if rest == 0 {
		return make([]uint32, sum) // one endpoint (index 0)
	}
	w[h] = 0
	others := edfOrder(w, rest)
	seq := make([]uint32, 0, sum)
	for j := range rest {
		for range (j+1)*heavy/rest - j*heavy/rest {
			seq = append(seq, uint32(h))
		}
		seq = append(seq, others[j])
	}
	return seq
}

// edfOrder returns the earliest-deadline-first order of the turns of weights
// w (some may be 0), sum being their total.
func edfOrder(w []uint64, sum uint64) []uint32 {
	// Endpoint i's k-th turn (k = 0 ... wᵢ-1) is due at (2k+1)/(2wᵢ), in (0, 1);
	// the period is every turn in order of due time, ties to the lower index.
	// Due times are spread over (0, 1), so a bucket sort on them (one bucket a
	// turn) with an insertion sort within buckets orders them in linear time.
	// Each due time is one correctly rounded division, so equal fractions
	// compare equal.
	type turn struct {
		due float64
		i   uint32
	}
	n := float64(sum)
	bucket := func(due float64) int { return min(int(due*n), int(sum)-1) }
	start := make([]uint32, sum+1)
	for i := range w {
		for k := range w[i] {
			start[bucket(float64(2*k+1)/float64(2*w[i]))+1]++
		}
	}
	for b := 1; b < len(start); b++ {
		start[b] += start[b-1]
	}
	turns := make([]turn, sum)
	next := make([]uint32, sum)
	copy(next, start)
	for i := range w {
		for k := range w[i] {
			due := float64(2*k+1) / float64(2*w[i])
			b := bucket(due)
			turns[next[b]] = turn{due, uint32(i)}
			next[b]++
		}
	}
	seq := make([]uint32, sum)
	for b := range int(sum) {
		lo, hi := int(start[b]), int(start[b+1])
		for x := lo + 1; x < hi; x++ { // turns of one endpoint arrive in order
			t := turns[x]
			y := x
			for ; y > lo && (turns[y-1].due > t.due || turns[y-1].due == t.due && turns[y-1].i > t.i); y-- {
				turns[y] = turns[y-1]
			}
			turns[y] = t
		}
		for x := lo; x < hi; x++ {
			seq[x] = turns[x].i
		}
	}
	return seq
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
