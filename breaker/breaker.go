package breaker

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/sony/gobreaker/v2"
)

// State is a breaker's state.
type State uint32

// A breaker is Closed (requests flow; outcomes are counted), Open (no request
// goes to the endpoint) or HalfOpen (a few probe requests go, to learn whether
// the endpoint is back). The values are gobreaker's.
const (
	Closed   State = State(gobreaker.StateClosed)
	HalfOpen State = State(gobreaker.StateHalfOpen)
	Open     State = State(gobreaker.StateOpen)
)

// String returns "closed", "half-open" or "open".
func (s State) String() string {
	switch s {
	case Closed:
		return "closed"
	case HalfOpen:
		return "half-open"
	case Open:
		return "open"
	}
	return fmt.Sprintf("state(%d)", uint32(s))
}

// Options are what a Breaker needs besides its Config.
//
// There is no clock to inject: gobreaker v2.4.0 reads time.Now itself (in
// NewCircuitBreaker, State, and before and after each request) and has no
// hook for another clock, and a clock that drove only this package's half of
// the timing (the probe re-arm, the open timer) would disagree with
// gobreaker's. Tests run breakers inside a testing/synctest bubble instead,
// where time.Now, timers and sleeps all follow the bubble's fake clock,
// gobreaker's included.
type Options struct {
	// Name names the breaker (gobreaker's Settings.Name), for instance after
	// its endpoint's address.
	Name string
	// OnStateChange, if not nil, is called once per transition, in order,
	// with the state before and after. It is called after the transition,
	// with no lock of the breaker or of gobreaker held, on the goroutine
	// whose Record caused the transition or on the breaker's timer goroutine
	// (open → half-open); calls never overlap. It may call the breaker's
	// methods, Close included. If a transition happens while another
	// goroutine is in OnStateChange, that goroutine delivers it after the
	// call it is in, so no caller waits for another's callback.
	OnStateChange func(from, to State)
}

// Breaker is one endpoint's circuit breaker, a gobreaker.CircuitBreaker
// driven so that the pick path never calls gobreaker:
//
//   - Record, called with every outcome (the engine's Done), runs the outcome
//     through gobreaker's Execute with a static function that returns a
//     static error or nil, which allocates nothing. Outcomes that never
//     reached the endpoint (outcome.Class.Counted false) are not recorded at
//     all, rather than recorded as excluded (IsExcluded): gobreaker would only
//     add them to Requests and TotalExclusions, which cancel out in every
//     figure it uses (validRequests) and in the trip rules here, which count
//     successes and failures; skipping them saves a lock and two clock reads.
//     Outcomes that arrive while the breaker is open are dropped without
//     calling gobreaker, which would reject them too.
//   - Without a failure-ratio rule, a success in the closed state only
//     matters if a failure was recorded since the last recorded success (it
//     resets the consecutive-failure count), so such successes cost one
//     atomic load and skip gobreaker.
//   - Transitions are learned from gobreaker's OnStateChange, which runs
//     under gobreaker's mutex: it only publishes the state in an atomic,
//     resets the probe claims, arms the open timer and queues the event;
//     Options.OnStateChange gets the event after gobreaker returns.
//   - gobreaker moves from open to half-open lazily, when a call notices
//     that the timeout has passed. A timer armed on each entry to Open
//     (OpenTimeout plus 1ns, as gobreaker's test is strict) calls
//     gobreaker's State, which makes the transition, so it happens without
//     traffic and OnStateChange reports it.
//   - Allow, for the pick path, reads the atomic state; in half-open it
//     claims one of HalfOpenRequests probe slots with a compare-and-swap.
//     gobreaker's own half-open count agrees: it accepts HalfOpenRequests
//     outcomes per half-open period (a failure reopens, HalfOpenRequests
//     successes close), exclusions do not count, and slots are claimed
//     afresh on each entry to half-open.
//
// Because Record hands gobreaker the whole request at once, gobreaker's
// generations cannot tell which period a request was picked in: an outcome of
// a request picked while the breaker was closed that arrives once it is
// half-open counts as a probe's (a success towards closing, a failure
// reopening it). Outcomes that arrive while it is open are dropped.
//
// The zero value is not usable; call New.
type Breaker struct {
	// Read by every Record and Allow.
	state       atomic.Uint32 // State, as gobreaker last reported it
	pending     atomic.Bool   // events are queued for OnStateChange
	dirty       atomic.Bool   // skipSuccess: a failure was recorded since the last recorded success
	skipSuccess bool          // no failure-ratio rule: see Record
	halfOpen    uint64        // probe slots per arm
	timeoutUs   uint64        // OpenTimeout in µs, rounded up

	// probes is the half-open probe word: the time probes were last granted
	// or a probe's outcome last arrived (µs since base, modulo 2^48) in the
	// high 48 bits, and how many probes are claimed in the low 16.
	probes atomic.Uint64

	cb          *gobreaker.CircuitBreaker[struct{}]
	base        time.Time
	openTimeout time.Duration
	name        string
	onChange    func(from, to State)
	isClosed    atomic.Bool

	mu         sync.Mutex // guards the fields below; taken inside gobreaker's mutex, never around a gobreaker call
	queue      []transition
	head       int
	delivering bool
	closed     bool
	timer      *time.Timer
	openUntil  time.Time
}

