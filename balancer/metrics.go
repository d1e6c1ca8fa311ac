package balancer

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/lodestar-go/lodestar/balancer/outcome"
)

// The engine's OpenTelemetry instruments. Every figure is read from what the
// engine keeps anyway, so that metrics cost the request path nothing but the
// latency histogram's one Record in Done:
//
//   - observable instruments, read at collection time from the endpoints'
//     atomics (outcome counts, in flight) and the snapshot (endpoint states,
//     panic);
//   - counters fed by the engine's events (ejections, breaker transitions,
//     discovery answers and errors), which are state changes, never per
//     request;
//   - the attempt duration histogram, recorded in Done with an attribute set
//     computed once per endpoint (no allocation; see TestDoneRecordsWithoutAllocating).
//
// Attributes are the service, the door and (unless turned off) the endpoint;
// nothing per request.

// MeterName is the instrumentation scope name of lodestar's meters.
const MeterName = "github.com/lodestar-go/lodestar"

// Metric names and attribute keys, in OpenTelemetry semantic-convention style.
const (
	// MetricAttempts counts attempts reported back by Done, by outcome class.
	MetricAttempts = "lodestar.client.attempts"
	// MetricAttemptDuration is the histogram of attempt latencies, in seconds.
	MetricAttemptDuration = "lodestar.client.attempt.duration"
	// MetricActiveRequests is the number of requests in flight.
	MetricActiveRequests = "lodestar.client.active_requests"
	// MetricEndpoints counts discovered endpoints by state (AttrEndpointState).
	MetricEndpoints = "lodestar.client.endpoints"
	// MetricPanic is 1 while the balancer is in panic mode, else 0.
	MetricPanic = "lodestar.client.panic"
	// MetricEjections counts outlier ejections, by detector (AttrDetector).
	MetricEjections = "lodestar.client.ejections"
	// MetricUnejections counts ejections that ended, by reason (AttrReason).
	MetricUnejections = "lodestar.client.unejections"
	// MetricBreakerChanges counts breaker state changes, by the state entered.
	MetricBreakerChanges = "lodestar.client.breaker.transitions"
	// MetricDiscoveryUpdates counts endpoint sets received from discovery.
	MetricDiscoveryUpdates = "lodestar.client.discovery.updates"
	// MetricDiscoveryErrors counts discovery errors.
	MetricDiscoveryErrors = "lodestar.client.discovery.errors"

	// The front doors' retry instruments, by service and door (the HTTP
	// Transport's per service, the gRPC retry interceptors' per channel).

	// MetricRetries counts retries sent (the retry budget's withdrawals,
	// hedges included).
	MetricRetries = "lodestar.client.retries"
	// MetricRetryBudgetExhausted counts retries and hedges the budget refused.
	MetricRetryBudgetExhausted = "lodestar.client.retry_budget.exhausted"
	// MetricHedges counts hedged attempts sent.
	MetricHedges = "lodestar.client.hedges"

	// AttrService is the service: a Transport's service name, or a gRPC
	// channel's target endpoint.
	AttrService = "lodestar.service"
	// AttrDoor is the front door: "http" or "grpc".
	AttrDoor = "lodestar.door"
	// AttrOutcome is an outcome class name (outcome.Class.String).
	AttrOutcome = "lodestar.outcome"
	// AttrEndpointState is an endpoint state: eligible, not_connected,
	// unhealthy, ejected, breaker_open or paused.
	AttrEndpointState = "lodestar.endpoint.state"
	// AttrDetector is the outlier detector that ejected an endpoint
	// (consecutive_failures, success_rate, latency, ...).
	AttrDetector = "lodestar.detector"
	// AttrReason is why an ejection ended: expired, health_check or
	// reconfigured.
	AttrReason = "lodestar.reason"
	// AttrBreakerState is the breaker state entered: closed, half-open, open.
	AttrBreakerState = "lodestar.breaker.state"
	// AttrServerAddress and AttrServerPort name the endpoint (left out with
	// Options.MetricsOmitEndpoint).
	AttrServerAddress = "server.address"
	AttrServerPort    = "server.port"

	nClasses                = int(outcome.NotSent) + 1
	defaultDurationBucketsN = 14
)

// DurationBuckets are the attempt duration histogram's bucket boundaries, in
// seconds: 0.5 ms to 10 s.
var DurationBuckets = [defaultDurationBucketsN]float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// endpointStates are the values of lodestar.endpoint.state, in the order an
// endpoint under several conditions is counted (once, under the first that
// holds).
var endpointStates = [...]struct {
	c    Condition
	name string
}{{NotConnected, "not_connected"}, {Unhealthy, "unhealthy"}, {Ejected, "ejected"}, {BreakerOpen, "breaker_open"}, {Paused, "paused"}, {0, "eligible"}}

