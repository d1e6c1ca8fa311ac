package balancer

import (
	"errors"
	"fmt"
	"time"
)

// ErrNoEndpoints is matched (with errors.Is) by every error that says a request
// found no endpoint to go to.
var ErrNoEndpoints = errors.New("lodestar: no endpoints available")

// ErrClosed is returned by picks on a closed engine.
var ErrClosed = errors.New("lodestar: balancer closed")

// NoEndpointsError says why a service has no endpoint to pick.
// errors.Is(err, ErrNoEndpoints) matches it.
type NoEndpointsError struct {
	// Service is the engine's service name.
	Service string
	// Reason says why, for example "3 endpoints, all unhealthy".
	Reason string
	// FeedErr is the discovery feed's last error, if it has one.
	FeedErr error
}

// Error says which service has no endpoint and why.
func (e *NoEndpointsError) Error() string {
	s := fmt.Sprintf("lodestar: no endpoints available for %q: %s", e.Service, e.Reason)
	if e.FeedErr != nil {
		s += " (last discovery error: " + e.FeedErr.Error() + ")"
	}
	return s
}

// Is reports whether target is ErrNoEndpoints.
func (e *NoEndpointsError) Is(target error) bool { return target == ErrNoEndpoints }

// Unwrap returns the feed error.
func (e *NoEndpointsError) Unwrap() error { return e.FeedErr }

// ErrDiscoveryPending is matched (with errors.Is) by every error that says a
// service's discovery feed has not delivered its first endpoint set yet. It is
// not ErrNoEndpoints: discovery has not said the service has none.
var ErrDiscoveryPending = errors.New("lodestar: discovery has not answered yet")

// DiscoveryPendingError says that a service's feed has not delivered a set of
// endpoints yet: a pick waited for the first answer up to
// Config.InitialDiscoveryTimeout (or the request's deadline) in vain, or the
// feed's first answer was an error. errors.Is(err, ErrDiscoveryPending) matches
// it, and so do the feed's error and the context's error it carries.
type DiscoveryPendingError struct {
	// Service is the engine's service name.
	Service string
	// Target is where the endpoints come from (Options.Target), secrets redacted.
	Target string
	// Waited is how long discovery has been running without a set.
	Waited time.Duration
	// FeedErr is the error the feed reported instead of a set, if any.
	FeedErr error
	// CtxErr is the request context's error when the context ended the wait.
	CtxErr error
}

// Error says which service's discovery has not answered, for how long, and why
// if the feed said.
func (e *DiscoveryPendingError) Error() string {
	s := fmt.Sprintf("lodestar: no endpoints for %q yet: discovery", e.Service)
	if e.Target != "" {
		s += " (" + e.Target + ")"
	}
	if e.FeedErr != nil {
		s += " failed before delivering any endpoint"
		if e.Waited > 0 {
			s += fmt.Sprintf(" in %v", e.Waited)
		}
		s += ": " + e.FeedErr.Error()
	} else {
		s += " has not answered yet"
		if e.Waited > 0 {
			s += fmt.Sprintf(" after %v", e.Waited)
		}
	}
	if e.CtxErr != nil {
		s += " (request: " + e.CtxErr.Error() + ")"
	}
	return s
}

// Is reports whether target is ErrDiscoveryPending.
func (e *DiscoveryPendingError) Is(target error) bool { return target == ErrDiscoveryPending }

// Unwrap returns the feed's and the context's errors, those that are set.
func (e *DiscoveryPendingError) Unwrap() []error {
	var errs []error
	if e.FeedErr != nil {
		errs = append(errs, e.FeedErr)
	}
	if e.CtxErr != nil {
		errs = append(errs, e.CtxErr)
	}
	return errs
}

// ErrOverloaded is matched (with errors.Is) by the error of a pick that found
// every eligible endpoint at Config.MaxInFlightPerEndpoint.
var ErrOverloaded = errors.New("lodestar: every endpoint is at its concurrency limit")

// OverloadedError says that every eligible endpoint of a service is at its
// concurrency limit. errors.Is(err, ErrOverloaded) matches it; it is not
// ErrNoEndpoints (the endpoints are there, and busy).
type OverloadedError struct {
	// Service is the engine's service name.
	Service string
	// Endpoints is how many eligible endpoints were at the limit.
	Endpoints int
	// Limit is Config.MaxInFlightPerEndpoint.
	Limit int
}

// Error says which service is overloaded and at what limit.
func (e *OverloadedError) Error() string {
	return fmt.Sprintf("lodestar: all %d endpoints of %q are at their limit of %d requests in flight (maxInFlightPerEndpoint)", e.Endpoints, e.Service, e.Limit)
}

// Is reports whether target is ErrOverloaded.
func (e *OverloadedError) Is(target error) bool { return target == ErrOverloaded }
