package balancer

// PickHedge is Pick for a hedge: another attempt of a request whose earlier
// attempts (avoid) are still in flight and slow. It asks the algorithm's
// picker for two distinct endpoints outside avoid (up to four picks) and
// takes the one with fewer requests in flight: power of two choices over
// the algorithm's own choices, so weights, locality and priorities still
// decide which endpoints are candidates, while the hedge leans away from the
// endpoint that is holding requests up. When the picker offers only one
// endpoint outside avoid, that one goes; when it offers none (a hashing
// algorithm keeps answering a tried endpoint, or the picker counts requests
// itself, as bounded-load hashing does), PickHedge is PickAvoiding, which
// scans for an endpoint not tried. Like PickAvoiding, it never fails only
// because every endpoint was tried: it then returns a tried one. Call Done
// for the returned endpoint as for Pick.
func (e *Engine) PickHedge(info PickInfo, avoid []*Endpoint) (*Endpoint, error) {
	s := e.snap.Load()
	if s.picker == nil || s.selfCounting || len(s.endpoints) < 2 {
		return e.PickAvoiding(info, avoid)
	}
	var a, b *Endpoint
	for range 4 {
		ep, err := s.picker.Pick(info)
		if err != nil {
			return e.PickAvoiding(info, avoid)
		}
		if avoided(avoid, ep) || ep == a {
			continue
		}
		if a == nil {
			a = ep
			continue
		}
		b = ep
		break
	}
	if a == nil {
		return e.PickAvoiding(info, avoid)
	}
	if b != nil && b.inflight.Load() < a.inflight.Load() {
		a = b
	}
	// As in Pick: count, then check that a is still eligible and admitted.
	e.count(s, a)
	if a.conds.Load()&^s.tolerated == 0 && !s.gated {
		return a, nil
	}
	return e.repick(info, s, a, avoid)
}
