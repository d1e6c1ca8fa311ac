package balancer

import (
	"math"
	"slices"
	"time"

	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/resolver"
)

// EngineStatus is one engine's state at a moment: what debug pages show
// (package balancer/debugpage renders it as HTML and as JSON, with these
// field names). It carries no secret: the target is redacted by the front
// door, endpoint metadata is left out, and errors are the feeds' own, which
// redact their credentials.
type EngineStatus struct {
	// Door is the front door that owns the engine: "http" (a Transport's
	// service), "grpc" (a channel using the lodestar policy), or "" (an
	// engine made with NewEngine directly).
	Door string `json:"door"`
	// Service is the service's name: the Transport's service name, or the
	// gRPC channel's target endpoint.
	Service string `json:"service"`
	// Target says where the endpoints come from: a target URL with its
	// secrets redacted, or the feed's type.
	Target string `json:"target,omitempty"`
	// Algorithm is the picking algorithm's registered name.
	Algorithm string `json:"algorithm"`
	// Panicking is true while too few endpoints are usable and picks spread
	// over every connected one (Config.PanicThreshold).
	Panicking bool `json:"panicking"`
	// Discovered is the number of endpoints discovery has listed (not counting
	// removed ones still draining).
	Discovered int `json:"discovered"`
	// Eligible is the number of endpoints picks choose from now.
	Eligible int `json:"eligible"`
	// InFlight is the number of requests in flight on all endpoints.
	InFlight int64 `json:"inFlight"`
	// MaxInFlightPerEndpoint is Config.MaxInFlightPerEndpoint, 0 for no limit.
	MaxInFlightPerEndpoint int `json:"maxInFlightPerEndpoint"`
	// DiscoveryError is the feed's last error since its last good answer, or "".
	DiscoveryError string `json:"discoveryError,omitempty"`
	// ShareWindowSeconds is how far back Endpoints[].SharePercent and
	// RecentAttempts look: the time since the oldest reading the engine kept
	// (readings of every endpoint's attempt count are taken when Status
	// runs, at most one per 5s, kept up to a minute; the oldest is used once
	// it is 5s old). 0 means the share is over every attempt: no reading is
	// old enough yet, or the window holds no attempt.
	ShareWindowSeconds float64 `json:"shareWindowSeconds"`
	// Endpoints lists every discovered endpoint and every removed one still
	// draining, by address.
	Endpoints []EndpointStatus `json:"endpoints"`
	// Events are the engine's last events (at most EventHistory), oldest
	// first.
	Events []EventStatus `json:"events"`
	// At is when the status was taken, by the engine's clock.
	At time.Time `json:"at"`
}

// EndpointStatus is one endpoint's state in an EngineStatus.
type EndpointStatus struct {
	// Address is the endpoint's "host:port".
	Address string `json:"address"`
	// Locality is where discovery says the endpoint runs.
	Locality resolver.Locality `json:"locality"`
	// Priority is the endpoint's failover tier (0 is the first).
	Priority int `json:"priority"`
	// Weight is the endpoint's static weight (at least 1).
	Weight uint32 `json:"weight"`
	// State sums the endpoint up: "eligible", "draining" (removed by
	// discovery, requests still in flight), "outside the subset" (see
	// Config.Subset), or its conditions joined by "+" ("ejected",
	// "not connected+unhealthy", ...), as Condition.String.
	State string `json:"state"`
	// OutsideSubset says subsetting leaves the endpoint out: the front door
	// keeps no connection to it and picks never choose it.
	OutsideSubset bool `json:"outsideSubset,omitempty"`
	// Conditions lists the conditions that keep the endpoint out of picks,
	// each with why and, for an ejection or a pause, until when.
	Conditions []ConditionStatus `json:"conditions"`
	// Breaker is the endpoint's circuit breaker state ("closed", "open",
	// "half-open"), or "" without breakers.
	Breaker string `json:"breaker,omitempty"`
	// SlowStartPercent is the share of its full weight the endpoint gets
	// while slow start ramps it up (Config's algorithm's SlowStart), or 100.
	SlowStartPercent float64 `json:"slowStartPercent"`
	// AtLimit is true when the endpoint has MaxInFlightPerEndpoint requests
	// in flight, so picks pass it over.
	AtLimit bool `json:"atLimit"`
	// InFlight is the number of requests in flight on the endpoint.
	InFlight int64 `json:"inFlight"`
	// Latency sums up the endpoint's last attempts' latencies.
	Latency LatencyStatus `json:"latency"`
	// RecentAttempts is the number of attempts reported for the endpoint in
	// the share window (ShareWindowSeconds; every attempt when it is 0),
	// not counting picks that were never sent (outcome.NotSent).
	RecentAttempts uint64 `json:"recentAttempts"`
	// SharePercent is the endpoint's share of the engine's RecentAttempts, in
	// percent.
	SharePercent float64 `json:"sharePercent"`
	// Outcomes counts the endpoint's attempts ever, by outcome class name
	// ("success", "server_error", ...; see outcome.Class); classes with no
	// attempt are left out.
	Outcomes map[string]uint64 `json:"outcomes"`
	// Ejections counts the endpoint's outlier ejections ever (0 without
	// outlier detection).
	Ejections uint64 `json:"ejections"`
}