// stateIndex returns the index in endpointStates of the state c counts under.
func stateIndex(c Condition) int {
	for i, s := range endpointStates[:len(endpointStates)-1] {
		if c&s.c != 0 {
			return i
		}
	}
	return len(endpointStates) - 1
}

// engineMetrics are one engine's instruments and precomputed attribute sets.
type engineMetrics struct {
	omitEndpoint bool
	base         []attribute.KeyValue // service, door

	attempts  metric.Int64ObservableCounter
	active    metric.Int64ObservableUpDownCounter
	endpoints metric.Int64ObservableUpDownCounter
	panic     metric.Int64ObservableGauge
	duration  metric.Float64Histogram
	ejections metric.Int64Counter
	unejects  metric.Int64Counter
	breaker   metric.Int64Counter
	updates   metric.Int64Counter
	errors    metric.Int64Counter

	baseOpt  metric.MeasurementOption                      // service, door
	classOpt [nClasses]metric.MeasurementOption            // base + outcome (for omitEndpoint)
	stateOpt [len(endpointStates)]metric.MeasurementOption // base + state
	reg      metric.Registration
}

// newEngineMetrics makes the engine's instruments from opts' MeterProvider
// (the global one by default) and registers the observation callback. It
// returns nil if the meter fails to make one (the engine then runs without
// metrics; the error is logged).
func (e *Engine) newEngineMetrics() *engineMetrics {
	mp := e.opts.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	meter := mp.Meter(MeterName)
	m := &engineMetrics{omitEndpoint: e.opts.MetricsOmitEndpoint,
		base: []attribute.KeyValue{attribute.String(AttrService, e.opts.Service), attribute.String(AttrDoor, e.opts.Door)}}
	var errs []error
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	var err error
	m.attempts, err = meter.Int64ObservableCounter(MetricAttempts, metric.WithUnit("{attempt}"),
		metric.WithDescription("Attempts sent to endpoints (each pick reported back), by outcome class."))
	check(err)
	m.active, err = meter.Int64ObservableUpDownCounter(MetricActiveRequests, metric.WithUnit("{request}"),
		metric.WithDescription("Requests in flight on endpoints."))
	check(err)
	m.endpoints, err = meter.Int64ObservableUpDownCounter(MetricEndpoints, metric.WithUnit("{endpoint}"),
		metric.WithDescription("Discovered endpoints by state; one under several conditions counts under the first of not_connected, unhealthy, ejected, breaker_open, paused."))
	check(err)
	m.panic, err = meter.Int64ObservableGauge(MetricPanic, metric.WithUnit("1"),
		metric.WithDescription("1 while the balancer is in panic mode (too few usable endpoints), else 0."))
	check(err)
	m.duration, err = meter.Float64Histogram(MetricAttemptDuration, metric.WithUnit("s"),
		metric.WithDescription("Duration of attempts, from send to response headers (HTTP) or end of call (gRPC), by outcome class."),
		metric.WithExplicitBucketBoundaries(DurationBuckets[:]...))
	check(err)
	m.ejections, err = meter.Int64Counter(MetricEjections, metric.WithUnit("{ejection}"),
		metric.WithDescription("Outlier ejections, by detector."))
	check(err)
	m.unejects, err = meter.Int64Counter(MetricUnejections, metric.WithUnit("{ejection}"),
		metric.WithDescription("Ejections ended, by reason (expired, health_check, reconfigured)."))
	check(err)
	m.breaker, err = meter.Int64Counter(MetricBreakerChanges, metric.WithUnit("{transition}"),
		metric.WithDescription("Circuit breaker state changes, by the state entered."))
	check(err)
	m.updates, err = meter.Int64Counter(MetricDiscoveryUpdates, metric.WithUnit("{update}"),
		metric.WithDescription("Endpoint sets received from discovery."))
	check(err)
	m.errors, err = meter.Int64Counter(MetricDiscoveryErrors, metric.WithUnit("{error}"),
		metric.WithDescription("Discovery errors (the last good endpoint set stays in force)."))
	check(err)
	if len(errs) > 0 {
		e.opts.Logger.Warn("lodestar: metrics off: the meter provider refused an instrument", "service", e.opts.Service, "error", errs[0])
		return nil
	}
	m.baseOpt = m.opt()
	for c := range nClasses {
		m.classOpt[c] = m.opt(attribute.String(AttrOutcome, outcome.Class(c).String()))
	}
	for i, s := range endpointStates {
		m.stateOpt[i] = m.opt(attribute.String(AttrEndpointState, s.name))
	}
	// The callback gets m itself: it may run (on a collection's goroutine)
	// before startObserving has stored m in the engine.
	m.reg, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		return e.observeMetrics(m, o)
	}, m.attempts, m.active, m.endpoints, m.panic)
	if err != nil {
		e.opts.Logger.Warn("lodestar: metrics off: the meter provider refused the callback", "service", e.opts.Service, "error", err)
		return nil
	}
	return m
}

