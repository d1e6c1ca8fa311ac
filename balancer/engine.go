package balancer

import (
	"context"
	"errors"
	"fmt"
	"golang.org/x/time/rate"
	"log/slog"
	"maps"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/health"
	"github.com/lodestar-go/lodestar/resolver"
)

// Options are an engine's run-time collaborators: what is not configuration.
// The zero value is ready to use.
type Options struct {
	// Service names the service in errors and logs.
	Service string
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Rand returns uniformly random 64-bit values, concurrently. Default
	// math/rand/v2.Uint64 (lock-free). Tests inject a seeded source.
	Rand func() uint64
	// Logger receives membership changes and discovery errors. Default slog.Default().
	Logger *slog.Logger
	// InitialConditions are the conditions a newly discovered endpoint starts
	// with. The gRPC policy starts endpoints NotConnected, so that none is
	// picked before its connection is ready and marking them costs no rebuild.
	// Default none: a new endpoint is eligible at once.
	InitialConditions Condition
	// Target describes where the engine's endpoints come from (a target URL
	// with its secrets redacted, or a feed's name), for errors and logs.
	Target string
	// Health is what active health checks need from the front door (TLS,
	// dialer); used only when Config.HealthCheck is set.
	Health HealthOptions
	// OnDrained is called, once, when an endpoint that discovery removed has no
	// request in flight any more; the HTTP front door closes its idle
	// connections then. It runs on the goroutine that finished the last request
	// or applied the update, without the engine's lock held.
	OnDrained func(ep *Endpoint)

	// Observability (observe.go, metrics.go).

	// Door names the front door that owns the engine ("http", "grpc"), for
	// metrics and debug pages.
	Door string
	// MeterProvider makes the engine's OpenTelemetry instruments (see
	// metrics.go for the list). nil means otel.GetMeterProvider(): a no-op
	// unless the application installed one.
	MeterProvider metric.MeterProvider
	// MetricsOmitEndpoint leaves the endpoint's address out of metric
	// attributes, for services with many endpoints.
	MetricsOmitEndpoint bool

	// OnSubsetChange, if set, is called when the subset's candidates change
	// (Config.Subset; see Engine.SubsetCandidates): the gRPC policy then hands
	// endpointsharding the new list. It is called with the engine's lock
	// held: it must not block nor call the engine.
	OnSubsetChange func()
}

// Engine is the load balancer for one service: it holds the endpoint set, keeps
// an immutable snapshot of the eligible endpoints and their picker, and takes
// back each request's outcome. Both front doors are built on it.
//
// Pick and Done are safe for concurrent use, take no lock and allocate nothing
// (for the built-in algorithms; with metrics on, an endpoint's first outcome
// of each class builds that class's attribute set, once). Membership and condition changes take a mutex
// and build a new snapshot off the pick path (copy on write).
type Engine struct {
	opts Options

	snap atomic.Pointer[snapshot]
	mode atomic.Pointer[mode] // what the configuration means on the request path

	_     [64]byte     // keep total off the snapshot pointer's cache line
	total atomic.Int64 // requests in flight on the engine, if trackTotal
	_     [56]byte

	mu        sync.Mutex
	cfg       Config
	alg       Algorithm
	endpoints map[string]*Endpoint // discovered, by address
	sorted    []*Endpoint          // endpoints sorted by address; nil when membership changed
	draining  map[string]*Endpoint // removed, with requests still in flight
	feedErr   error
	closed    bool
	awaiting  bool // Start began a feed that has not answered (a set or an error) yet
	gotSet    bool // a set has been delivered

	// started is when Start began the feed; picks wait for its first answer
	// until initialDeadline.
	started, initialDeadline time.Time

	panicking bool   // the last snapshot was built in panic (see Config.PanicThreshold)
	updates   uint64 // Update calls, for Endpoint.mark

	// last is the plain (ungrouped) picker the last rebuild made with alg, nil
	// after a grouped one or a new configuration: an Updater makes the next
	// picker from it.
	last Picker
	// Condition changes coalesce (settle): dirty counts the changes made,
	// built is dirty as of the last rebuild, rebuilds counts rebuilds.
	// rebuildMu lets one goroutine at a time settle, so a storm of changes from
	// many goroutines costs one rebuild per wave, not one per change.
	refreshing             bool          // a refresh (a Lagging picker's fresh build) is running
	configs                uint64        // Reconfigure calls, so a refresh can tell its configuration is gone
	refreshes              uint64        // refreshes that landed (for tests)
	pace                   *rate.Limiter // condition-change rebuilds (see settle)
	paced                  *time.Timer   // a paced rebuild is due
	dirty, built, rebuilds uint64
	rebuildMu              sync.Mutex
	flipping               atomic.Int32 // SetCondition calls waiting for mu to make their change

	ev events // the subscribers and the queue of events to deliver

	prot   *protection          // outlier detection, active checks, breakers
	pauses map[*Endpoint]*pause // running pauses (Pause)
	hcMu   sync.Mutex           // serializes syncChecker

	cancel context.CancelFunc // stops the feed started by Start
	unsub  func()             // ends a Subscriber feed's subscription
	wg     sync.WaitGroup

	obs *engineObs // events ring, logs, metrics (observe.go); set by NewEngine

	sub *subsetter // subsetting's ranking and candidates (subset.go); nil when off
}

// mode is what the configuration means on the request path, replaced whole by
// Reconfigure: picks read it from their snapshot, Done from Engine.mode.
type mode struct {
	waitForEndpoints time.Duration
	maxInFlight      int64            // Config.MaxInFlightPerEndpoint, 0 for none
	panicThreshold   float64          // percent; 0 for off
	gated            bool             // a pick must pass admit before it is returned
	detector         *health.Detector // outlier detection, when on
	breakers         bool             // endpoints have circuit breakers
	observer         OutcomeObserver  // the algorithm, if it observes outcomes
	trackTotal       bool             // the algorithm is TotalCounting: keep total
	grouping         *groupingMode    // locality, priority and split (locality.go)
	recordAll        bool             // protections need every outcome, not only failures (see penalty.go)
}