// ConditionStatus is one condition on an endpoint.
type ConditionStatus struct {
	// Name is the condition's name: "not connected", "unhealthy", "ejected",
	// "breaker open" or "paused".
	Name string `json:"name"`
	// Why is the reason given when it was set, or "".
	Why string `json:"why,omitempty"`
	// Until is when it ends on its own (an ejection, a pause), or null.
	Until *time.Time `json:"until,omitempty"`
}

// LatencyStatus sums up an endpoint's recent latencies: those of its last
// attempts (at most 128) that say something about it (not canceled, not
// unsent), from send to response headers (HTTP) or end of call (gRPC).
type LatencyStatus struct {
	// Samples is the number of latencies the figures are computed from.
	Samples int `json:"samples"`
	// EWMAMillis is their exponentially weighted moving average, oldest
	// first, each new one weighing 0.1, in milliseconds.
	EWMAMillis float64 `json:"ewmaMs"`
	// P50Millis and P99Millis are their median and 99th percentile (nearest
	// rank), in milliseconds.
	P50Millis float64 `json:"p50Ms"`
	P99Millis float64 `json:"p99Ms"`
}

// EventStatus is one event in an EngineStatus.
type EventStatus struct {
	// At is when it happened, by the engine's clock.
	At time.Time `json:"at"`
	// Kind is the event's kind, as EventKind.String ("condition changed").
	Kind string `json:"kind"`
	// Address is the endpoint's, or "" for engine-wide events.
	Address string `json:"address,omitempty"`
	// From and To are the endpoint's conditions before and after, as
	// Condition.String ("eligible", "ejected").
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
	// Why explains it.
	Why string `json:"why,omitempty"`
}

// Door returns the engine's front door (Options.Door).
func (e *Engine) Door() string { return e.opts.Door }

// Service returns the engine's service name (Options.Service).
func (e *Engine) Service() string { return e.opts.Service }

// Target returns where the engine's endpoints come from (Options.Target).
func (e *Engine) Target() string { return e.opts.Target }

// ewmaWeight is the weight of each new latency in LatencyStatus.EWMAMillis.
const ewmaWeight = 0.1

// Status returns the engine's state now, for debug pages. It takes the
// engine's lock briefly; it is not meant for the request path.
func (e *Engine) Status() EngineStatus {
	now := e.opts.Now()
	e.mu.Lock()
	cfg, alg := e.cfg, e.alg
	s := e.snap.Load()
	eps := slices.Clone(s.all)
	for _, ep := range e.draining {
		eps = append(eps, ep)
	}
	pauses := make(map[*Endpoint]time.Time, len(e.pauses))
	for ep, p := range e.pauses {
		pauses[ep] = p.until
	}
	feedErr := e.feedErr
	e.mu.Unlock()
	slices.SortFunc(eps, byAddress)

	st := EngineStatus{
		Door: e.opts.Door, Service: e.opts.Service, Target: e.opts.Target, Algorithm: alg.Name(),
		Panicking: s.tolerated != 0, Discovered: len(s.all), Eligible: len(s.endpoints),
		MaxInFlightPerEndpoint: cfg.MaxInFlightPerEndpoint, At: now,
		Endpoints: make([]EndpointStatus, 0, len(eps)),
	}
	if feedErr != nil {
		st.DiscoveryError = feedErr.Error()
	}
	ramp := slowStartOf(alg)
	totals := make(map[string]uint64, len(eps))
	for _, ep := range eps {
		var n uint64
		for c := range ep.outcomes {
			if outcome.Class(c) != outcome.NotSent { // picked, never sent
				n += ep.outcomes[c].Load()
			}
		}
		totals[ep.addr] = n
	}
	var base map[string]uint64
	if ob := e.obs; ob != nil {
		ob.mu.Lock()
		var since time.Time
		var ok bool
		base, since, ok = ob.shares.window(now, totals)
		ob.mu.Unlock()
		if ok {
			st.ShareWindowSeconds = now.Sub(since).Seconds()
		}
	}
	var recentAll uint64
	for _, ep := range eps {
		es := e.endpointStatus(ep, now, ramp, pauses, cfg.MaxInFlightPerEndpoint)
		es.RecentAttempts = totals[ep.addr] - min(base[ep.addr], totals[ep.addr])
		recentAll += es.RecentAttempts
		st.InFlight += es.InFlight
		st.Endpoints = append(st.Endpoints, es)
	}
	if recentAll == 0 && base != nil { // nothing in the window: the share of every attempt
		st.ShareWindowSeconds = 0
		for i := range st.Endpoints {
			st.Endpoints[i].RecentAttempts = totals[st.Endpoints[i].Address]
			recentAll += st.Endpoints[i].RecentAttempts
		}
	}
	if recentAll > 0 {
		for i := range st.Endpoints {
			st.Endpoints[i].SharePercent = 100 * float64(st.Endpoints[i].RecentAttempts) / float64(recentAll)
		}
	}
	for _, ev := range e.RecentEvents() {
		es := EventStatus{At: ev.At, Kind: ev.Kind.String(), Address: ev.Address, Why: ev.Why}
		if ev.Address != "" {
			es.From, es.To = ev.Old.String(), ev.New.String()
		}
		st.Events = append(st.Events, es)
	}
	return st
}