// opt returns the base attributes plus kv as one option. (NewSet sorts the
// slice it is given: m.base is copied first.)
func (m *engineMetrics) opt(kv ...attribute.KeyValue) metric.MeasurementOption {
	all := make([]attribute.KeyValue, 0, len(m.base)+len(kv))
	return metric.WithAttributeSet(attribute.NewSet(append(append(all, m.base...), kv...)...))
}

// endpointAttrs returns the attributes naming ep: server.address and
// server.port (the whole address in server.address when it is no host:port).
func endpointAttrs(addr string) []attribute.KeyValue {
	host, port, err := net.SplitHostPort(addr)
	if p, perr := strconv.Atoi(port); err == nil && perr == nil {
		return []attribute.KeyValue{attribute.String(AttrServerAddress, host), attribute.Int(AttrServerPort, p)}
	}
	return []attribute.KeyValue{attribute.String(AttrServerAddress, addr)}
}

// endpointMetrics are one endpoint's attribute options, each built the
// first time it is needed and kept: an endpoint that never sees an outcome
// class holds no attribute set for it (a set costs ~300 bytes, and 21 of
// them per endpoint were 7 KB of every endpoint's 8.7 KB at 10,000
// endpoints). With MetricsOmitEndpoint the engine's shared sets are used.
type endpointMetrics struct {
	m        *engineMetrics
	service  string
	addr     string
	duration metric.Float64Histogram
	sets     [nClasses]atomic.Pointer[classSets]
	active   atomic.Pointer[metric.MeasurementOption]
}

// classSets are an endpoint's attribute options for one outcome class.
type classSets struct {
	// class is the attempts counter's option: service, door, endpoint, outcome.
	class metric.MeasurementOption
	// record holds the histogram's attribute set (service, endpoint,
	// outcome) as a one-element slice: Record(..., record...) passes it
	// as it is, where a fresh variadic argument to an interface method
	// would be allocated on each call.
	record []metric.RecordOption
	rec    [1]metric.RecordOption // record's array
	// The sets are made during traffic, when the small objects next to
	// them may be written on every pick (a picker's counter): the pad
	// keeps what every Done reads off their cache lines.
	_ [64]byte
}

func (m *engineMetrics) forEndpoint(service, addr string) *endpointMetrics {
	return &endpointMetrics{m: m, service: service, addr: addr, duration: m.duration}
}

// of returns em's options for class c, building them on first use (two
// goroutines may both build them; one set is kept).
func (em *endpointMetrics) of(c outcome.Class) *classSets {
	if cs := em.sets[c].Load(); cs != nil {
		return cs
	}
	return em.build(c)
}

// build makes em's options for class c, on their first use.
func (em *endpointMetrics) build(c outcome.Class) *classSets {
	m := em.m
	cs := &classSets{}
	// The histogram's attributes leave the door out: the SDK pays for every
	// attribute on every Record (about 50 ns each with v1.47.0), and the
	// service and endpoint already say which balancer it is.
	kvs := []attribute.KeyValue{attribute.String(AttrService, em.service)}
	if m.omitEndpoint {
		cs.class = m.classOpt[c]
	} else {
		ea := endpointAttrs(em.addr)
		cs.class = m.opt(append(ea, attribute.String(AttrOutcome, c.String()))...)
		kvs = append(kvs, ea...)
	}
	kvs = append(kvs, attribute.String(AttrOutcome, c.String()))
	cs.rec[0] = metric.WithAttributeSet(attribute.NewSet(kvs...))
	cs.record = cs.rec[:]
	if !em.sets[c].CompareAndSwap(nil, cs) {
		return em.sets[c].Load()
	}
	return cs
}

// activeOpt returns the active-requests gauge's option for em (service,
// door, endpoint), building it on first use.
func (em *endpointMetrics) activeOpt() metric.MeasurementOption {
	if p := em.active.Load(); p != nil {
		return *p
	}
	o := em.m.opt(endpointAttrs(em.addr)...)
	if !em.active.CompareAndSwap(nil, &o) {
		return *em.active.Load()
	}
	return o
}

