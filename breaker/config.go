package breaker

import (
	"errors"
	"math"
	"time"
)

// Defaults of the fields of Config, used when a field is omitted (nil or zero
// in Go).
const (
	DefaultConsecutiveFailures = 5
	DefaultFailureRatio        = 0.5
	DefaultMinRequests         = 20
	DefaultWindow              = 10 * time.Second
	DefaultOpenTimeout         = 10 * time.Second
	DefaultHalfOpenRequests    = 1
)

// WindowBuckets is the number of buckets the rolling window is cut into
// (gobreaker's BucketPeriod is Window/WindowBuckets): outcomes leave the window
// one bucket at a time, so its effective length varies by up to one bucket,
// a tenth of Window.
const WindowBuckets = 10

// Config is one endpoint's circuit breaker: the "circuitBreaker" section of the
// engine's configuration. The breaker trips (opens) when either of its rules
// fires, stays open for OpenTimeout, then lets HalfOpenRequests probe requests
// through (half-open): if they all succeed it closes, if one fails it opens
// again.
//
// In JSON, with the defaults:
//
//	{"consecutiveFailures": 5, "failureRatio": 0.5, "minRequests": 20,
//	 "window": "10s", "openTimeout": "10s", "halfOpenRequests": 1}
//
// An omitted field (nil or zero in Go) takes its default. A field that is
// written is checked against the range in its `range` tag (by the
// configuration's codec, and by balancer.CheckRanges for Go-built values),
// zero included, so a written 0 is valid only where the range admits it:
// "consecutiveFailures": 0 and "failureRatio": 0 turn that rule off.
//
// Only outcomes that reached the endpoint count (outcome.Class.Counted): a
// request the caller canceled or that was never sent is neither a success nor
// a failure. Failures are the classes for which outcome.Class.Failure is true
// (overloaded, server and gateway errors, timeouts, local and connect errors);
// success and client errors count as successes.
type Config struct {
	// ConsecutiveFailures trips the breaker after that many failures in a row
	// (within Window: a failure older than the window no longer counts). nil
	// means the default, 5; 0 turns this rule off. Valid [0, 1000000].
	ConsecutiveFailures *int `json:"consecutiveFailures,omitempty" range:"[0, 1000000]"`
	// FailureRatio trips the breaker when, on a failure, failures make up at
	// least this share of the outcomes in Window, provided there are at least
	// MinRequests of them. nil means the default, 0.5; 0 turns this rule off.
	// Valid [0, 1].
	FailureRatio *float64 `json:"failureRatio,omitempty" range:"[0, 1]"`
	// MinRequests is how many outcomes Window must hold before FailureRatio
	// applies. 0 means the default, 20. Valid [1, 1000000].
	MinRequests int `json:"minRequests,omitempty" range:"[1, 1000000]"`
	// Window is the rolling window both rules count over, in WindowBuckets
	// buckets (gobreaker's Interval and BucketPeriod). 0 means the default,
	// 10s. Valid [1ms, 24h]. JSON: a duration string such as "10s".
	Window time.Duration `json:"window,omitempty" range:"[1ms, 24h]"`
	// OpenTimeout is how long the breaker stays open before it lets probes
	// through (half-open), and how long a half-open breaker waits for the
	// outcome of its probes before it grants them again. 0 means the default,
	// 10s. Valid [1ms, 24h]. JSON: a duration string such as "10s".
	OpenTimeout time.Duration `json:"openTimeout,omitempty" range:"[1ms, 24h]"`
	// HalfOpenRequests is how many probe requests a half-open breaker lets
	// through; it closes after that many successes in a row. 0 means the
	// default, 1. Valid [1, 1000].
	HalfOpenRequests int `json:"halfOpenRequests,omitempty" range:"[1, 1000]"`
}

// Validate reports what is wrong between fields: a breaker whose rules are
// both turned off could never open. Each field's own range is in its `range`
// tag, which the configuration's codec checks for JSON and balancer.CheckRanges
// for Go-built values (the engine's Config.Validate calls it on this section).
func (c Config) Validate() error {
	s := c.settings()
	if s.consecutive == 0 && s.ratio == 0 {
		return errors.New(`"consecutiveFailures" and "failureRatio" are both 0, so the breaker could never open (omit the section to turn breakers off)`)
	}
	return nil
}

// settings is a Config with its defaults applied and its values clamped to
// what the implementation can hold.
type settings struct {
	consecutive uint32  // 0: rule off
	ratio       float64 // 0: rule off
	minRequests uint32
	window      time.Duration
	openTimeout time.Duration
	halfOpen    uint32 // 1..maxHalfOpen
}

// maxHalfOpen is the most probes the packed probe word can count.
const maxHalfOpen = probeMask

func (c Config) settings() settings {
	s := settings{
		consecutive: DefaultConsecutiveFailures,
		ratio:       DefaultFailureRatio,
		minRequests: DefaultMinRequests,
		window:      DefaultWindow,
		openTimeout: DefaultOpenTimeout,
		halfOpen:    DefaultHalfOpenRequests,
	}
	if c.ConsecutiveFailures != nil {
		s.consecutive = uint32(min(max(*c.ConsecutiveFailures, 0), math.MaxUint32))
	}
	if c.FailureRatio != nil {
		r := *c.FailureRatio
		if !(r > 0) { // 0, negative or NaN: off
			r = 0
		}
		s.ratio = min(r, 1)
	}
	if c.MinRequests > 0 {
		s.minRequests = uint32(min(c.MinRequests, math.MaxUint32))
	}
	if c.Window > 0 {
		s.window = max(c.Window, WindowBuckets) // at least 1ns per bucket
	}
	if c.OpenTimeout > 0 {
		s.openTimeout = c.OpenTimeout
	}
	if c.HalfOpenRequests > 0 {
		s.halfOpen = uint32(min(c.HalfOpenRequests, maxHalfOpen))
	}
	return s
}
