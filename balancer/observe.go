package balancer

import (
	"context"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lodestar-go/lodestar/balancer/outcome"
)

// This file is the engine's own observer: one subscriber to its events
// (DESIGN.md: "logs, metrics and the debug page all read it") that keeps a
// bounded ring of recent events and each endpoint's latest reasons for the
// debug page (Engine.Status), counts the event-driven metrics, and writes the
// log lines, and the per-endpoint record Done feeds: a fixed ring of recent
// latencies and the endpoint's precomputed metric attributes.

// EventHistory is how many recent events an engine keeps for Engine.Status
// (the debug page).
const EventHistory = 64

// DiscoveryErrorLogInterval is the least time between two logged discovery
// errors of one engine: the first error is logged at once, later ones at most
// once per interval, with the count of those not logged in between.
const DiscoveryErrorLogInterval = time.Minute

// recentSamples is how many latencies an endpoint keeps for its recent
// p50/p99 and EWMA.
const recentSamples = 128

// recentLatency keeps an endpoint's last recentSamples latencies: Done
// stores one with an atomic add and an atomic store, no lock, no allocation.
// A reader (the debug page) may see a slot a moment before it is rewritten:
// the figures are approximate by design.
type recentLatency struct {
	n atomic.Uint64                // latencies recorded ever
	v [recentSamples]atomic.Uint32 // microseconds + 1, saturating; 0 is empty
}

func (r *recentLatency) add(d time.Duration) {
	us := uint64(d/time.Microsecond) + 1
	if us > math.MaxUint32 {
		us = math.MaxUint32
	}
	i := r.n.Add(1) - 1
	r.v[i%recentSamples].Store(uint32(us))
}

// samples returns the kept latencies, oldest first, in microseconds.
func (r *recentLatency) samples() []uint32 {
	n := r.n.Load()
	k := min(n, recentSamples)
	out := make([]uint32, 0, k)
	for i := n - k; i < n; i++ {
		if v := r.v[i%recentSamples].Load(); v != 0 {
			out = append(out, v-1)
		}
	}
	return out
}

// endpointObs is an endpoint's observability record, made when the engine
// takes the endpoint (observeEndpointLocked) and never replaced.
type endpointObs struct {
	recent  recentLatency
	metrics *endpointMetrics // nil when metrics are off
}

// record is Done's addition: the latency into the ring (for outcomes that say
// something about the endpoint) and into the duration histogram.
func (ob *endpointObs) record(o outcome.Outcome) {
	if o.Class == outcome.NotSent {
		return
	}
	if o.Class != outcome.Canceled && o.Latency > 0 {
		ob.recent.add(o.Latency)
	}
	if m := ob.metrics; m != nil {
		cs := m.sets[o.Class].Load() // of, by hand: it does not inline
		if cs == nil {
			cs = m.build(o.Class)
		}
		m.duration.Record(context.Background(), o.Latency.Seconds(), cs.record...)
	}
}

// metrics returns ep's precomputed metric options, or nil.
func (ep *Endpoint) metrics() *endpointMetrics {
	if ob := ep.obs; ob != nil {
		return ob.metrics
	}
	return nil
}

// engineObs is an engine's observer state.
type engineObs struct {
	metrics *engineMetrics // nil when metrics are off
	unsub   func()

	mu     sync.Mutex
	events [EventHistory]Event // ring
	nev    int                 // events recorded ever
	why    map[string]*[6]string
	// Discovery error logging: when the last line was written, how many
	// errors were not logged since, and since the last good answer.
	lastLogged       time.Time
	suppressed       int
	errsSinceAnswer  int
	lastDiscoveryErr string
	shares           shareSamples
}

// startObserving installs the engine's observer, metrics and registry entry
// (from NewEngine).
func (e *Engine) startObserving() {
	ob := &engineObs{why: map[string]*[6]string{}}
	ob.metrics = e.newEngineMetrics()
	e.obs = ob
	ob.unsub = e.Subscribe(e.observe)
	register(e)
}

// stopObserving undoes startObserving (from Close).
func (e *Engine) stopObserving() {
	ob := e.obs
	if ob == nil {
		return
	}
	unregister(e)
	ob.unsub()
	if ob.metrics != nil && ob.metrics.reg != nil {
		ob.metrics.reg.Unregister()
	}
}

// observeEndpointLocked gives a new endpoint its record (from attachLocked).
func (e *Engine) observeEndpointLocked(ep *Endpoint) {
	if ep.obs != nil {
		return
	}
	ob := &endpointObs{}
	if e.obs != nil && e.obs.metrics != nil {
		ob.metrics = e.obs.metrics.forEndpoint(e.opts.Service, ep.addr)
	}
	ep.obs = ob
}

// conditionBit returns the index of a single condition bit (0-5).
func conditionBit(c Condition) int {
	for i := range 6 {
		if c == 1<<i {
			return i
		}
	}
	return -1
}

