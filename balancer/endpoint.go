package balancer

import (
	"github.com/cespare/xxhash/v2"
	"sync/atomic"
	"time"

	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/breaker"
	"github.com/lodestar-go/lodestar/health"
	"github.com/lodestar-go/lodestar/resolver"
)

// Condition is a reason to keep an endpoint out of picks. Several may hold at once;
// an endpoint is eligible when none does.
type Condition uint32

const (
	// NotConnected: the front door has no ready connection to the endpoint
	// (the gRPC policy sets it while the endpoint's SubConn is not READY).
	NotConnected Condition = 1 << iota
	// Unhealthy: an active health check says the endpoint is down.
	Unhealthy
	// Ejected: the outlier detector took the endpoint out for a while.
	Ejected
	// BreakerOpen: the endpoint's circuit breaker is open.
	BreakerOpen
	// Paused: the endpoint asked for a pause (an HTTP Retry-After on a 429 or
	// 503) and gets no new picks until it is over (Engine.Pause).
	Paused
	// removed: discovery dropped the endpoint; it drains.
	removed
	// outside: the endpoint is not a candidate of the client's subset
	// (Config.Subset, subset.go). Internal: no event, not in Conditions.
	outside
)

// internalConds are the conditions Conditions and events leave out.
const internalConds = removed | outside

// conditionNames names the public conditions, in bit order.
var conditionNames = []struct {
	c    Condition
	name string
}{{NotConnected, "not connected"}, {Unhealthy, "unhealthy"}, {Ejected, "ejected"}, {BreakerOpen, "breaker open"}, {Paused, "paused"}}

// String names the conditions in c, joined by "+", or "eligible" when none holds.
func (c Condition) String() string {
	c &^= internalConds
	if c == 0 {
		return "eligible"
	}
	s := ""
	for _, n := range conditionNames {
		if c&n.c != 0 {
			if s != "" {
				s += "+"
			}
			s += n.name
		}
	}
	return s
}

// Endpoint is the engine's live view of one backend: its discovery record, the
// requests in flight on it and what they came to. Every figure is an atomic,
// read without locks on the pick path.
type Endpoint struct {
	// The figures a pick and Done read, together in the first 64 bytes: at
	// 10,000 endpoints each further cache line a pick touches costs a miss.
	addr     string
	info     atomic.Pointer[resolver.Endpoint]
	weight   atomic.Uint32
	conds    atomic.Uint32
	inflight atomic.Int64
	penalty  atomic.Uint64 // failure weight, see penalty.go
	inTotal  atomic.Int64  // of inflight, those in the engine's total (see Engine.release)
	since    atomic.Int64  // unix nanoseconds when the endpoint last became eligible

	outcomes [outcome.NotSent + 1]atomic.Uint64
	attached atomic.Pointer[any]
	epoch    int64         // unix nanoseconds when the endpoint was created
	ewma     atomic.Uint64 // peak EWMA state, see peakewma.go

	stats atomic.Pointer[health.Stats]    // outlier detection's, when on
	brk   atomic.Pointer[breaker.Breaker] // circuit breaker, when on
	gate  atomic.Uint32                   // gateHalfOpen while the breaker is half-open
	seen  atomic.Uint64                   // outcomes counted at the last HasTraffic call

	mark     uint64 // the last Engine.Update that listed it; guarded by the engine's mutex
	addrHash uint64 // xxhash of addr, for subsetting's ranks

	obs *endpointObs // recent latencies, metric attributes (observe.go); set before the endpoint is published
}

func newEndpoint(info resolver.Endpoint, now time.Time) *Endpoint {
	ep := &Endpoint{addr: info.Address, addrHash: xxhash.Sum64String(info.Address), epoch: now.UnixNano()}
	ep.setInfo(info)
	ep.since.Store(now.UnixNano())
	return ep
}

func (ep *Endpoint) setInfo(info resolver.Endpoint) {
	ep.info.Store(&info)
	ep.weight.Store(info.EffectiveWeight())
}

// Address returns the endpoint's "host:port".
func (ep *Endpoint) Address() string { return ep.addr }

// Info returns the endpoint's discovery record. The caller must not modify it.
func (ep *Endpoint) Info() *resolver.Endpoint { return ep.info.Load() }

// Weight returns the endpoint's static weight (at least 1).
func (ep *Endpoint) Weight() uint32 { return ep.weight.Load() }

// InFlight returns the number of requests picked for the endpoint and not yet done.
func (ep *Endpoint) InFlight() int64 { return ep.inflight.Load() }

// Conditions returns the conditions that hold on the endpoint.
func (ep *Endpoint) Conditions() Condition { return Condition(ep.conds.Load()) &^ internalConds }

// Removed reports whether discovery dropped the endpoint (it is draining).
func (ep *Endpoint) Removed() bool { return Condition(ep.conds.Load())&removed != 0 }

// EligibleSince returns when the endpoint last became eligible for picks: when it
// was discovered, or when its last condition cleared. Slow start ramps from here.
func (ep *Endpoint) EligibleSince() time.Time { return time.Unix(0, ep.since.Load()) }

// Outcomes returns how many reported requests ended in class c.
func (ep *Endpoint) Outcomes(c outcome.Class) uint64 {
	if int(c) >= len(ep.outcomes) {
		return 0
	}
	return ep.outcomes[c].Load()
}

// Attach stores a front door's per-endpoint value (the gRPC policy keeps the
// endpoint's connection there), replacing any earlier one.
func (ep *Endpoint) Attach(v any) { ep.attached.Store(&v) }

// Attached returns the value stored with Attach, or nil.
func (ep *Endpoint) Attached() any {
	if p := ep.attached.Load(); p != nil {
		return *p
	}
	return nil
}

// Acquire counts one more request in flight on the endpoint. The engine calls it
// for every pick; a picker that counts for itself (see SelfCounting) calls it, or
// TryAcquire, instead.
func (ep *Endpoint) Acquire() { ep.inflight.Add(1) }

// TryAcquire counts one more request in flight if that keeps the count at or
// below limit, and reports whether it did.
func (ep *Endpoint) TryAcquire(limit int64) bool {
	for {
		n := ep.inflight.Load()
		if n >= limit {
			return false
		}
		if ep.inflight.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// setCondition sets or clears c and reports whether the endpoint's eligibility
// changed. Callers hold the engine's lock.
func (ep *Endpoint) setCondition(c Condition, on bool, now time.Time) (changed bool) {
	old := Condition(ep.conds.Load())
	nc := old &^ c
	if on {
		nc = old | c
	}
	if nc == old {
		return false
	}
	ep.conds.Store(uint32(nc))
	if old != 0 && nc == 0 {
		ep.since.Store(now.UnixNano())
		ep.returned()
	}
	return (old == 0) != (nc == 0)
}

func (ep *Endpoint) eligible() bool { return ep.conds.Load() == 0 }
