package balancer

import (
	"errors"
	"fmt"
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