type transition struct{ from, to State }

const (
	probeBits = 16
	probeMask = 1<<probeBits - 1
	stampMask = 1<<(64-probeBits) - 1
)

// errFailure is the error the static failure function hands gobreaker.
var errFailure = errors.New("breaker: failure")

// Static request functions for Execute: they capture nothing, so passing
// them allocates nothing.
func succeed() (struct{}, error) { return struct{}{}, nil }
func fail() (struct{}, error)    { return struct{}{}, errFailure }

// New returns a closed breaker. It does not validate cfg: call cfg.Validate
// (and the configuration codec's range checks) first. Omitted fields take
// their defaults, and values beyond what the breaker can represent are
// clamped.
func New(cfg Config, opts Options) *Breaker {
	s := cfg.settings()
	b := &Breaker{
		skipSuccess: s.ratio == 0,
		halfOpen:    uint64(s.halfOpen),
		timeoutUs:   min(uint64((s.openTimeout+time.Microsecond-1)/time.Microsecond), stampMask>>1),
		base:        time.Now(),
		openTimeout: s.openTimeout,
		name:        opts.Name,
		onChange:    opts.OnStateChange,
	}
	b.cb = gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
		Name:          opts.Name,
		MaxRequests:   s.halfOpen,
		Interval:      s.window,
		BucketPeriod:  s.window / WindowBuckets,
		Timeout:       s.openTimeout,
		ReadyToTrip:   readyToTrip(s),
		OnStateChange: b.onTransition,
		// IsSuccessful: the default (a nil error) is right for succeed and
		// fail. IsExcluded: none; excluded outcomes are not recorded.
	})
	return b
}

// readyToTrip is gobreaker's ReadyToTrip for s: called under gobreaker's
// mutex on each failure in the closed state, with the window's counts.
func readyToTrip(s settings) func(gobreaker.Counts) bool {
	return func(c gobreaker.Counts) bool {
		if s.consecutive > 0 && c.ConsecutiveFailures >= s.consecutive {
			return true
		}
		if s.ratio > 0 {
			n := uint64(c.TotalSuccesses) + uint64(c.TotalFailures)
			return n >= uint64(s.minRequests) && float64(c.TotalFailures) >= s.ratio*float64(n)
		}
		return false
	}
}

// Name returns Options.Name.
func (b *Breaker) Name() string { return b.name }

// State returns the breaker's state, without a lock. It may be ahead of the
// events OnStateChange has delivered so far, and it says Open from the moment
// OpenTimeout expires until the timer has run and made gobreaker take the
// transition.
func (b *Breaker) State() State { return State(b.state.Load()) }

// Record counts one outcome of a request sent to the breaker's endpoint. Call
// it with every outcome (the engine's Done), probes included: outcomes that
// never reached the endpoint (Canceled, NotSent) count as neither success nor
// failure, and in the half-open state they give their probe slot back.
// Record allocates nothing. In the closed and half-open states a counted
// outcome costs one gobreaker Execute (two lock and unlock pairs and two clock
// reads), except a success when the failure-ratio rule is off and no failure
// has been recorded since the last recorded success: that one costs an atomic
// load. If the outcome makes the breaker change state, Record calls
// OnStateChange before it returns, unless another goroutine is in
// OnStateChange: that one delivers the event after its call.
func (b *Breaker) Record(c outcome.Class) {
	st := State(b.state.Load())
	if !c.Counted() {
		if st == HalfOpen {
			b.releaseProbe()
		}
		return
	}
	switch st {
	case Open:
		return // gobreaker would reject it; the timer moves the breaker on
	case HalfOpen:
		b.touch() // a probe's outcome arrived: not wedged
	}
	if c.Failure() {
		_, _ = b.cb.Execute(fail)
		if b.skipSuccess {
			// After Execute: a success that reads false here was recorded
			// after this failure, or will see true.
			b.dirty.Store(true)
		}
	} else {
		if b.skipSuccess && st == Closed {
			if !b.dirty.Load() {
				return
			}
			b.dirty.Store(false) // before Execute, so that a failure recorded after it sets it again
		}
		_, _ = b.cb.Execute(succeed)
	}
	if b.pending.Load() {
		b.deliver()
	}
}

