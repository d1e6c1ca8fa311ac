package balancer

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"reflect"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/breaker"
	"github.com/lodestar-go/lodestar/health"
)

// This file composes the engine with its protections, each a leaf package
// that owns one condition (DESIGN.md, "Stage 2"):
//
//   - outlier detection (health.Detector): per-endpoint health.Stats fed from
//     Done, lock-free; an inline (consecutive) detector that fires ejects on the
//     spot, under the engine's lock, so the next pick already avoids it; the
//     interval detectors run on one ticker goroutine per engine. Ejected.
//   - active checks (health.Checker): its goroutines report crossings of the
//     thresholds. Unhealthy.
//   - circuit breakers (breaker.Breaker), one per endpoint, fed from Done; a
//     state change flips BreakerOpen, and a half-open endpoint takes only the
//     probes its breaker hands out (Endpoint.gate, checked by admit).
//
// Each change of a condition goes through setConditionLocked, so it is an
// event and rebuilds the picker once per batch.

// gateHalfOpen marks an endpoint whose breaker is half-open: a pick must win
// one of its probes.
const gateHalfOpen uint32 = 1

// HealthOptions are what active health checks need from the front door; the
// zero value checks over plain connections with a default dialer.
type HealthOptions struct {
	// TLS configures https and TLS gRPC checks (see health.CheckerOptions.TLS).
	TLS *tls.Config
	// Dial connects checks to endpoints (see health.CheckerOptions.Dial).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// GRPCCredentials are gRPC checks' transport credentials (the gRPC policy
	// passes its channel's); see health.CheckerOptions.GRPCCredentials.
	GRPCCredentials credentials.TransportCredentials
	// DialAddress maps an engine address to the address checks dial, when they
	// differ (the gRPC policy's keys for port-less addresses). nil: the same.
	DialAddress func(addr string) string
}

// protection is an engine's running protections, replaced as a whole when the
// configuration changes (Reconfigure).
type protection struct {
	detector *health.Detector // nil: no outlier detection
	breakers *breaker.Config  // nil: no breakers
	checker  *health.Checker  // nil: no active checks
	hc       *health.HealthCheck
	stop     chan struct{} // closes the outlier ticker
}

// setProtectionLocked makes the engine run cfg's protections, keeping what did
// not change: endpoints keep their outlier statistics; breakers are rebuilt
// only when their section changed. It returns the retired checker, which the
// caller closes without the engine's lock (its goroutines may be waiting for
// it). A protection that is turned off or replaced takes its condition back:
// a retired checker's Unhealthy, a removed detector's Ejected.
func (e *Engine) setProtectionLocked(cfg Config) (retired *health.Checker) {
	old := e.prot
	p := &protection{hc: cfg.HealthCheck}
	if od := cfg.outlierDetection(); od != nil {
		p.detector = health.NewDetector(*od)
	}
	if cfg.CircuitBreaker != nil {
		b := *cfg.CircuitBreaker
		p.breakers = &b
	}
	if old != nil && old.stop != nil {
		close(old.stop)
	}
	rebuildBreakers := old == nil || !reflect.DeepEqual(old.breakers, p.breakers)
	for _, ep := range e.endpoints {
		e.attachLocked(ep, p, rebuildBreakers)
	}
	if old != nil {
		if reflect.DeepEqual(old.hc, p.hc) {
			p.checker = old.checker
		} else {
			retired = old.checker
			for _, ep := range e.endpoints {
				e.setConditionLocked(ep, Unhealthy, false, "health checks reconfigured")
			}
		}
		if old.detector != nil && p.detector == nil {
			for _, ep := range e.endpoints {
				e.setConditionLocked(ep, Ejected, false, "outlier detection turned off")
			}
		}
	}
	e.prot = p
	e.startOutlierLoopLocked(p, false)
	return retired
}

// attachLocked gives ep what p needs: outlier statistics and a breaker.
func (e *Engine) attachLocked(ep *Endpoint, p *protection, rebuildBreakers bool) {
	e.observeEndpointLocked(ep)
	if p.detector != nil && ep.stats.Load() == nil {
		ep.stats.Store(health.NewStats())
	}
	if !rebuildBreakers && (p.breakers == nil) == (ep.brk.Load() == nil) {
		return
	}
	if old := ep.brk.Swap(nil); old != nil {
		old.Close()
		ep.gate.And(^gateHalfOpen)
		e.setConditionLocked(ep, BreakerOpen, false, "circuit breaker configuration changed")
	}
	if p.breakers != nil {
		ep.brk.Store(e.newBreaker(ep, *p.breakers))
	}
}

