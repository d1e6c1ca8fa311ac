package lodestar

import (
	"context"
	"errors"
	"net"
	"net/http"

	"github.com/lodestar-go/lodestar/balancer/outcome"
)

// A Classifier sorts one HTTP exchange into an outcome class: resp is nil when
// err is not. It runs once per attempt, after the response headers arrive or the
// transport fails, and must be cheap.
type Classifier func(ctx context.Context, resp *http.Response, err error) outcome.Class

// DefaultClassifier is the Classifier used when a Service sets none:
//
//   - the request's context ended: Canceled (the caller gave up);
//   - the connection could not be made: ConnectError;
//   - another transport timeout: Timeout; other transport errors: LocalError;
//   - a response: outcome.HTTPStatusClass of its status (5xx failures, 502-504
//     gateway errors, 429 overloaded, other 4xx client errors).
func DefaultClassifier(ctx context.Context, resp *http.Response, err error) outcome.Class {
	if err == nil {
		return outcome.HTTPStatusClass(resp.StatusCode)
	}
	if ctx.Err() != nil || errors.Is(err, context.Canceled) {
		return outcome.Canceled
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return outcome.ConnectError
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
		return outcome.Timeout
	}
	return outcome.LocalError
}