// Allow reports whether a request may be sent to the endpoint now, without a
// lock. It is meant for the pick path of endpoints whose breaker is not
// closed; every pick of such an endpoint must call it, as it is what counts
// the probes (the engine keeps open endpoints out of its picks through
// OnStateChange, so mostly half-open ones reach it). Closed, it returns true;
// open, false; half-open, it claims one of HalfOpenRequests probe slots and
// returns false when none is left.
//
// A claimed probe's outcome must reach Record (a success or failure decides
// the state, a canceled or unsent one gives the slot back). In case it never
// does (a response body nobody closes), a half-open breaker whose slots are
// all claimed and that has seen no probe outcome for OpenTimeout grants its
// slots again, so a lost outcome never wedges it half-open. Only then, with no
// slot left, does Allow read the clock.
func (b *Breaker) Allow() bool {
	switch State(b.state.Load()) {
	case Closed:
		return true
	case Open:
		return false
	}
	for {
		w := b.probes.Load()
		if n := w&probeMask + 1; n <= b.halfOpen {
			nw := w + 1
			if n == b.halfOpen {
				// The last slot: the wait for lost outcomes runs from this
				// claim, not from when half-open began (one clock read per
				// half-open period).
				nw = b.micros(time.Now())<<probeBits | n
			}
			if b.probes.CompareAndSwap(w, nw) {
				return true
			}
			continue
		}
		now := b.micros(time.Now())
		if (now-w>>probeBits)&stampMask < b.timeoutUs {
			return false
		}
		if b.probes.CompareAndSwap(w, now<<probeBits|1) { // re-arm, claiming the first slot
			return true
		}
	}
}

// Close stops the breaker's timer: an open breaker then stays open, and no
// OnStateChange call starts for a transition the timer would have made. A
// call already in progress is not waited for (it may be waiting for a lock
// the caller of Close holds). Record and Allow still work.
func (b *Breaker) Close() {
	b.mu.Lock()
	b.closed = true
	b.isClosed.Store(true)
	if b.timer != nil {
		b.timer.Stop()
	}
	b.mu.Unlock()
}

// micros returns t as µs since b.base, modulo 2^48.
func (b *Breaker) micros(t time.Time) uint64 {
	return uint64(t.Sub(b.base)/time.Microsecond) & stampMask
}

// touch records that a probe's outcome arrived now.
func (b *Breaker) touch() {
	now := b.micros(time.Now()) << probeBits
	for {
		w := b.probes.Load()
		if b.probes.CompareAndSwap(w, now|w&probeMask) {
			return
		}
	}
}

// releaseProbe gives back a probe slot whose request did not reach the
// endpoint, as gobreaker's half-open count subtracts exclusions.
func (b *Breaker) releaseProbe() {
	for {
		w := b.probes.Load()
		if w&probeMask == 0 || b.probes.CompareAndSwap(w, w-1) {
			return
		}
	}
}

// onTransition is gobreaker's OnStateChange. It runs under gobreaker's mutex,
// so it calls nothing outside this package.
func (b *Breaker) onTransition(_ string, from, to gobreaker.State) {
	now := time.Now()
	if State(to) == HalfOpen {
		b.probes.Store(b.micros(now) << probeBits) // fresh slots, before the state says half-open
	}
	b.state.Store(uint32(to))
	b.mu.Lock()
	if State(to) == Open && !b.closed {
		d := b.openTimeout + time.Nanosecond // gobreaker moves on once its expiry is strictly before now
		b.openUntil = now.Add(d)
		if b.timer == nil {
			b.timer = time.AfterFunc(d, b.onTimer)
		} else {
			b.timer.Reset(d)
		}
	}
	if b.onChange != nil {
		b.queue = append(b.queue, transition{State(from), State(to)})
		b.pending.Store(true)
	}
	b.mu.Unlock()
}

// onTimer runs when an open breaker's timeout has passed: gobreaker's State
// takes the transition to half-open.
func (b *Breaker) onTimer() {
	if b.isClosed.Load() {
		return
	}
	if b.cb.State() == gobreaker.StateOpen {
		// Opened again since this timer was set (or the clock is coarse):
		// wait for the current open period's end.
		b.mu.Lock()
		if !b.closed && b.State() == Open {
			d := time.Until(b.openUntil)
			if d <= 0 {
				d = time.Millisecond
			}
			b.timer.Reset(d)
		}
		b.mu.Unlock()
	}
	if b.pending.Load() {
		b.deliver()
	}
}

// deliver hands queued events to OnStateChange, in order, with no lock held.
// One goroutine delivers at a time; one that finds another delivering leaves
// its events to it.
func (b *Breaker) deliver() {
	b.mu.Lock()
	if b.delivering {
		b.mu.Unlock()
		return
	}
	b.delivering = true
	for b.head < len(b.queue) {
		t := b.queue[b.head]
		b.head++
		b.mu.Unlock()
		b.call(t)
		b.mu.Lock()
	}
	b.queue, b.head = b.queue[:0], 0
	b.delivering = false
	b.pending.Store(false)
	b.mu.Unlock()
}

// call calls OnStateChange; if it panics, the next Record delivers what is
// left of the queue.
func (b *Breaker) call(t transition) {
	ok := false
	defer func() {
		if !ok {
			b.mu.Lock()
			b.delivering = false
			b.mu.Unlock()
		}
	}()
	b.onChange(t.from, t.to)
	ok = true
}