// observeMetrics is the engine's collection callback: it reads the
// endpoints' counters and the snapshot.
func (e *Engine) observeMetrics(m *engineMetrics, o metric.Observer) error {
	s := e.snap.Load()
	if s == nil {
		return nil
	}
	var states [len(endpointStates)]int64
	var classTotals [nClasses]int64
	var activeTotal int64
	all := s.all
	for _, ep := range all {
		states[stateIndex(ep.Conditions())]++
		if m.omitEndpoint {
			for c := range nClasses {
				classTotals[c] += int64(ep.outcomes[c].Load())
			}
			activeTotal += ep.inflight.Load()
			continue
		}
		em := ep.metrics()
		if em == nil {
			continue
		}
		for c := range nClasses {
			if n := ep.outcomes[c].Load(); n > 0 {
				o.ObserveInt64(m.attempts, int64(n), em.of(outcome.Class(c)).class)
			}
		}
		o.ObserveInt64(m.active, ep.inflight.Load(), em.activeOpt())
	}
	if m.omitEndpoint {
		for c, n := range classTotals {
			if n > 0 {
				o.ObserveInt64(m.attempts, n, m.classOpt[c])
			}
		}
		o.ObserveInt64(m.active, activeTotal, m.baseOpt)
	}
	if s.err != ErrClosed {
		for i, n := range states {
			o.ObserveInt64(m.endpoints, n, m.stateOpt[i])
		}
	}
	var p int64
	if s.tolerated != 0 {
		p = 1
	}
	o.ObserveInt64(m.panic, p, m.baseOpt)
	return nil
}

// countEvent feeds the event-driven counters.
func (m *engineMetrics) countEvent(ev Event) {
	ctx := context.Background()
	switch ev.Kind {
	case ConditionChanged:
		switch {
		case ev.Old&Ejected == 0 && ev.New&Ejected != 0:
			m.ejections.Add(ctx, 1, m.opt(attribute.String(AttrDetector, ejectionDetector(ev.Why))))
		case ev.Old&Ejected != 0 && ev.New&Ejected == 0:
			m.unejects.Add(ctx, 1, m.opt(attribute.String(AttrReason, unejectionReason(ev.Why))))
		}
	case BreakerChanged:
		m.breaker.Add(ctx, 1, m.opt(attribute.String(AttrBreakerState, breakerTo(ev.Why))))
	case DiscoveryError:
		m.errors.Add(ctx, 1, m.baseOpt)
	}
}

// ejectionDetector returns the detector named in an ejection's Why (made by
// ejectWhy: "outlier detection: latency, ejected for 100ms").
func ejectionDetector(why string) string {
	rest, ok := strings.CutPrefix(why, ejectPrefix)
	if !ok {
		return "other"
	}
	d, _, _ := strings.Cut(rest, ",")
	return d
}

// unejectionReason sorts the Why of an ejection's end.
func unejectionReason(why string) string {
	switch {
	case why == unejectExpired:
		return "expired"
	case strings.HasPrefix(why, "health check passed"):
		return "health_check"
	default:
		return "reconfigured"
	}
}

// breakerTo returns the state a BreakerChanged event's Why ("circuit breaker
// closed → open") says the breaker entered.
func breakerTo(why string) string {
	if i := strings.LastIndex(why, "→ "); i >= 0 {
		return strings.TrimSpace(why[i+len("→ "):])
	}
	return "unknown"
}

// RetryInstruments are the front doors' retry instruments (MetricRetries,
// MetricRetryBudgetExhausted, MetricHedges), observable counters each door
// feeds from its retry budgets and hedge counts.
type RetryInstruments struct {
	Retries, Refused, Hedges metric.Int64ObservableCounter
}

// NewRetryInstruments makes the retry instruments on meter, with the names,
// units and descriptions both doors share.
func NewRetryInstruments(meter metric.Meter) (RetryInstruments, error) {
	var ri RetryInstruments
	var err1, err2, err3 error
	ri.Retries, err1 = meter.Int64ObservableCounter(MetricRetries, metric.WithUnit("{retry}"),
		metric.WithDescription("Retries sent (withdrawals from the retry budget)."))
	ri.Refused, err2 = meter.Int64ObservableCounter(MetricRetryBudgetExhausted, metric.WithUnit("{retry}"),
		metric.WithDescription("Retries the retry budget refused."))
	ri.Hedges, err3 = meter.Int64ObservableCounter(MetricHedges, metric.WithUnit("{hedge}"),
		metric.WithDescription("Hedged attempts sent."))
	return ri, errors.Join(err1, err2, err3)
}