func newMode(cfg Config, alg Algorithm, p *protection) *mode {
	m := &mode{waitForEndpoints: cfg.WaitForEndpoints, maxInFlight: int64(cfg.MaxInFlightPerEndpoint),
		panicThreshold: DefaultPanicThreshold}
	if cfg.PanicThreshold != nil {
		m.panicThreshold = *cfg.PanicThreshold
	}
	m.detector, m.breakers = p.detector, p.breakers != nil
	m.gated = m.maxInFlight > 0 || m.breakers
	m.recordAll = m.breakers || m.detector != nil && m.detector.Periodic()
	m.observer, _ = alg.(OutcomeObserver)
	_, m.trackTotal = alg.(TotalCounting)
	m.grouping = newGroupingMode(cfg, alg)
	return m
}

// snapshot is one immutable view of the eligible endpoints.
type snapshot struct {
	mode         *mode
	picker       Picker
	selfCounting bool
	endpoints    []*Endpoint   // eligible, by address
	all          []*Endpoint   // discovered, by address
	err          error         // returned when picker is nil
	pending      bool          // the feed has not answered yet: picks wait for it
	tolerated    uint32        // conditions picks ignore: in panic, all but NotConnected and removed
	gated        bool          // mode.gated, here to save the pick a load
	trackTotal   bool          // mode.trackTotal, likewise
	changed      chan struct{} // closed when this snapshot is replaced
}

// NewEngine returns an engine with no endpoints. Feed it with Update (it is a
// resolver.Sink) or Start. It rejects an invalid cfg with an error naming the field.
func NewEngine(cfg Config, opts Options) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Rand == nil {
		opts.Rand = rand.Uint64
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	e := &Engine{
		cfg:       cfg,
		alg:       cfg.algorithm(),
		opts:      opts,
		endpoints: map[string]*Endpoint{},
		draining:  map[string]*Endpoint{},
		pauses:    map[*Endpoint]*pause{},
		pace:      rate.NewLimiter(rate.Every(paceEvery), paceBurst),
	}
	e.mu.Lock()
	e.setProtectionLocked(cfg)
	e.mode.Store(newMode(cfg, e.alg, e.prot))
	e.rebuildLocked()
	e.mu.Unlock()
	e.startObserving()
	if cfg.HealthCheck != nil {
		if err := e.startChecker(cfg.HealthCheck); err != nil {
			e.Close()
			return nil, fmt.Errorf("lodestar config: healthCheck: %w", err)
		}
	}
	return e, nil
}

// Config returns the engine's configuration.
func (e *Engine) Config() Config {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cfg
}

// Reconfigure makes the engine run cfg from now on, in place: the endpoint set,
// each endpoint's conditions and live statistics (in flight, outcome counts,
// latency), the feed and the allowEmpty guard's view of the set all stay; the
// picker is rebuilt with cfg's algorithm. An invalid cfg is rejected with an
// error naming the field, and changes nothing. The engine-wide in-flight total
// (for TotalCounting algorithms) stays exact across the change: it counts the
// requests picked while an algorithm that needs it ran, and each endpoint keeps
// how many of its requests are in it (see count and release).
func (e *Engine) Reconfigure(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return ErrClosed
	}
	e.cfg, e.alg, e.last = cfg, cfg.algorithm(), nil
	e.configs++
	retired := e.setProtectionLocked(cfg)
	e.mode.Store(newMode(cfg, e.alg, e.prot))
	e.rebuildLocked()
	start := cfg.HealthCheck != nil && e.prot.checker == nil
	e.mu.Unlock()
	e.dispatch()
	if retired != nil {
		retired.Close()
	}
	if start {
		return e.startChecker(cfg.HealthCheck)
	}
	return nil
}

// Start runs feed into the engine until Close, restarting it with backoff if it
// stops. It may be called once. A feed that is a resolver.Subscriber (the
// static feed) delivers its set before Start returns, and its changes
// synchronously; any other feed is watched on a goroutine of its own, and picks
// wait for its first answer (see Config.InitialDiscoveryTimeout).
func (e *Engine) Start(feed resolver.Feed) {
	e.mu.Lock()
	if e.closed || e.cancel != nil || e.unsub != nil {
		e.mu.Unlock()
		return
	}
	if sub, ok := feed.(resolver.Subscriber); ok {
		e.unsub = func() {} // taken: Start runs once
		e.mu.Unlock()
		// Subscribe delivers the first set, which takes e.mu: call it unlocked.
		cancel := sub.Subscribe(e)
		e.mu.Lock()
		closed := e.closed
		if !closed {
			e.unsub = cancel
		}
		e.mu.Unlock()
		if closed { // Close ran meanwhile and saw the placeholder
			cancel()
		}
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	if !e.gotSet && e.feedErr == nil {
		timeout := e.cfg.InitialDiscoveryTimeout
		if timeout == 0 {
			timeout = DefaultInitialDiscoveryTimeout
		}
		e.awaiting, e.started = true, time.Now()
		e.initialDeadline = e.started.Add(timeout)
		e.rebuildLocked()
	}
	e.wg.Add(1) // under the lock: Close, which takes it, then waits for this goroutine
	e.mu.Unlock()
	go func() {
		defer e.wg.Done()
		resolver.Run(ctx, feed, e, resolver.RunOptions{})
	}()
}

// Close stops the feed, waits for it, and fails every later and waiting pick
// with ErrClosed. Requests in flight finish normally.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	checker := e.stopProtectionLocked()
	for ep, p := range e.pauses {
		p.timer.Stop()
		delete(e.pauses, ep)
	}
	if e.paced != nil {
		e.paced.Stop() // one that already fired finds the engine closed
		e.paced = nil
	}
	cancel, unsub := e.cancel, e.unsub
	e.publishLocked(&snapshot{mode: e.mode.Load(), err: ErrClosed, changed: make(chan struct{})})
	e.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	if unsub != nil {
		unsub()
	}
	if checker != nil {
		checker.Close()
	}
	e.wg.Wait()
	e.stopObserving()
	return nil
}

