package health

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/lodestar-go/lodestar/balancer/outcome"
)

// Stats is one endpoint's passive health state: what the outlier detector
// knows of it. The request path feeds it through Record (lock-free, no
// allocation); a Detector reads and resets its interval counters in
// Evaluate and keeps its ejection state (ejected until when, for what, and
// the ejection-time multiplier) through Ejected, Uneject and Evaluate.
//
// The engine creates one per endpoint and keeps it for as long as the
// endpoint stays in the set, across reconfigurations (a new Detector can
// take over the same Stats). The zero value is ready to use; a Stats must
// not be copied after first use.
type Stats struct {
	// Written by every Record.
	counts atomic.Uint64 // this interval: successes in the low 32 bits, failures in the high 32

	// Consecutive counters, reset by an outcome that breaks the run.
	consecFailures    atomic.Int64
	consecGateway     atomic.Int64
	consecLocalOrigin atomic.Int64
	consecConn        atomic.Int64
	ejected           atomic.Bool // read by Record only when a threshold is crossed
	latency           histogram   // this interval's latencies, while a latency detector is on
	mu                sync.Mutex  // guards the ejection state below
	multiplier        int         // times ejected, decayed by one per interval while not ejected
	until             time.Time   // end of the current ejection
	why               Reason      // the current (or last) ejection's reason
	ejections         uint64      // ejections ever, for observability
}

// NewStats returns an empty Stats (the same as a zero Stats).
func NewStats() *Stats { return new(Stats) }

const failureUnit = 1 << 32 // one failure in Stats.counts

// Record counts one request's outcome of class c that took latency, and
// reports whether a consecutive-failure detector of d fired on it: eject is
// true, with the detector's reason, on the outcome that makes a run of
// consecutive failures reach that detector's threshold, and that run's
// counter starts again from zero. If several detectors fire on the same
// outcome, why names the most specific (gateway, then connection, then
// local origin, then any failure). Concurrent Records of one run fire it once. While the
// endpoint is ejected (Ejected until Uneject), nothing fires.
//
// Outcomes that are not Counted (Canceled, NotSent) are ignored. The other
// classes count toward the interval's successes (not Failure: Success,
// ClientError) or failures; and the consecutive counters move as Envoy's do
// with its local-origin errors split out:
//
//   - Success, ClientError: the server answered well; every run ends.
//   - GatewayError (502, 503, 504, gRPC UNAVAILABLE): consecutiveFailures
//     and consecutiveGatewayFailures grow; the local-origin and connection
//     runs end (the request reached a server).
//   - ConnectError, LocalError (refused, reset): consecutiveFailures,
//     consecutiveLocalOriginFailures and consecutiveConnectionFailures
//     grow; the gateway run is left as it is (no answer came to break it).
//   - Timeout: consecutiveFailures and consecutiveLocalOriginFailures grow;
//     the gateway and connection runs are left as they are.
//   - Overloaded, ServerError: consecutiveFailures grows; the gateway,
//     local-origin and connection runs end.
//
// A positive latency of a counted outcome goes into the interval's latency
// histogram when d has a latency detector; zero or negative means unknown
// and is not counted there.
//
// The interval's success and failure counts are kept when d is nil or
// Periodic (nothing else reads them). d may be nil: nothing fires then.
// Record is lock-free and allocates nothing: an atomic add or two and a few
// loads on a success, an atomic add per counter that moves on a failure.
func (s *Stats) Record(d *Detector, c outcome.Class, latency time.Duration) (eject bool, why Reason) {
	if !c.Counted() {
		return false, ""
	}
	if d != nil && d.latency != nil && latency > 0 {
		s.latency.add(latency)
	}
	count := d == nil || d.periodic
	if !c.Failure() {
		if count {
			s.counts.Add(1)
		}
		// Read before writing: on a healthy endpoint the counters are
		// already zero and the cache line stays shared.
		if s.consecFailures.Load() != 0 {
			s.consecFailures.Store(0)
		}
		if s.consecGateway.Load() != 0 {
			s.consecGateway.Store(0)
		}
		if s.consecLocalOrigin.Load() != 0 {
			s.consecLocalOrigin.Store(0)
		}
		if s.consecConn.Load() != 0 {
			s.consecConn.Store(0)
		}
		return false, ""
	}
	if count {
		s.counts.Add(failureUnit)
	}
	if d == nil {
		return false, ""
	}
	switch c {
	case outcome.GatewayError:
		if s.fire(&s.consecGateway, d.consecGateway) {
			eject, why = true, ReasonConsecutiveGatewayFailures
		}
		if s.consecLocalOrigin.Load() != 0 {
			s.consecLocalOrigin.Store(0)
		}
		if s.consecConn.Load() != 0 {
			s.consecConn.Store(0)
		}
	case outcome.ConnectError, outcome.LocalError:
		if s.fire(&s.consecConn, d.consecConn) {
			eject, why = true, ReasonConsecutiveConnectionFailures
		}
		if s.fire(&s.consecLocalOrigin, d.consecLocalOrigin) && !eject {
			eject, why = true, ReasonConsecutiveLocalOriginFailures
		}
	case outcome.Timeout:
		if s.fire(&s.consecLocalOrigin, d.consecLocalOrigin) {
			eject, why = true, ReasonConsecutiveLocalOriginFailures
		}
	default:
		if s.consecGateway.Load() != 0 {
			s.consecGateway.Store(0)
		}
		if s.consecLocalOrigin.Load() != 0 {
			s.consecLocalOrigin.Store(0)
		}
		if s.consecConn.Load() != 0 {
			s.consecConn.Store(0)
		}
	}
	if s.fire(&s.consecFailures, d.consecFailures) && !eject {
		eject, why = true, ReasonConsecutiveFailures
	}
	return eject, why
}