// endpointStatus describes ep.
func (e *Engine) endpointStatus(ep *Endpoint, now time.Time, ramp SlowStart, pauses map[*Endpoint]time.Time, limit int) EndpointStatus {
	info := ep.Info()
	conds := ep.Conditions()
	es := EndpointStatus{
		Address: ep.addr, Locality: info.Locality, Priority: info.Priority, Weight: ep.Weight(),
		State: conds.String(), InFlight: ep.InFlight(), Conditions: []ConditionStatus{},
		Outcomes: map[string]uint64{}, SlowStartPercent: 100,
	}
	if ep.Removed() {
		es.State = "draining"
	} else if Condition(ep.conds.Load())&outside != 0 {
		es.State, es.OutsideSubset = "outside the subset", true
	}
	var why [6]string
	if e.obs != nil {
		why = e.obs.whyOf(ep.addr)
	}
	var ej struct {
		until time.Time
		n     uint64
	}
	if st := ep.stats.Load(); st != nil {
		x := st.Ejection()
		ej.until, ej.n = x.Until, x.Ejections
		es.Ejections = x.Ejections
	}
	for i, n := range conditionNames {
		if conds&n.c == 0 {
			continue
		}
		cs := ConditionStatus{Name: n.name, Why: why[i]}
		switch n.c {
		case Ejected:
			if !ej.until.IsZero() {
				u := ej.until
				cs.Until = &u
			}
		case Paused:
			if u, ok := pauses[ep]; ok {
				cs.Until = &u
			}
		}
		es.Conditions = append(es.Conditions, cs)
	}
	if b := ep.brk.Load(); b != nil {
		es.Breaker = b.State().String()
	}
	if ramp.Window > 0 && conds == 0 {
		es.SlowStartPercent = 100 * rampFactor(ramp, now.Sub(ep.EligibleSince()))
	}
	es.AtLimit = limit > 0 && es.InFlight >= int64(limit)
	for c := range ep.outcomes {
		if n := ep.outcomes[c].Load(); n > 0 {
			es.Outcomes[outcome.Class(c).String()] = n
		}
	}
	if ob := ep.obs; ob != nil {
		es.Latency = latencyStatus(ob.recent.samples())
	}
	return es
}

// slowStartOf returns the slow start settings of the built-in algorithms
// that have them, or the zero value.
func slowStartOf(alg Algorithm) SlowStart {
	switch a := alg.(type) {
	case *RoundRobin:
		return a.SlowStart
	case *WeightedRoundRobin:
		return a.SlowStart
	case *LeastRequest:
		return a.SlowStart
	}
	return SlowStart{}
}

// rampFactor is slow start's weight multiplier at age (see SlowStart).
func rampFactor(s SlowStart, age time.Duration) float64 {
	if age >= s.Window || s.Window <= 0 {
		return 1
	}
	aggr, minPct := s.Aggression, s.MinWeightPercent
	if aggr == 0 {
		aggr = 1
	}
	if minPct == 0 {
		minPct = 10
	}
	f := math.Pow(max(age, 0).Seconds()/s.Window.Seconds(), 1/aggr)
	return max(minPct/100, f)
}

// latencyStatus sums up samples (microseconds, oldest first).
func latencyStatus(samples []uint32) LatencyStatus {
	ls := LatencyStatus{Samples: len(samples)}
	if len(samples) == 0 {
		return ls
	}
	ewma := float64(samples[0])
	for _, v := range samples[1:] {
		ewma += ewmaWeight * (float64(v) - ewma)
	}
	ls.EWMAMillis = ewma / 1000
	sorted := slices.Clone(samples)
	slices.Sort(sorted)
	rank := func(q float64) float64 {
		i := int(math.Ceil(q*float64(len(sorted)))) - 1
		return float64(sorted[max(i, 0)]) / 1000
	}
	ls.P50Millis, ls.P99Millis = rank(0.50), rank(0.99)
	return ls
}