// observe is the engine's own event subscriber.
func (e *Engine) observe(ev Event) {
	ob := e.obs
	if ob.metrics != nil {
		ob.metrics.countEvent(ev)
	}
	ob.mu.Lock()
	ob.events[ob.nev%EventHistory] = ev
	ob.nev++
	switch ev.Kind {
	case ConditionChanged:
		w := ob.why[ev.Address]
		if w == nil {
			w = new([6]string)
			ob.why[ev.Address] = w
		}
		for i := range 6 {
			bit := Condition(1 << i)
			switch {
			case ev.New&bit != 0 && ev.Old&bit == 0:
				w[i] = ev.Why
			case ev.New&bit == 0 && ev.Old&bit != 0:
				w[i] = ""
			}
		}
	case EndpointDrained:
		delete(ob.why, ev.Address)
	}
	if ev.Kind != DiscoveryError {
		ob.mu.Unlock()
		e.logEvent(ev)
		return
	}
	// A discovery error: the first is logged, then at most one per
	// DiscoveryErrorLogInterval, saying how many were not.
	ob.errsSinceAnswer++
	write, suppressed := false, 0
	if ob.lastLogged.IsZero() || ev.At.Sub(ob.lastLogged) >= DiscoveryErrorLogInterval {
		write, suppressed = true, ob.suppressed
		ob.lastLogged, ob.suppressed = ev.At, 0
	} else {
		ob.suppressed++
	}
	ob.mu.Unlock()
	if write {
		args := []any{"service", e.opts.Service, "error", ev.Why}
		if e.opts.Target != "" {
			args = append(args, "target", e.opts.Target)
		}
		if suppressed > 0 {
			args = append(args, "suppressed", suppressed)
		}
		e.opts.Logger.Warn("lodestar: discovery error (keeping the last endpoint set)", args...)
	}
}

// observeAnswer counts a discovery answer (from Update) and, after errors,
// logs the recovery (Info) and resets the error lines' rate limit.
func (e *Engine) observeAnswer() {
	ob := e.obs
	if ob == nil {
		return
	}
	if ob.metrics != nil {
		ob.metrics.updates.Add(context.Background(), 1, ob.metrics.baseOpt)
	}
	ob.mu.Lock()
	n := ob.errsSinceAnswer
	ob.errsSinceAnswer, ob.suppressed, ob.lastLogged = 0, 0, time.Time{}
	ob.mu.Unlock()
	if n > 0 {
		e.opts.Logger.Info("lodestar: discovery recovered", "service", e.opts.Service, "errors", n)
	}
}

// logEvent writes the line for a state change, if it gets one: ejections and
// breaker openings at Warn, their ends and pauses at Info, the rest at Debug.
// Unhealthy is the health checker's to log; panic is logged where it is
// decided (rebuildLocked).
func (e *Engine) logEvent(ev Event) {
	l := e.opts.Logger
	svc := e.opts.Service
	switch ev.Kind {
	case ConditionChanged:
		on, off := ev.New&^ev.Old, ev.Old&^ev.New
		switch {
		case on&Ejected != 0:
			l.Warn("lodestar: endpoint ejected", "service", svc, "endpoint", ev.Address, "why", ev.Why)
		case off&Ejected != 0:
			l.Info("lodestar: endpoint ejection ended", "service", svc, "endpoint", ev.Address, "why", ev.Why)
		case on&Paused != 0:
			l.Info("lodestar: endpoint paused", "service", svc, "endpoint", ev.Address, "why", ev.Why)
		case (on|off)&(Unhealthy|BreakerOpen) != 0:
			// Logged by the health checker, and as BreakerChanged.
		default:
			l.Debug("lodestar: endpoint condition changed", "service", svc, "endpoint", ev.Address,
				"conditions", ev.New.String(), "why", ev.Why)
		}
	case BreakerChanged:
		switch to := breakerTo(ev.Why); to {
		case "open":
			l.Warn("lodestar: circuit breaker open", "service", svc, "endpoint", ev.Address, "why", ev.Why)
		case "closed":
			l.Info("lodestar: circuit breaker closed", "service", svc, "endpoint", ev.Address)
		default:
			l.Debug("lodestar: circuit breaker changed", "service", svc, "endpoint", ev.Address, "why", ev.Why)
		}
	}
}

// RecentEvents returns the engine's last events (at most EventHistory),
// oldest first: membership, condition and breaker changes, panic, discovery
// errors. An event another goroutine is still delivering (the paced
// rebuild's, during a storm of changes) shows up a moment after the change
// that made it returns.
func (e *Engine) RecentEvents() []Event {
	ob := e.obs
	if ob == nil {
		return nil
	}
	ob.mu.Lock()
	defer ob.mu.Unlock()
	k := min(ob.nev, EventHistory)
	out := make([]Event, 0, k)
	for i := ob.nev - k; i < ob.nev; i++ {
		out = append(out, ob.events[i%EventHistory])
	}
	return out
}

// whyOf returns the reasons recorded for each condition on the endpoint at
// addr, by condition bit.
func (ob *engineObs) whyOf(addr string) [6]string {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	if w := ob.why[addr]; w != nil {
		return *w
	}
	return [6]string{}
}

// shareSamples keeps, per engine, a few readings of every endpoint's
// attempt total, taken when Status runs (at most one per shareSampleEvery),
// so that a share of recent requests needs nothing on the request path.
type shareSamples struct {
	taken []shareSample // oldest first, at most shareSampleKeep
}

type shareSample struct {
	at     time.Time
	totals map[string]uint64
}

const (
	shareSampleEvery = 5 * time.Second
	shareSampleKeep  = 12 // so the window is between 5s and a minute
)

// window returns the attempt totals to subtract for the share of recent
// requests, and the time they were read: the oldest reading kept, if it is
// at least shareSampleEvery old; ok is false otherwise (the share is then
// over every attempt). It records now's totals.
func (s *shareSamples) window(now time.Time, totals map[string]uint64) (base map[string]uint64, since time.Time, ok bool) {
	if n := len(s.taken); n > 0 && now.Sub(s.taken[0].at) >= shareSampleEvery {
		since, base, ok = s.taken[0].at, s.taken[0].totals, true
	}
	if n := len(s.taken); n == 0 || now.Sub(s.taken[n-1].at) >= shareSampleEvery {
		s.taken = append(s.taken, shareSample{at: now, totals: totals})
		for len(s.taken) > shareSampleKeep || len(s.taken) > 1 && now.Sub(s.taken[1].at) >= time.Minute {
			s.taken = slices.Delete(s.taken, 0, 1)
		}
	}
	return base, since, ok
}
