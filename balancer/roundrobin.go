package balancer

import "sync/atomic"

func init() { Register("round_robin", func() Algorithm { return &RoundRobin{} }) }

// RoundRobin sends each request to the next eligible endpoint in turn, starting
// from a random one, ignoring weights. Use it when endpoints are alike and
// requests cost about the same: it is the cheapest pick and spreads load
// exactly evenly.
//
// JSON name "round_robin"; options: {"slowStart": {...}}.
type RoundRobin struct {
	// SlowStart ramps new and returning endpoints up (see SlowStart). Default off.
	SlowStart SlowStart `json:"slowStart,omitzero"`
}

// Name returns "round_robin".
func (*RoundRobin) Name() string { return "round_robin" }

// Validate checks SlowStart.
func (a *RoundRobin) Validate() error { return a.SlowStart.Validate() }

// Build returns a round robin picker over info.Endpoints.
func (a *RoundRobin) Build(info BuildInfo) Picker {
	return newRRPicker(info.Endpoints, info.Rand, newSlowStart(a.SlowStart, info))
}

// newRRPicker returns a picker that cycles through cycle, starting at a random
// place. Weighted round robin uses it too, over one period of its schedule.
func newRRPicker(cycle []*Endpoint, rand func() uint64, ss *slowStart) *rrPicker {
	p := &rrPicker{eps: cycle, n: uint32(len(cycle)), ss: ss}
	p.next.Store(uint32(rand() % uint64(p.n)))
	return p
}

type rrPicker struct {
	eps  []*Endpoint
	n    uint32
	ss   *slowStart // nil unless an endpoint ramps
	_    [64]byte   // next, written by every pick, gets a cache line of its own
	next atomic.Uint32
	_    [60]byte
}

func (p *rrPicker) Pick(PickInfo) (*Endpoint, error) {
	ep := p.eps[(p.next.Add(1)-1)%p.n]
	if p.ss != nil {
		return p.ramp(ep), nil
	}
	return ep, nil
}

// ramp re-picks, in turn, while a ramping endpoint declines its turn.
func (p *rrPicker) ramp(ep *Endpoint) *Endpoint {
	now, ok := p.ss.active()
	if !ok {
		return ep
	}
	for range maxRejects {
		if p.ss.accept(p.ss.factor(ep, now)) {
			break
		}
		ep = p.eps[(p.next.Add(1)-1)%p.n]
	}
	return ep
}
