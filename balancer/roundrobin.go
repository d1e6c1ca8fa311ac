package balancer

import "sync/atomic"

func init() { Register("round_robin", func() Algorithm { return &RoundRobin{} }) }

// RoundRobin sends each request to the next eligible endpoint in turn, starting
// from a random one. Use it when endpoints are alike and requests cost about the
// same: it is the cheapest pick and spreads load exactly evenly.
//
// JSON name "round_robin"; it has no options.
type RoundRobin struct{}

// Name returns "round_robin".
func (*RoundRobin) Name() string { return "round_robin" }

// Validate always succeeds.
func (*RoundRobin) Validate() error { return nil }

// Build returns a round robin picker over info.Endpoints.
func (*RoundRobin) Build(info BuildInfo) Picker {
	p := &rrPicker{eps: info.Endpoints, n: uint32(len(info.Endpoints))}
	p.next.Store(uint32(info.Rand() % uint64(p.n)))
	return p
}

type rrPicker struct {
	eps  []*Endpoint
	n    uint32
	next atomic.Uint32
}

func (p *rrPicker) Pick(PickInfo) (*Endpoint, error) {
	return p.eps[(p.next.Add(1)-1)%p.n], nil
}
