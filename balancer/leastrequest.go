package balancer

import "fmt"

func init() { Register("least_request", func() Algorithm { return &LeastRequest{} }) }

// LeastRequest samples ChoiceCount eligible endpoints at random and sends the
// request to the one with the fewest requests in flight (the "power of two
// choices"). Use it when request costs vary or endpoints differ in speed: it
// steers away from busy endpoints at the cost of one extra random draw, and unlike
// a full scan it never herds every client onto the same idle endpoint.
//
// JSON name "least_request".
type LeastRequest struct {
	// ChoiceCount is how many endpoints are sampled per pick (Envoy's
	// choice_count). Default 2; valid 2-100.
	ChoiceCount int `json:"choiceCount,omitempty"`
}

// Name returns "least_request".
func (*LeastRequest) Name() string { return "least_request" }

// Validate checks ChoiceCount.
func (a *LeastRequest) Validate() error {
	if a.ChoiceCount != 0 && (a.ChoiceCount < 2 || a.ChoiceCount > 100) {
		return fmt.Errorf("choiceCount: %d is out of range [2, 100]", a.ChoiceCount)
	}
	return nil
}

// Build returns a least-request picker over info.Endpoints.
func (a *LeastRequest) Build(info BuildInfo) Picker {
	k := a.ChoiceCount
	if k == 0 {
		k = 2
	}
	return &lrPicker{eps: info.Endpoints, n: uint64(len(info.Endpoints)), choices: k, rand: info.Rand}
}

type lrPicker struct {
	eps     []*Endpoint
	n       uint64
	choices int
	rand    func() uint64
}

func (p *lrPicker) Pick(PickInfo) (*Endpoint, error) {
	if p.n == 1 {
		return p.eps[0], nil
	}
	r := p.rand()
	// Two distinct indexes from one draw: i in [0,n), j in [0,n) \ {i}.
	i := fastrange(uint32(r), p.n)
	j := fastrange(uint32(r>>32), p.n-1)
	if j >= i {
		j++
	}
	best := p.eps[i]
	if c := p.eps[j]; c.inflight.Load() < best.inflight.Load() {
		best = c
	}
	for k := 2; k < p.choices; k++ {
		c := p.eps[fastrange(uint32(p.rand()), p.n)]
		if c.inflight.Load() < best.inflight.Load() {
			best = c
		}
	}
	return best, nil
}

// fastrange maps a uniform 32-bit value onto [0, n) without a division
// (Lemire's multiply-shift), for n < 2^32.
func fastrange(x uint32, n uint64) uint64 { return (uint64(x) * n) >> 32 }
