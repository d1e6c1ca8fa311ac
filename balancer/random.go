package balancer

func init() { Register("random", func() Algorithm { return &Random{} }) }

// Random sends each request to an eligible endpoint chosen uniformly at random,
// ignoring weights. Use it when there are many clients and many endpoints alike:
// it needs no shared counter at all (each pick is one draw from a lock-free
// per-thread generator), so it scales with cores better than round robin, at
// the price of a binomial rather than an exact spread.
//
// JSON name "random"; it has no options.
type Random struct{}

// Name returns "random".
func (*Random) Name() string { return "random" }

// Validate always succeeds.
func (*Random) Validate() error { return nil }

// Build returns a random picker over info.Endpoints.
func (*Random) Build(info BuildInfo) Picker {
	return &randomPicker{eps: info.Endpoints, n: uint64(len(info.Endpoints)), rand: info.Rand}
}

type randomPicker struct {
	eps  []*Endpoint
	n    uint64
	rand func() uint64
}

func (p *randomPicker) Pick(PickInfo) (*Endpoint, error) {
	return p.eps[fastrange(uint32(p.rand()), p.n)], nil
}
