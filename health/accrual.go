package health

import "time"

// Failure accrual: the outlier detection lodestar runs when a configuration
// has no outlierDetection section (balancer.Config.FailureAccrual turns it
// off). It ejects only on failures that prove an endpoint unusable, which
// no application meaning can turn into a success: connections refused or
// unreachable, and exchanges that failed before any response (reset, TLS
// handshake failure, a gRPC stream reset). HTTP 5xx and gRPC status codes
// do not count: whether a 503 or an UNAVAILABLE means "this endpoint is
// broken" or "this request cannot be served" is the application's to say,
// in an outlierDetection section.
//
// Its figures, and why:
//
//   - 5 consecutive failures (ConsecutiveConnectionFailures): Finagle's
//     failure accrual default and Envoy's consecutive_5xx default; one or
//     two refused connections during a restart's last moments do not eject.
//   - 5s base ejection time (Finagle's first mark-dead period), growing by
//     5s with each ejection in a row (the detector's multiplier) up to 30s
//     (Envoy's base ejection time: the default never keeps an endpoint out
//     longer than Envoy's first ejection would). A backend that is restarted
//     is back in traffic within ~5-6s of listening again; one that stays
//     down is tried once per ejection, a burst of at most a few failures.
//   - Interval 1s: ejections end within a second of their time, and the
//     multiplier falls back one step per second the endpoint stays in. No
//     interval detector is on, so the engine runs its ticker only while an
//     endpoint is ejected or its multiplier has not decayed (see
//     Detector.Periodic): an engine with no failures runs no goroutine.
//   - At most 50% of the endpoints ejected at once (but one always may be):
//     when half the fleet refuses connections, the fault is more likely on
//     the client's side (its network, its credentials) than in every one
//     of those backends, and the panic threshold (50% by default) would
//     spread traffic over them again anyway.
//
// DefaultFailureAccrual returns that configuration, as an OutlierDetection
// section that would do the same: write it out (and change it) to tune the
// default, or add success rate or failure percentage detection to it.
func DefaultFailureAccrual() OutlierDetection {
	zero, five, half := 0, DefaultAccrualFailures, DefaultAccrualMaxEjectionPercent
	return OutlierDetection{
		ConsecutiveFailures:           &zero,
		ConsecutiveConnectionFailures: &five,
		Interval:                      DefaultAccrualInterval,
		BaseEjectionTime:              DefaultAccrualBaseEjectionTime,
		MaxEjectionTime:               DefaultAccrualMaxEjectionTime,
		MaxEjectionPercent:            &half,
	}
}

// The default failure accrual's figures (see DefaultFailureAccrual).
const (
	// DefaultAccrualFailures is how many consecutive connection failures
	// eject an endpoint.
	DefaultAccrualFailures = 5
	// DefaultAccrualBaseEjectionTime is how long a first ejection lasts.
	DefaultAccrualBaseEjectionTime = 5 * time.Second
	// DefaultAccrualMaxEjectionTime caps an ejection.
	DefaultAccrualMaxEjectionTime = 30 * time.Second
	// DefaultAccrualInterval is how often ejections are ended and
	// multipliers decayed while an endpoint is ejected.
	DefaultAccrualInterval = time.Second
	// DefaultAccrualMaxEjectionPercent is the largest share of endpoints
	// ejected at once, in percent.
	DefaultAccrualMaxEjectionPercent = 50
)