// newBreaker returns ep's breaker, which flips ep's BreakerOpen condition and
// half-open gate as it changes state.
func (e *Engine) newBreaker(ep *Endpoint, cfg breaker.Config) *breaker.Breaker {
	var b *breaker.Breaker
	b = breaker.New(cfg, breaker.Options{Name: ep.addr, OnStateChange: func(from, to breaker.State) {
		var gen uint64
		e.mu.Lock()
		defer func() { e.mu.Unlock(); e.settle(gen); e.dispatch() }()
		if ep.brk.Load() != b || e.closed {
			return // replaced or closed meanwhile
		}
		why := "circuit breaker " + from.String() + " → " + to.String()
		conds := ep.Conditions()
		e.emit(Event{Kind: BreakerChanged, Address: ep.addr, Old: conds, New: conds, Why: why})
		if to == breaker.HalfOpen {
			ep.gate.Or(gateHalfOpen)
		} else {
			ep.gate.And(^gateHalfOpen)
		}
		if e.setConditionLocked(ep, BreakerOpen, to == breaker.Open, why) && !ep.Removed() {
			gen = e.changedLocked()
		}
	}})
	return b
}

// record feeds a request's outcome to ep's protections (from Done).
func (e *Engine) record(m *mode, ep *Endpoint, o outcome.Outcome) {
	if m.detector != nil {
		if st := ep.stats.Load(); st != nil {
			if eject, why := st.Record(m.detector, o.Class, o.Latency); eject {
				e.ejectInline(ep, st, m.detector, why)
			}
		}
	}
	if m.breakers {
		if b := ep.brk.Load(); b != nil {
			b.Record(o.Class)
		}
	}
}

// ejectInline ejects ep now, if the detector's max-ejection rule allows, so
// the very next pick avoids it.
func (e *Engine) ejectInline(ep *Endpoint, st *health.Stats, d *health.Detector, why health.Reason) {
	var gen uint64
	e.mu.Lock()
	defer func() { e.mu.Unlock(); e.settle(gen); e.dispatch() }()
	if e.closed || e.endpoints[ep.addr] != ep || e.prot == nil || e.prot.detector != d {
		return
	}
	ejected := 0
	for _, x := range e.endpoints {
		if x.Conditions()&Ejected != 0 {
			ejected++
		}
	}
	if !d.Admit(len(e.endpoints), ejected) {
		return
	}
	now := e.opts.Now()
	until, ok := d.Ejected(st, why, now)
	if ok && e.setConditionLocked(ep, Ejected, true, ejectWhy(why, until.Sub(now))) {
		gen = e.changedLocked()
	}
	if ok {
		e.startOutlierLoopLocked(e.prot, true)
	}
}

// The Why of ejections and of their expiry (metrics.go reads the detector
// back from it).
const (
	ejectPrefix    = "outlier detection: "
	unejectExpired = "outlier detection: ejection time over"
)

func ejectWhy(why health.Reason, d time.Duration) string {
	return fmt.Sprintf(ejectPrefix+"%s, ejected for %v", why, d)
}

// outlierLoop runs the interval detectors every interval until stop closes,
// or, for a detector that is not Periodic, until evaluate finds nothing left
// to do.
func (e *Engine) outlierLoop(d *health.Detector, stop chan struct{}) {
	defer e.wg.Done()
	t := time.NewTicker(d.Interval())
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if !e.evaluate(d, stop) {
				return
			}
		}
	}
}

// evaluate runs the interval detectors once: ejections that ran out end, and
// success rate, failure percentage and latency outliers are ejected, in one
// rebuild. It reports whether the loop whose stop channel is stop should
// go on: false once a detector that is not Periodic has every endpoint
// Settled (the next inline ejection starts a loop again).
func (e *Engine) evaluate(d *health.Detector, stop chan struct{}) (more bool) {
	e.mu.Lock()
	defer func() { e.mu.Unlock(); e.dispatch() }()
	if e.closed || e.prot == nil || e.prot.detector != d {
		return true // stop closes
	}
	defer func() { more = e.keepOutlierLoopLocked(stop) }()
	hosts := make([]health.Host, 0, len(e.sorted))
	for _, ep := range e.sorted {
		if st := ep.stats.Load(); st != nil {
			hosts = append(hosts, health.Host{Key: ep.addr, Stats: st})
		}
	}
	now := e.opts.Now()
	rebuild := false
	for _, a := range d.Evaluate(now, hosts) {
		ep := e.endpoints[a.Key]
		if ep == nil {
			continue
		}
		why := unejectExpired
		if a.Eject {
			why = ejectWhy(a.Why, a.Until.Sub(now))
		}
		if e.setConditionLocked(ep, Ejected, a.Eject, why) {
			rebuild = true
		}
	}
	if rebuild {
		e.rebuildLocked()
	}
	return true // replaced by keepOutlierLoopLocked's answer
}