// Pick chooses an endpoint for a request and counts it in flight; the caller must
// call Done with its outcome. With no eligible endpoint it returns a
// *NoEndpointsError at once, or waits up to Config.WaitForEndpoints; a context
// that ends first gives the context's error. Before the feed has answered at
// all, it waits for that first answer, up to Config.InitialDiscoveryTimeout
// after the engine was made and never past the context, and then fails with a
// *DiscoveryPendingError.
//
// Pick never returns an endpoint that was ineligible (removed, or under a
// condition) before the pick counted it in flight: a pick that races a removal
// or a SetCondition either is seen by it (the removed endpoint then drains only
// after this request's Done) or sees it and picks again.
func (e *Engine) Pick(info PickInfo) (*Endpoint, error) {
	s := e.snap.Load()
	if s.picker == nil {
		return e.pickFailed(info, s, s.err, nil)
	}
	ep, err := s.picker.Pick(info)
	if err != nil {
		return e.pickFailed(info, s, err, nil)
	}
	e.count(s, ep)
	// The count was raised before this load, and Update stores the removal
	// before it reads the count (both sequentially consistent atomics), so
	// either this load sees the removal or the drain sees the count. The same
	// load keeps a condition set meanwhile (SetCondition) from being ignored.
	if ep.conds.Load()&^s.tolerated == 0 && !s.gated {
		return ep, nil
	}
	return e.repick(info, s, ep, nil)
}

// PickAvoiding is Pick for a retry: it does not return an endpoint of avoid
// (those the request has tried already: Envoy's previous-hosts predicate)
// while another eligible one admits the request. It asks the picker a few
// times, then scans the eligible endpoints from a random start; when every
// one is avoided (or at its limit) it returns one of them rather than fail.
// Pickers never see avoid. With an empty avoid it is Pick; a request's first
// attempt calls Pick, whose path this leaves unchanged.
func (e *Engine) PickAvoiding(info PickInfo, avoid []*Endpoint) (*Endpoint, error) {
	if len(avoid) == 0 {
		return e.Pick(info)
	}
	s := e.snap.Load()
	if s.picker == nil {
		return e.pickFailed(info, s, s.err, avoid)
	}
	ep, err := s.picker.Pick(info)
	if err != nil {
		return e.pickFailed(info, s, err, avoid)
	}
	e.count(s, ep)
	return e.repick(info, s, ep, avoid)
}

// avoided reports whether ep is in avoid.
func avoided(avoid []*Endpoint, ep *Endpoint) bool {
	for _, a := range avoid {
		if a == ep {
			return true
		}
	}
	return false
}

// pickFailed applies the rules for a pick from s that found no endpoint: fail at
// once, or wait for the first answer or for endpoints.
func (e *Engine) pickFailed(info PickInfo, s *snapshot, err error, avoid []*Endpoint) (*Endpoint, error) {
	if !s.pending && (s.mode.waitForEndpoints == 0 || !waitable(err)) {
		return nil, err
	}
	return e.pickSlow(info, s, err, avoid)
}

// waitable reports whether a pick that failed with err may wait for endpoints.
func waitable(err error) bool {
	return err != ErrClosed && (errors.Is(err, ErrNoEndpoints) || errors.Is(err, ErrDiscoveryPending))
}

// repick is the pick's slow path once the picker chose ep (counted in flight):
// ep became ineligible between the load of s and the count, or s is gated
// (Config.MaxInFlightPerEndpoint). It returns ep if it may go, or takes its
// count back and picks again: from a snapshot that no longer offers a
// removed or conditioned endpoint, or, when ep is only at its limit, up to a
// few more times and then by a scan for any endpoint under the limit.
func (e *Engine) repick(info PickInfo, s *snapshot, ep *Endpoint, avoid []*Endpoint) (*Endpoint, error) {
	busy := 0 // picks that found their endpoint at its limit, or avoided
	for {
		if ep.conds.Load()&^s.tolerated == 0 {
			if avoid != nil && len(s.endpoints) > 1 && avoided(avoid, ep) {
				// Tried already: pick again a few times, then scan for one
				// not tried, and take a tried one only if none is left.
				e.release(ep)
				if busy++; busy >= min(len(s.endpoints), 4) {
					return e.scanAvoiding(s, avoid)
				}
			} else if e.admit(s, ep) {
				return ep, nil
			} else {
				e.release(ep)
				if busy++; busy >= min(len(s.endpoints), 4) {
					return e.scanAvoiding(s, avoid)
				}
			}
		} else {
			e.release(ep)
			// Whoever made ep ineligible publishes a new snapshot right after
			// (the condition is stored under the engine's lock, then the
			// rebuild runs): wait for it rather than pick from s again, and
			// never past the request's context.
			if e.snap.Load() == s {
				var done <-chan struct{}
				if info.Ctx != nil {
					done = info.Ctx.Done()
				}
				select {
				case <-s.changed:
				case <-done:
					return nil, info.Ctx.Err()
				}
			}
			if s = e.snap.Load(); s.picker == nil {
				return e.pickFailed(info, s, s.err, avoid)
			}
		}
		var err error
		if ep, err = s.picker.Pick(info); err != nil {
			return e.pickFailed(info, s, err, avoid)
		}
		e.count(s, ep)
	}
}

