package grpcpolicy

import (
	"google.golang.org/grpc/connectivity"
	gresolver "google.golang.org/grpc/resolver"

	grpcbalancer "google.golang.org/grpc/balancer"
)

// Subsetting (balancer.Config.Subset) through the gRPC door: endpointsharding
// gets only the engine's subset candidates (balancer.Engine.SubsetCandidates),
// so the other endpoints get no SubConn and no connection. The engine still
// holds every endpoint, to rank them.
//
// The candidates change outside grpc's calls into the policy too (an
// ejection, a health check, a pause ending), so the policy updates
// endpointsharding from a goroutine of its own, woken by the engine's
// OnSubsetChange hook. grpc calls a balancer's top-down methods one at a
// time; endpointsharding and pick_first take bottom-up calls (SubConn state
// changes) concurrently with them, but not two top-down calls at once: the
// policy's childMu serializes every top-down call into endpointsharding,
// grpc's (UpdateClientConnState, ResolverError, ExitIdle, Close) and the
// subset goroutine's. Lock order: childMu, then mu, then the engine's lock.

// subsetKick wakes the subset goroutine. It is the engine's OnSubsetChange
// hook, called with the engine's lock held: it must not block.
func (p *policy) subsetKick() {
	select {
	case p.kick <- struct{}{}:
	default: // a wake-up is pending already
	}
}

// startSubsetLocked starts the subset goroutine, once. p.mu is held.
func (p *policy) startSubsetLocked() {
	if p.subsetDone != nil || p.closed {
		return
	}
	p.subsetStop, p.subsetDone = make(chan struct{}), make(chan struct{})
	go p.subsetLoop(p.subsetStop, p.subsetDone)
}

// subsetLoop hands endpointsharding the candidates whenever they change,
// until stop is closed.
func (p *policy) subsetLoop(stop, done chan struct{}) {
	defer close(done)
	for {
		select {
		case <-stop:
			return
		case <-p.kick:
		}
		p.childMu.Lock()
		p.mu.Lock()
		if p.closed || p.eng == nil || p.resolverState == nil {
			p.mu.Unlock()
			p.childMu.Unlock()
			continue
		}
		rs, changed := p.childStateLocked()
		if changed {
			// Endpoints that left get no child: NotConnected now; the
			// gate and the channel state stop counting them.
			p.syncEngineLocked()
		}
		p.mu.Unlock()
		if changed {
			_ = p.child.UpdateClientConnState(grpcbalancer.ClientConnState{ResolverState: rs})
		}
		p.childMu.Unlock()
	}
}

// stopSubset stops the subset goroutine and waits for it. Call it without
// p.mu and childMu.
func (p *policy) stopSubset() {
	p.mu.Lock()
	stop, done := p.subsetStop, p.subsetDone
	p.subsetStop = nil
	p.mu.Unlock()
	if stop != nil {
		close(stop)
		<-done
	}
}

// childStateLocked returns the resolver state endpointsharding should have:
// the last resolver state, narrowed to the subset's candidates when the
// engine subsets. It marks the records left out (outside; a record that
// leaves loses its child, so its state is reset to IDLE, no picker) and
// reports whether the set handed over changed. p.mu is held.
func (p *policy) childStateLocked() (gresolver.State, bool) {
	rs := *p.resolverState
	cand, on := p.eng.SubsetCandidates()
	in := make(map[string]bool, len(cand))
	for _, ep := range cand {
		in[ep.Address()] = true
	}
	changed := false
	var kept []gresolver.Endpoint
	for _, g := range rs.Endpoints {
		st, ok := p.states.Get(g)
		if !ok {
			continue
		}
		out := on && st.valid && !in[st.key]
		if out != st.outside {
			changed = true
			st.outside = out
			if out {
				st.state = connectivity.Idle
				st.picker.Store(nil)
			}
		}
		if !out {
			kept = append(kept, g)
		}
	}
	rs.Endpoints = kept
	return rs, changed
}
