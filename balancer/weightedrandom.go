package balancer

import "math/bits"

func init() { Register("weighted_random", func() Algorithm { return &WeightedRandom{} }) }

// WeightedRandom sends each request to an endpoint chosen at random with
// probability proportional to its static weight (resolver.Endpoint.Weight). Use
// it instead of weighted_round_robin when many clients share the endpoints and
// an exact interleaving is worth less than having no shared counter; with equal
// weights it is random.
//
// A pick is one random draw into Vose's alias table (built per endpoint set), so
// it costs the same at 10 and at 10,000 endpoints.
//
// JSON name "weighted_random"; it has no options.
type WeightedRandom struct{}

// Name returns "weighted_random".
func (*WeightedRandom) Name() string { return "weighted_random" }

// Validate always succeeds.
func (*WeightedRandom) Validate() error { return nil }

// Build returns a weighted random picker over info.Endpoints.
func (*WeightedRandom) Build(info BuildInfo) Picker {
	eps := info.Endpoints
	weights := make([]uint64, len(eps))
	var sum uint64
	equal := true
	for i, ep := range eps {
		weights[i] = uint64(ep.Weight())
		sum += weights[i]
		equal = equal && weights[i] == weights[0]
	}
	if equal {
		return &randomPicker{eps: eps, n: uint64(len(eps)), rand: info.Rand}
	}
	p := &aliasPicker{eps: eps, n: uint64(len(eps)), rand: info.Rand}
	p.prob, p.alias = aliasTable(weights, sum)
	return p
}

// aliasPicker draws column i uniformly from the low 32 bits of one random value
// and keeps it if the high 32 bits fall under prob[i], else takes alias[i].
type aliasPicker struct {
	eps   []*Endpoint
	n     uint64
	rand  func() uint64
	prob  []uint32 // threshold·2^-32; 1<<32-1 means always
	alias []uint32
}

func (p *aliasPicker) Pick(PickInfo) (*Endpoint, error) {
	r := p.rand()
	i := fastrange(uint32(r), p.n)
	if uint32(r>>32) < p.prob[i] {
		return p.eps[i], nil
	}
	return p.eps[p.alias[i]], nil
}

// aliasTable builds Vose's alias table for weights summing to sum, in exact
// integer arithmetic: each column holds n·sum units of probability mass.
func aliasTable(weights []uint64, sum uint64) (prob, alias []uint32) {
	n := uint64(len(weights))
	prob = make([]uint32, n)
	alias = make([]uint32, n)
	mass := make([]uint64, n) // wᵢ·n, against a column height of sum
	var small, large []uint32
	for i, w := range weights {
		mass[i] = w * n
		alias[i] = uint32(i)
		if mass[i] < sum {
			small = append(small, uint32(i))
		} else {
			large = append(large, uint32(i))
		}
	}
	for len(small) > 0 && len(large) > 0 {
		s := small[len(small)-1]
		small = small[:len(small)-1]
		l := large[len(large)-1]
		hi, lo := bits.Mul64(mass[s], 1<<32)
		q, _ := bits.Div64(hi, lo, sum) // mass[s] < sum, so q < 2^32
		prob[s] = uint32(q)
		alias[s] = l
		mass[l] -= sum - mass[s]
		if mass[l] < sum {
			large = large[:len(large)-1]
			small = append(small, l)
		}
	}
	for _, i := range large {
		prob[i] = 1<<32 - 1
	}
	for _, i := range small { // only by rounding; a full column
		prob[i] = 1<<32 - 1
	}
	return prob, alias
}