// admit reports whether ep, counted in flight, may take the request: it is
// within Config.MaxInFlightPerEndpoint (counting this request; a request
// turned away here was never sent, so the limit is never exceeded by requests
// that are).
func (e *Engine) admit(s *snapshot, ep *Endpoint) bool {
	if s.mode.maxInFlight > 0 && ep.inflight.Load() > s.mode.maxInFlight {
		return false
	}
	if ep.gate.Load()&gateHalfOpen != 0 && s.tolerated == 0 {
		// Half-open breaker: only its probes go through (claimed atomically).
		if b := ep.brk.Load(); b != nil && !b.Allow() {
			return false
		}
	}
	return true
}

// scan looks for any endpoint of s that admits a request, from a random start,
// after the picker's choices were all at their limit; none gives an
// *OverloadedError.
func (e *Engine) scan(s *snapshot) (*Endpoint, error) {
	n := len(s.endpoints)
	start := int(e.opts.Rand() % uint64(n))
	for i := range n {
		ep := s.endpoints[(start+i)%n]
		e.acquire(ep, s.trackTotal)
		if ep.conds.Load()&^s.tolerated == 0 && e.admit(s, ep) {
			return ep, nil
		}
		e.release(ep)
	}
	return nil, &OverloadedError{Service: e.opts.Service, Endpoints: n, Limit: int(s.mode.maxInFlight)}
}

// scanAvoiding is scan preferring endpoints not in avoid: it scans for one
// that is not avoided and admits the request, and falls back to scan (any
// endpoint, avoided ones included) when there is none.
func (e *Engine) scanAvoiding(s *snapshot, avoid []*Endpoint) (*Endpoint, error) {
	if len(avoid) == 0 {
		return e.scan(s)
	}
	n := len(s.endpoints)
	start := int(e.opts.Rand() % uint64(n))
	for i := range n {
		ep := s.endpoints[(start+i)%n]
		if avoided(avoid, ep) {
			continue
		}
		e.acquire(ep, s.trackTotal)
		if ep.conds.Load()&^s.tolerated == 0 && e.admit(s, ep) {
			return ep, nil
		}
		e.release(ep)
	}
	return e.scan(s)
}

// count counts a pick from s in flight, unless s's picker counts for itself.
func (e *Engine) count(s *snapshot, ep *Endpoint) {
	if !s.selfCounting {
		e.acquire(ep, s.trackTotal)
	} else if s.trackTotal { // the picker counted ep and the total itself
		ep.inTotal.Add(1)
	}
}

// acquire counts a request in flight on ep, and in the engine's total when the
// algorithm needs it (see release).
func (e *Engine) acquire(ep *Endpoint, trackTotal bool) {
	ep.inflight.Add(1)
	if trackTotal {
		e.total.Add(1)
		ep.inTotal.Add(1)
	}
}

// release takes back one request in flight on ep and completes its drain if that
// was the last one.
//
// The engine-wide total counts only requests picked while the algorithm needed
// it, and a Reconfigure may change that between a pick and its Done; so each
// endpoint counts how many of its requests are in the total (inTotal), and a
// release takes one out of the total only while that count is positive. The
// requests on an endpoint are interchangeable, so the total stays exactly the
// sum of the endpoints' inTotal, and reaches 0 when nothing is in flight.
func (e *Engine) release(ep *Endpoint) {
	n := ep.inflight.Add(-1)
	if ep.inTotal.Load() > 0 {
		e.releaseTotal(ep)
	}
	if n == 0 {
		e.finishDrain(ep) // returns at once unless ep was removed
	}
}

// releaseTotal takes one of ep's requests out of the engine's total, if one of
// them is still in it (see release). Kept out of line so that release inlines.
//
//go:noinline
func (e *Engine) releaseTotal(ep *Endpoint) {
	for t := ep.inTotal.Load(); t > 0; t = ep.inTotal.Load() {
		if ep.inTotal.CompareAndSwap(t, t-1) {
			e.total.Add(-1) // after the endpoint's: the total never trails the sum
			return
		}
	}
}

// pickSlow waits for the feed's first answer (while s is pending) or for a
// snapshot with endpoints (Config.WaitForEndpoints); err is why the last pick
// failed.
func (e *Engine) pickSlow(info PickInfo, s *snapshot, err error, avoid []*Endpoint) (*Endpoint, error) {
	ctx := info.Ctx
	if ctx == nil {
		ctx = context.Background()
	}
	// The first-answer wait and the WaitForEndpoints wait, each started once needed.
	var initial, wait *time.Timer
	defer func() {
		for _, t := range []*time.Timer{initial, wait} {
			if t != nil {
				t.Stop()
			}
		}
	}()
	for {
		var expired <-chan time.Time
		if s.pending {
			if initial == nil {
				left := time.Until(e.initialDeadline)
				if left <= 0 {
					return nil, e.pendingError(s, nil)
				}
				initial = time.NewTimer(left)
			}
			expired = initial.C
		} else if s.mode.waitForEndpoints > 0 && waitable(err) {
			if wait == nil {
				wait = time.NewTimer(s.mode.waitForEndpoints)
			}
			expired = wait.C
		} else {
			return nil, err
		}
		select {
		case <-ctx.Done():
			if s.pending {
				return nil, e.pendingError(s, ctx.Err())
			}
			return nil, ctx.Err()
		case <-expired:
			if s.pending {
				return nil, e.pendingError(s, nil)
			}
			return nil, err
		case <-s.changed:
		}
		if s = e.snap.Load(); s.picker == nil {
			err = s.err
			continue
		}
		ep, perr := s.picker.Pick(info)
		if perr != nil {
			err = perr
			continue
		}
		e.count(s, ep)
		if ep.conds.Load()&^s.tolerated == 0 && !s.gated && avoid == nil {
			return ep, nil
		}
		return e.repick(info, s, ep, avoid)
	}
}

