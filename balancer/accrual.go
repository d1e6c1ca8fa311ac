package balancer

import "github.com/lodestar-go/lodestar/health"

// Failure accrual: the outlier detection the engine runs when the
// configuration has no outlierDetection section (Config.FailureAccrual).
// It goes through the same detector code (health.Detector) and the same
// wiring (protect.go) as a configured section; health.DefaultFailureAccrual
// has its figures and why.
//
// Its detector has only a consecutive-failure rule, which acts inline, from
// Done. So nothing runs on a timer until an endpoint is ejected: the ticker
// that ends ejections and decays multipliers starts at the first ejection and
// stops once every endpoint is back and its multiplier has decayed
// (startOutlierLoopLocked, keepOutlierLoopLocked). An engine whose endpoints
// do not fail runs no goroutine for it, and Done sees its successes only on
// endpoints with recent failures (see mode.recordAll and Engine.failed). The
// same holds for a configured section with only consecutive-failure rules.

// outlierDetection returns the outlier detection the configuration runs:
// its section, else the default failure accrual unless that is turned off,
// else nil.
func (c Config) outlierDetection() *health.OutlierDetection {
	if c.OutlierDetection != nil {
		return c.OutlierDetection
	}
	if c.FailureAccrual != nil && !*c.FailureAccrual {
		return nil
	}
	od := health.DefaultFailureAccrual()
	return &od
}

// startOutlierLoopLocked starts p's ticker if it needs one and none runs: a
// Periodic detector always needs it; another only while an endpoint is not
// Settled (ejected gives that at once).
func (e *Engine) startOutlierLoopLocked(p *protection, ejected bool) {
	if p == nil || p.detector == nil || p.stop != nil || e.closed {
		return
	}
	if !p.detector.Periodic() && !ejected && e.settledLocked() {
		return
	}
	p.stop = make(chan struct{})
	e.wg.Add(1)
	go e.outlierLoop(p.detector, p.stop)
}

// keepOutlierLoopLocked reports whether the loop of stop should go on, and
// forgets it when not: a detector that is not Periodic needs it only while
// an endpoint is not Settled.
func (e *Engine) keepOutlierLoopLocked(stop chan struct{}) bool {
	p := e.prot
	if p.stop != stop || p.detector.Periodic() || !e.settledLocked() {
		return true
	}
	p.stop = nil
	return false
}

// settledLocked reports whether no endpoint is ejected or still has an
// ejection multiplier to decay.
func (e *Engine) settledLocked() bool {
	for _, ep := range e.endpoints {
		if st := ep.stats.Load(); st != nil && !st.Settled() {
			return false
		}
	}
	return true
}
