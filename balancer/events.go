package balancer

import (
	"sync"
	"time"
)

// EventKind says what an Event reports.
type EventKind uint8

const (
	// EndpointAdded: discovery added the endpoint.
	EndpointAdded EventKind = iota + 1
	// EndpointRemoved: discovery removed the endpoint; it drains.
	EndpointRemoved
	// EndpointDrained: a removed endpoint's last request finished.
	EndpointDrained
	// ConditionChanged: a condition was set on or cleared from the endpoint
	// (Old and New say which; Why says who and why: "ejected: 5 consecutive
	// failures", "breaker open", "health check: status 503", ...).
	ConditionChanged
	// PanicStarted: too few endpoints are usable (Config.PanicThreshold), so
	// picks spread over every connected endpoint, usable or not.
	PanicStarted
	// PanicEnded: enough endpoints are usable again.
	PanicEnded
	// BreakerChanged: the endpoint's circuit breaker changed state; Why says
	// from what to what ("circuit breaker half-open → closed"). An open
	// breaker also sets BreakerOpen (a ConditionChanged event).
	BreakerChanged
	// DiscoveryError: discovery failed (Why is the error); the endpoint set
	// in force stays.
	DiscoveryError
)

var eventKindNames = [...]string{"", "endpoint added", "endpoint removed", "endpoint drained",
	"condition changed", "panic started", "panic ended", "breaker changed", "discovery error"}

// String names the kind.
func (k EventKind) String() string {
	if int(k) < len(eventKindNames) && k > 0 {
		return eventKindNames[k]
	}
	return "unknown"
}

// Event is one change of an engine's state: the one stream that logs, metrics
// and debug pages read instead of polling the engine.
type Event struct {
	// Kind says what changed.
	Kind EventKind
	// Service is the engine's service (Options.Service).
	Service string
	// Address is the endpoint's address; "" for engine-wide events (panic).
	Address string
	// Old and New are the endpoint's conditions before and after.
	Old, New Condition
	// Why explains the change, when its maker said.
	Why string
	// At is when it happened, by the engine's clock.
	At time.Time
}

// events delivers an engine's events to its subscribers, in the order the
// engine made them, outside the engine's lock (a subscriber may call the
// engine, even change its state: that event is delivered after the current
// one, by the same loop).
type events struct {
	mu          sync.Mutex
	subs        map[*func(Event)]struct{}
	queue       []Event
	dispatching bool
	drained     chan struct{} // closed (and replaced) each time the dispatcher takes the queue
	idle        chan struct{} // closed (and cleared) when a dispatcher finishes; see delivered
}

// Back pressure on event delivery: a change that finds another goroutine
// delivering and more than maxQueued events waiting waits (up to
// queueWait) until that goroutine takes the queue, so a tight loop of
// condition changes (whose rebuilds the pace defers) cannot queue events
// faster than subscribers take them. The wait is bounded because a
// subscriber may itself change the engine's state, from the delivering
// goroutine, which then cannot wait for itself.
const (
	maxQueued = 1024
	queueWait = 10 * time.Millisecond
)

// Subscribe calls fn with every later event of the engine, in order, one at a
// time, until cancel is called. fn runs on the goroutine that made the change
// (or one that made an earlier one) and should be quick: a slow subscriber
// slows state changes, never picks.
func (e *Engine) Subscribe(fn func(Event)) (cancel func()) {
	p := &fn
	e.ev.mu.Lock()
	if e.ev.subs == nil {
		e.ev.subs = map[*func(Event)]struct{}{}
	}
	e.ev.subs[p] = struct{}{}
	e.ev.mu.Unlock()
	return func() {
		e.ev.mu.Lock()
		delete(e.ev.subs, p)
		e.ev.mu.Unlock()
	}
}

// emit queues an event; dispatch delivers it. Callers may hold the engine's lock.
func (e *Engine) emit(ev Event) {
	ev.Service = e.opts.Service
	if ev.At.IsZero() {
		ev.At = e.opts.Now()
	}
	e.ev.mu.Lock()
	if len(e.ev.subs) > 0 {
		e.ev.queue = append(e.ev.queue, ev)
	}
	e.ev.mu.Unlock()
}

// dispatch delivers queued events unless another goroutine already is; that
// one delivers them too. Call it without the engine's lock.
func (e *Engine) dispatch() {
	e.ev.mu.Lock()
	if e.ev.dispatching && len(e.ev.queue) > maxQueued {
		if e.ev.drained == nil {
			e.ev.drained = make(chan struct{})
		}
		drained := e.ev.drained
		e.ev.mu.Unlock()
		t := time.NewTimer(queueWait)
		select {
		case <-drained:
		case <-t.C:
		}
		t.Stop()
		return
	}
	if e.ev.dispatching || len(e.ev.queue) == 0 {
		e.ev.mu.Unlock()
		return
	}
	e.ev.dispatching = true
	for len(e.ev.queue) > 0 {
		q := e.ev.queue
		e.ev.queue = nil
		if e.ev.drained != nil {
			close(e.ev.drained)
			e.ev.drained = nil
		}
		subs := make([]func(Event), 0, len(e.ev.subs))
		for p := range e.ev.subs {
			subs = append(subs, *p)
		}
		e.ev.mu.Unlock()
		for _, ev := range q {
			for _, fn := range subs {
				fn(ev)
			}
		}
		e.ev.mu.Lock()
	}
	e.ev.dispatching = false
	if e.ev.idle != nil {
		close(e.ev.idle)
		e.ev.idle = nil
	}
	e.ev.mu.Unlock()
}

// delivered returns once every event emitted so far has been delivered:
// it delivers them itself, or waits for the goroutine that is delivering
// them (the paced rebuild's timer, say). Tests use it to read
// RecentEvents without racing that goroutine. Never call it from a
// subscriber.
func (e *Engine) delivered() {
	for {
		e.dispatch()
		e.ev.mu.Lock()
		if !e.ev.dispatching && len(e.ev.queue) == 0 {
			e.ev.mu.Unlock()
			return
		}
		if !e.ev.dispatching {
			e.ev.mu.Unlock()
			continue
		}
		if e.ev.idle == nil {
			e.ev.idle = make(chan struct{})
		}
		idle := e.ev.idle
		e.ev.mu.Unlock()
		<-idle
	}
}