// pendingError is the error of a pick that stopped waiting for the feed's first
// answer, because of ctxErr or, when that is nil, the initial timeout.
func (e *Engine) pendingError(s *snapshot, ctxErr error) error {
	pe := *s.err.(*DiscoveryPendingError)
	pe.Waited = time.Since(e.started).Round(time.Millisecond)
	pe.CtxErr = ctxErr
	return &pe
}

// Done reports the outcome of a request Pick gave ep for. Call it exactly once
// per successful Pick.
func (e *Engine) Done(ep *Endpoint, o outcome.Outcome) {
	if int(o.Class) < len(ep.outcomes) {
		ep.outcomes[o.Class].Add(1)
	}
	m := e.mode.Load()
	if m.observer != nil {
		at := o.At
		if at.IsZero() {
			at = e.opts.Now()
		}
		m.observer.Observe(ep, o, at)
	}
	// Failures, and the outcomes after them, go the slow way (penalty.go).
	if ep.penalty.Load() != 0 || o.Class.Failure() {
		e.failed(m, ep, o)
	} else if m.recordAll {
		e.record(m, ep, o)
	}
	if ob := ep.obs; ob != nil { // recent latencies, duration histogram (observe.go)
		ob.record(o)
	}
	// release, by hand: Done is the hot path and release does not inline.
	n := ep.inflight.Add(-1)
	if ep.inTotal.Load() > 0 {
		e.releaseTotal(ep)
	}
	if n == 0 {
		e.finishDrain(ep)
	}
}

// Endpoints returns every discovered endpoint (eligible or not), by address.
func (e *Engine) Endpoints() []*Endpoint { return slices.Clone(e.snap.Load().all) }

// Eligible returns the endpoints picks currently choose from, by address.
func (e *Engine) Eligible() []*Endpoint { return slices.Clone(e.snap.Load().endpoints) }

// Endpoint returns the discovered endpoint at addr, or nil.
func (e *Engine) Endpoint(addr string) *Endpoint {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.endpoints[addr]
}

// Update replaces the endpoint set (it implements resolver.Sink). Invalid
// entries are dropped and reported; an empty set is believed only with
// Config.AllowEmpty. Endpoints that remain keep their live statistics; removed
// ones drain.
func (e *Engine) Update(eps []resolver.Endpoint) {
	// Validate without copying the answer unless something must be dropped:
	// at 10,000 endpoints the copy alone was a megabyte per update.
	valid := eps
	var bad []string
	known := matchKnown(eps, e.snap.Load().all)
	for i := range eps {
		if known != nil && known[i].ep != nil {
			continue // a member with this very record: validated when it came
		}
		if err := eps[i].Validate(); err != nil {
			if bad == nil {
				valid = slices.Clone(eps[:i])
			}
			bad = append(bad, err.Error())
			continue
		}
		if bad != nil {
			valid = append(valid, eps[i])
		}
	}
	if bad != nil {
		known = nil // indexes of eps, not of valid
	}

	var drained []*Endpoint
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	if len(valid) == 0 && len(e.endpoints) > 0 && !e.cfg.AllowEmpty {
		n := len(e.endpoints)
		e.mu.Unlock()
		e.reportBad(bad)
		e.ReportError(fmt.Errorf("discovery returned an empty set; keeping the last %d endpoints (set allowEmpty to believe empty answers)", n))
		return
	}
	e.awaiting, e.gotSet = false, true
	// Each endpoint of the answer is marked with this update's number: a
	// second entry for a marked address is a duplicate, and an endpoint left
	// unmarked was removed (no map of the answer's addresses to build).
	e.updates++
	gen := e.updates
	now := e.opts.Now()
	var added, removedN int
	var newEps []*Endpoint
	for i := range valid {
		info := &valid[i]
		// A member matched before the lock is still one (members are exactly
		// the endpoints not removed) with the same record if its record was
		// not replaced meanwhile: no lookup, no comparison.
		if known != nil {
			if k := known[i]; k.ep != nil && !k.ep.Removed() && k.ep.info.Load() == k.info {
				if k.ep.mark == gen {
					bad = append(bad, "duplicate address "+info.Address)
				}
				k.ep.mark = gen
				continue
			}
		}
		if ep, ok := e.endpoints[info.Address]; ok {
			if ep.mark == gen {
				bad = append(bad, "duplicate address "+info.Address)
				continue
			}
			ep.mark = gen
			if !ep.Info().Equal(*info) {
				ep.setInfo(*info)
			}
			continue
		}
		ep, ok := e.draining[info.Address]
		if ok { // back before it drained: it keeps its statistics
			delete(e.draining, info.Address)
			ep.setInfo(*info)
			ep.setCondition(removed, false, now)
		} else {
			ep = newEndpoint(*info, now)
			ep.conds.Store(uint32(e.opts.InitialConditions &^ removed))
		}
		ep.mark = gen
		e.endpoints[info.Address] = ep
		e.attachLocked(ep, e.prot, false)
		newEps = append(newEps, ep)
		added++
		e.emit(Event{Kind: EndpointAdded, Address: ep.addr, New: ep.Conditions(), At: now})
	}
	if len(bad) == 0 {
		e.feedErr = nil
	}
	// The members before this update are e.sorted (a slice walks faster than
	// the map), unless it is stale.
	before := e.sorted
	if len(before)+added != len(e.endpoints) {
		before = make([]*Endpoint, 0, len(e.endpoints))
		for _, ep := range e.endpoints {
			before = append(before, ep)
		}
	}
	for _, ep := range before {
		if ep.mark == gen {
			continue
		}
		addr := ep.addr
		delete(e.endpoints, addr)
		ep.setCondition(removed, true, now)
		removedN++
		e.emit(Event{Kind: EndpointRemoved, Address: addr, Old: ep.Conditions(), New: ep.Conditions(), At: now})
		if ep.inflight.Load() == 0 {
			drained = append(drained, ep)
		} else {
			e.draining[addr] = ep
		}
	}
	if added > 0 || removedN > 0 {
		e.sorted = mergeSorted(e.sorted, newEps)
	}
	e.rebuildLocked()
	e.mu.Unlock()
	e.dispatch()
	e.reportBad(bad)
	e.observeAnswer() // metrics, the recovery log line (observe.go)
	if added > 0 || removedN > 0 {
		e.syncChecker()
	}

	if added > 0 || removedN > 0 {
		e.opts.Logger.Debug("lodestar: endpoints changed", "service", e.opts.Service,
			"added", added, "removed", removedN, "total", len(valid)-len(bad))
	}
	for _, ep := range drained {
		e.notifyDrained(ep)
	}
}