// startChecker starts the active checker for hc and syncs it with the
// endpoint set. Call it without the engine's lock.
func (e *Engine) startChecker(hc *health.HealthCheck) error {
	c, err := health.NewChecker(*hc, health.CheckerOptions{
		Service:         e.opts.Service,
		TLS:             e.opts.Health.TLS,
		GRPCCredentials: e.opts.Health.GRPCCredentials,
		Dial:            e.opts.Health.Dial,
		Logger:          e.opts.Logger,
		Rand:            e.opts.Rand,
		OnChange:        e.healthChanged,
		OnCheck:         e.healthChecked,
		HasTraffic:      e.hasTraffic,
	})
	if err != nil {
		return err
	}
	e.mu.Lock()
	if e.closed || e.prot == nil || e.prot.hc != hc {
		e.mu.Unlock()
		c.Close()
		return nil
	}
	e.prot.checker = c
	e.mu.Unlock()
	e.syncChecker()
	return nil
}

// syncChecker tells the active checker the endpoint set. Calls are serialized,
// and each sends the set in force when it runs, so the checker ends with the
// latest. Call it without the engine's lock.
func (e *Engine) syncChecker() {
	e.hcMu.Lock()
	defer e.hcMu.Unlock()
	e.mu.Lock()
	if e.prot == nil || e.prot.checker == nil || e.closed {
		e.mu.Unlock()
		return
	}
	c := e.prot.checker
	set := make(map[string]string, len(e.endpoints))
	add := func(addr string) {
		if f := e.opts.Health.DialAddress; f != nil {
			set[addr] = f(addr)
		} else {
			set[addr] = ""
		}
	}
	if e.sub != nil {
		// Subsetting: only the candidates are checked (subset.go).
		for _, ep := range e.sub.list {
			add(ep.addr)
		}
	} else {
		for addr := range e.endpoints {
			add(addr)
		}
	}
	e.mu.Unlock()
	c.Update(set)
}

func (e *Engine) healthChanged(key string, healthy bool, why string) {
	if !healthy {
		if ep := e.Endpoint(key); ep != nil && !e.InSubset(ep) {
			return // a check that ended as its endpoint left the subset (subset.go)
		}
	}
	e.SetConditionWhy(key, Unhealthy, !healthy, "health check: "+why)
}

// healthChecked ends an outlier ejection early on a passed check, when
// outlierDetection.endEjectionOnHealthy says so.
func (e *Engine) healthChecked(key string, passed bool, _ string) {
	if !passed {
		return
	}
	var gen uint64
	e.mu.Lock()
	defer func() { e.mu.Unlock(); e.settle(gen); e.dispatch() }()
	ep := e.endpoints[key]
	if ep == nil || e.closed || e.prot == nil || e.prot.detector == nil || !e.prot.detector.EndEjectionOnHealthy() ||
		ep.Conditions()&Ejected == 0 {
		return
	}
	st := ep.stats.Load()
	if st == nil {
		return
	}
	if _, ok := e.prot.detector.Uneject(st); ok && e.setConditionLocked(ep, Ejected, false, "health check passed: ejection ended early") {
		gen = e.changedLocked()
	}
}

// hasTraffic reports whether the endpoint at key carried requests since the
// last call for it.
func (e *Engine) hasTraffic(key string) bool {
	e.mu.Lock()
	ep := e.endpoints[key]
	e.mu.Unlock()
	if ep == nil {
		return false
	}
	var n uint64
	for i := range ep.outcomes {
		n += ep.outcomes[i].Load()
	}
	return ep.seen.Swap(n) != n || ep.inflight.Load() > 0
}

// stopProtection stops the ticker, the checker and the breakers (Close).
func (e *Engine) stopProtectionLocked() (checker *health.Checker) {
	p := e.prot
	if p == nil {
		return nil
	}
	if p.stop != nil {
		close(p.stop)
		p.stop = nil
	}
	for _, ep := range e.endpoints {
		if b := ep.brk.Swap(nil); b != nil {
			b.Close()
		}
	}
	for _, ep := range e.draining {
		if b := ep.brk.Swap(nil); b != nil {
			b.Close()
		}
	}
	return p.checker
}