// fire counts one more failure in the run ctr and reports whether it
// reaches threshold (0: detector off, nothing counted). Of concurrent
// callers, the one whose compare-and-swap takes the counter from its own
// value back to zero fires: a run of threshold failures fires once.
func (s *Stats) fire(ctr *atomic.Int64, threshold int64) bool {
	if threshold <= 0 {
		return false
	}
	n := ctr.Add(1)
	return n >= threshold && !s.ejected.Load() && ctr.CompareAndSwap(n, 0)
}

// resetConsecutive ends every run of consecutive failures.
func (s *Stats) resetConsecutive() {
	s.consecFailures.Store(0)
	s.consecGateway.Store(0)
	s.consecLocalOrigin.Store(0)
	s.consecConn.Store(0)
}

// Counts returns the successes and failures counted since the last
// Evaluate (or since the Stats was made), for observability; it does not
// reset them. They are counted only while the detector is Periodic (or
// Record is given none).
func (s *Stats) Counts() (successes, failures uint64) {
	c := s.counts.Load()
	return c & (failureUnit - 1), c >> 32
}

// Settled reports whether the endpoint is not ejected and its ejection-time
// multiplier has decayed to zero: Evaluate has nothing left to do for it
// unless an interval detector is on (Detector.Periodic).
func (s *Stats) Settled() bool {
	if s.ejected.Load() {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.ejected.Load() && s.multiplier == 0
}

// IsEjected reports whether the endpoint is ejected now (between Ejected
// and its end); lock-free.
func (s *Stats) IsEjected() bool { return s.ejected.Load() }

// Ejection is a snapshot of an endpoint's ejection state.
type Ejection struct {
	// Ejected reports whether the endpoint is ejected.
	Ejected bool
	// Why is the current ejection's reason, or the last one's.
	Why Reason
	// Until is when the current (or last) ejection ends.
	Until time.Time
	// Multiplier is the number the base ejection time is multiplied by for
	// the current ejection: times ejected, less one per interval spent not
	// ejected.
	Multiplier int
	// Ejections counts the endpoint's ejections ever.
	Ejections uint64
}

// Ejection returns the endpoint's ejection state.
func (s *Stats) Ejection() Ejection {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Ejection{Ejected: s.ejected.Load(), Why: s.why, Until: s.until, Multiplier: s.multiplier, Ejections: s.ejections}
}