// knownEntry pairs an entry of a discovery answer with the member that has
// the same record (see matchKnown).
type knownEntry struct {
	ep   *Endpoint
	info *resolver.Endpoint // ep's record when matched
}

// matchKnown pairs each entry of eps with the member of all (the snapshot in
// force, sorted by address) at the same address whose record equals it, in
// one merge pass, when eps is sorted by address as the feeds deliver it; nil
// when it is not sorted. Update skips validating and looking up such
// entries: at 10,000 endpoints those were most of an update's cost.
func matchKnown(eps []resolver.Endpoint, all []*Endpoint) []knownEntry {
	if len(eps) < 64 || len(all) == 0 {
		return nil
	}
	known := make([]knownEntry, len(eps))
	c := 0
	for i := range eps {
		a := eps[i].Address
		if i > 0 && a < eps[i-1].Address {
			return nil
		}
		for c < len(all) && all[c].addr < a {
			c++
		}
		if c < len(all) && all[c].addr == a {
			if info := all[c].info.Load(); sameRecord(info, &eps[i]) {
				known[i] = knownEntry{all[c], info}
			}
		}
	}
	return known
}

// sameRecord is resolver.Endpoint.Equal without copying either record.
func sameRecord(a, b *resolver.Endpoint) bool {
	return a.Address == b.Address && a.EffectiveWeight() == b.EffectiveWeight() &&
		a.Locality == b.Locality && a.Priority == b.Priority && maps.Equal(a.Metadata, b.Metadata)
}

// reportBad reports the entries Update dropped, if any.
func (e *Engine) reportBad(bad []string) {
	if len(bad) > 0 {
		e.ReportError(fmt.Errorf("discovery answer: dropped %d invalid endpoint(s): %s", len(bad), strings.Join(bad, "; ")))
	}
}

// ReportError records a discovery error (it implements resolver.Sink). The
// endpoint set in force stays; the error shows in no-endpoint errors and logs.
func (e *Engine) ReportError(err error) {
	e.mu.Lock()
	defer func() { e.mu.Unlock(); e.dispatch() }()
	if e.closed {
		return
	}
	e.emit(Event{Kind: DiscoveryError, Why: err.Error()}) // logged, rate-limited, by observe
	e.feedErr = err
	if e.awaiting || len(e.snap.Load().endpoints) == 0 {
		e.awaiting = false
		e.rebuildLocked() // carry the error into the no-endpoints error, end the first wait
	}
}

// SetCondition sets (on) or clears a condition on the endpoint at addr and
// rebuilds the picker if the endpoint's eligibility changed. It reports whether
// the endpoint is known. A pick that starts after SetCondition returns never
// returns an endpoint it made ineligible. The change is published before
// SetCondition returns, except in a storm of changes (more than 64 in a
// burst, then more than one a millisecond): then it is published by the
// next paced rebuild, at most a millisecond later, which is also when an
// endpoint it made eligible starts taking picks, and when a pick that met an
// endpoint it made ineligible goes on (see settle).
func (e *Engine) SetCondition(addr string, c Condition, on bool) bool {
	return e.SetConditionWhy(addr, c, on, "")
}

// SetConditionWhy is SetCondition with a reason, which the ConditionChanged
// event carries ("5 consecutive failures", "health check: status 503").
func (e *Engine) SetConditionWhy(addr string, c Condition, on bool, why string) bool {
	c &^= removed
	var gen uint64
	e.flipping.Add(1)
	e.mu.Lock()
	e.flipping.Add(-1)
	ep, ok := e.endpoints[addr]
	if ok && !e.closed && e.setConditionLocked(ep, c, on, why) {
		gen = e.changedLocked()
	}
	e.mu.Unlock()
	e.settle(gen)
	e.dispatch()
	return ok
}

// changedLocked records a condition change that needs a rebuild and returns
// its number, for settle.
func (e *Engine) changedLocked() uint64 {
	e.dirty++
	return e.dirty
}

// settle publishes change number gen (from changedLocked): it rebuilds,
// unless a rebuild that began after the change (another goroutine's settle,
// an Update) already covered it, or the pace (paceBurst, paceEvery) defers
// it to a paced rebuild, which covers every change made until it runs. Many
// goroutines changing conditions at once (an ejection storm, a burst of
// breaker trips) wait here for one another, and each wave costs one rebuild;
// past the burst, a storm costs one rebuild a millisecond however many
// changes it makes. A pick that meets an endpoint whose condition is set but
// not yet published sees the condition when it counts the pick and picks
// again from the next snapshot (repick), so no pick that starts after
// SetCondition returns gets an endpoint it made ineligible. gen 0 is no
// change.
func (e *Engine) settle(gen uint64) {
	if gen == 0 {
		return
	}
	e.rebuildMu.Lock()
	e.mu.Lock()
	// Goroutines waiting for the lock to make their own change (SetCondition)
	// are let in first, a few rounds at most, so this rebuild covers theirs:
	// otherwise each would take the lock just after this rebuild and need one
	// of its own.
	for range 8 {
		if e.built >= gen || e.flipping.Load() == 0 {
			break
		}
		e.mu.Unlock()
		runtime.Gosched()
		e.mu.Lock()
	}
	if e.built < gen && !e.closed {
		switch {
		case e.paced != nil:
			// A paced rebuild is due: it will cover this change.
		case !e.pace.Allow():
			e.paced = time.AfterFunc(paceEvery, e.pacedRebuild)
		default:
			e.rebuildLocked()
		}
	}
	e.mu.Unlock()
	e.rebuildMu.Unlock()
}

// Condition changes rebuild at once up to paceBurst in a burst, then at most
// once every paceEvery (golang.org/x/time/rate), so a storm's rebuilds, and
// their CPU, are bounded by time, not by the number of changes.
const (
	paceBurst = 64
	paceEvery = time.Millisecond
)

// pacedRebuild publishes the changes made since the last rebuild, when the
// pace held them back.
func (e *Engine) pacedRebuild() { e.flush() }

// settled returns once every condition change made so far is published (the
// paced rebuild it would wait for, it makes now) and every event is
// delivered. For tests.
func (e *Engine) settled() { e.flush(); e.delivered() }

// flush publishes every condition change not yet published, and drops a
// paced rebuild that is due (this one covers its changes).
func (e *Engine) flush() {
	e.rebuildMu.Lock()
	e.mu.Lock()
	if e.paced != nil {
		e.paced.Stop() // when pacedRebuild itself runs, it has fired: no-op
		e.paced = nil
	}
	if e.built < e.dirty && !e.closed {
		e.rebuildLocked()
	}
	e.mu.Unlock()
	e.rebuildMu.Unlock()
	e.dispatch()
}

// setConditionLocked sets or clears c on ep, emits the change, and reports
// whether ep's conditions changed, so that the picker must be rebuilt: not
// only when ep's own eligibility flips, because panic (which counts the
// connected and the usable endpoints, and tolerates some conditions) and the
// no-endpoint error's reasons depend on every condition.
func (e *Engine) setConditionLocked(ep *Endpoint, c Condition, on bool, why string) bool {
	old := Condition(ep.conds.Load())
	ep.setCondition(c, on, e.opts.Now())
	cur := Condition(ep.conds.Load())
	if cur == old {
		return false
	}
	e.emit(Event{Kind: ConditionChanged, Address: ep.addr, Old: old &^ internalConds, New: cur &^ internalConds, Why: why})
	return true
}

// MaxPause bounds Engine.Pause.
const MaxPause = time.Minute

// Pause keeps the endpoint at addr out of new picks for d (at most MaxPause),
// with the Paused condition: the front doors call it when an endpoint answers
// that it is overloaded and says for how long (HTTP Retry-After on a 429 or
// 503), so the others serve meanwhile. A later Pause extends it; the pause
// ends on its own. It reports whether the endpoint is known.
func (e *Engine) Pause(addr string, d time.Duration, why string) bool {
	d = min(d, MaxPause)
	if d <= 0 {
		return false
	}
	e.mu.Lock()
	ep, ok := e.endpoints[addr]
	if !ok || e.closed {
		e.mu.Unlock()
		return ok
	}
	until := time.Now().Add(d)
	if old, ok := e.pauses[ep]; ok && old.until.After(until) {
		e.mu.Unlock()
		return true
	} else if ok {
		old.timer.Stop()
	}
	p := &pause{until: until}
	p.timer = time.AfterFunc(d, func() { e.endPause(ep, p) })
	e.pauses[ep] = p
	var gen uint64
	if e.setConditionLocked(ep, Paused, true, fmt.Sprintf("%s: paused for %v", why, d)) {
		gen = e.changedLocked()
	}
	e.mu.Unlock()
	e.settle(gen)
	e.dispatch()
	return true
}

// pause is an endpoint's running pause.
type pause struct {
	until time.Time
	timer *time.Timer
}

// endPause lifts p, unless a later Pause replaced it.
func (e *Engine) endPause(ep *Endpoint, p *pause) {
	var gen uint64
	e.mu.Lock()
	if e.pauses[ep] == p {
		delete(e.pauses, ep)
		if !e.closed && e.setConditionLocked(ep, Paused, false, "pause over") {
			gen = e.changedLocked()
		}
	}
	e.mu.Unlock()
	e.settle(gen)
	e.dispatch()
}

// Panicking reports whether the engine is in panic (see Config.PanicThreshold).
func (e *Engine) Panicking() bool { return e.snap.Load().tolerated != 0 }

// finishDrain hands a removed endpoint whose last request finished to OnDrained,
// once, unless discovery brought it back meanwhile.
func (e *Engine) finishDrain(ep *Endpoint) {
	if !ep.Removed() {
		return
	}
	e.mu.Lock()
	cur, ok := e.draining[ep.addr]
	if !ok || cur != ep || ep.inflight.Load() != 0 || !ep.Removed() {
		e.mu.Unlock()
		return
	}
	delete(e.draining, ep.addr)
	e.mu.Unlock()
	e.notifyDrained(ep)
}

func (e *Engine) notifyDrained(ep *Endpoint) {
	if b := ep.brk.Swap(nil); b != nil {
		b.Close()
	}
	e.emit(Event{Kind: EndpointDrained, Address: ep.addr, Old: ep.Conditions(), New: ep.Conditions()})
	e.dispatch()
	if e.opts.OnDrained != nil {
		e.opts.OnDrained(ep)
	}
}

// rebuildLocked builds and publishes a snapshot of the current set.
func (e *Engine) rebuildLocked() {
	e.built = e.dirty
	e.rebuilds++
	all := e.sorted
	if all == nil || len(all) != len(e.endpoints) {
		all = make([]*Endpoint, 0, len(e.endpoints))
		for _, ep := range e.endpoints {
			all = append(all, ep)
		}
		slices.SortFunc(all, byAddress)
		e.sorted = all // shared by snapshots, never modified
	}
	m := e.mode.Load()
	// Subsetting (subset.go): picks consider only the subset's candidates;
	// the snapshot's all stays every discovered endpoint.
	discovered := all
	all = e.subsetLocked(all, m)
	eligible := make([]*Endpoint, 0, len(all))
	connected := 0
	for _, ep := range all {
		if ep.eligible() {
			eligible = append(eligible, ep)
		}
		// Not connected, breaker-open and paused endpoints are outside the
		// count: they are out by the front door's or their own say, which
		// panic does not override.
		if Condition(ep.conds.Load())&(NotConnected|BreakerOpen|Paused) == 0 {
			connected++
		}
	}
	var tolerated Condition
	usable := len(eligible)
	// Locality, priority tiers and splits: nil when none applies.
	gp := m.grouping.plan(e, all, m.panicThreshold)
	if gp != nil {
		eligible, tolerated = gp.endpoints, gp.tolerated
	} else if m.panicThreshold > 0 && connected > 0 && float64(usable)*100 < m.panicThreshold*float64(connected) {
		// Panic: too few usable endpoints to carry the load; spread it over
		// every connected one instead (Envoy's panic threshold).
		tolerated = Unhealthy | Ejected
		eligible = eligible[:0]
		for _, ep := range all {
			if Condition(ep.conds.Load())&^tolerated == 0 {
				eligible = append(eligible, ep)
			}
		}
	}
	if panicking := tolerated != 0; panicking != e.panicking && !e.closed {
		e.panicking = panicking
		kind, why := PanicEnded, fmt.Sprintf("%d of %d connected endpoints usable", usable, connected)
		if panicking {
			kind = PanicStarted
			why = fmt.Sprintf("only %d of %d connected endpoints usable, below the %v%% panic threshold: spreading over all of them",
				usable, connected, m.panicThreshold)
			if gp != nil {
				why = gp.why
			}
			e.opts.Logger.Warn("lodestar: panic mode", "service", e.opts.Service, "why", why)
		} else {
			e.opts.Logger.Info("lodestar: panic mode ended", "service", e.opts.Service, "why", why)
		}
		e.emit(Event{Kind: kind, Why: why})
	}
	s := &snapshot{mode: m, endpoints: eligible, all: discovered, tolerated: uint32(tolerated), gated: m.gated, trackTotal: m.trackTotal, changed: make(chan struct{})}
	if len(eligible) > 0 {
		bi := BuildInfo{Endpoints: eligible, Members: all, Now: e.opts.Now, Rand: e.opts.Rand}
		if s.trackTotal {
			bi.AddTotalInFlight = e.total.Add
		}
		if gp != nil {
			s.picker, e.last = gp.picker(e.alg, bi), nil
		} else if u, ok := e.last.(Updater); ok {
			s.picker = u.Update(bi)
			e.last = s.picker
			if l, ok := s.picker.(Lagging); ok && l.Lagging() && !e.refreshing && !e.closed {
				e.refreshing = true
				e.wg.Add(1)
				go e.refresh(e.alg, e.configs, bi)
			}
		} else {
			s.picker = e.alg.Build(bi)
			e.last = s.picker
		}
		_, s.selfCounting = s.picker.(SelfCounting)
	} else if !e.gotSet && (e.awaiting || e.feedErr != nil) {
		s.pending = e.awaiting
		s.err = &DiscoveryPendingError{Service: e.opts.Service, Target: e.opts.Target, FeedErr: e.feedErr}
	} else {
		s.err = &NoEndpointsError{Service: e.opts.Service, Reason: reason(all), FeedErr: e.feedErr}
	}
	e.publishLocked(s)
}

// refresh builds alg's picker for bi afresh, off the lock, for a Lagging
// picker, and makes it the one the next pickers are updated from: it rebuilds
// at once, so the fresh build (carried to the current set by Update) is
// published, unless the configuration changed meanwhile.
func (e *Engine) refresh(alg Algorithm, configs uint64, bi BuildInfo) {
	defer e.wg.Done()
	p := alg.Build(bi)
	e.rebuildMu.Lock()
	e.mu.Lock()
	e.refreshing = false
	if !e.closed && e.configs == configs && e.last != nil {
		e.refreshes++
		e.last = p
		e.rebuildLocked()
	}
	e.mu.Unlock()
	e.rebuildMu.Unlock()
	e.dispatch()
}

// mergeSorted returns a new slice: the endpoints of old (sorted by address)
// that discovery has not removed, merged with added, in address order. It costs
// O(n + a log a) where a full sort costs O(n log n) string comparisons.
func mergeSorted(old, added []*Endpoint) []*Endpoint {
	slices.SortFunc(added, byAddress)
	out := make([]*Endpoint, 0, len(old)+len(added))
	i := 0
	for _, ep := range old {
		if ep.Removed() {
			continue
		}
		for i < len(added) && byAddress(added[i], ep) < 0 {
			out = append(out, added[i])
			i++
		}
		out = append(out, ep)
	}
	return append(out, added[i:]...)
}

func (e *Engine) publishLocked(s *snapshot) {
	if old := e.snap.Swap(s); old != nil {
		close(old.changed)
	}
}

// reason explains why none of all is eligible.
func reason(all []*Endpoint) string {
	if len(all) == 0 {
		return "discovery has found no endpoints"
	}
	counts := make([]int, len(conditionNames))
	for _, ep := range all {
		c := ep.Conditions()
		for i, n := range conditionNames {
			if c&n.c != 0 {
				counts[i]++
			}
		}
	}
	var parts []string
	for i, n := range conditionNames {
		if counts[i] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[i], n.name))
		}
	}
	return fmt.Sprintf("all %d endpoints are unavailable (%s)", len(all), strings.Join(parts, ", "))
}
