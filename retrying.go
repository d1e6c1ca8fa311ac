package lodestar

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/retry"
)

// WithIdempotent marks the requests made with the returned context as
// idempotent: a service with retries (Config.Retry) may then send them again
// after they may have reached a server, whatever their method, as it does
// GET, HEAD, OPTIONS, PUT, DELETE and TRACE requests and requests with an
// Idempotency-Key header. Mark only requests that are harmless to repeat.
// It is retry.WithIdempotent, the mark the gRPC door reads too.
func WithIdempotent(ctx context.Context) context.Context { return retry.WithIdempotent(ctx) }

// PerTryTimeoutError is the error of an attempt that the retry policy's
// perTryTimeout cut before its response headers arrived (outcome.Timeout).
type PerTryTimeoutError struct {
	Limit time.Duration // the policy's perTryTimeout
	Err   error         // the base transport's error
}

// Error says the per-try timeout cut the attempt, and why the base
// transport stopped.
func (e *PerTryTimeoutError) Error() string {
	return fmt.Sprintf("per-try timeout (%v) exceeded: %v", e.Limit, e.Err)
}

// Unwrap returns the base transport's error.
func (e *PerTryTimeoutError) Unwrap() error { return e.Err }

// Timeout reports true: the error is a timeout (net.Error's convention).
func (e *PerTryTimeoutError) Timeout() bool { return true }

// RetryBudget returns the retry budget of the named service (case does not
// matter), or nil when it has no retry policy or is no service: for
// inspection (Budget.Withdrawn, Budget.Refused).
func (t *Transport) RetryBudget(service string) *retry.Budget {
	if s := t.lookup(service); s != nil {
		return s.budget
	}
	return nil
}

// roundTrip is RoundTrip for a service with a retry policy, from the first
// attempt's endpoint. The first attempt costs what a request without retries
// costs, plus the budget's deposit (an atomic add); the rest is in retry,
// which only a failed attempt reaches.
func (s *service) roundTrip(ctx context.Context, req *http.Request, ep *balancer.Endpoint) (*http.Response, error) {
	if s.hedger != nil {
		if d, ok := s.hedger.Delay(); ok && hedgeable(ctx, req) {
			return s.hedgedRoundTrip(ctx, req, ep, d)
		}
	}
	resp, class, end, err := s.attempt(ctx, req, ep, nil)
	s.budget.DepositAt(end)
	if err == nil && !s.policy.Retryable(class, resp.StatusCode, codes.OK, true, true) {
		return resp, nil
	}
	return s.retry(ctx, req, ep, resp, class, err)
}

// retry decides on and makes the retries of a request whose attempt on ep
// ended with resp (a response, maybe a retryable status) or err, of class.
// It returns the last attempt's response or error: a retryable status that
// used up the attempts (or the budget, or the deadline) is returned as the
// response it is.
func (s *service) retry(ctx context.Context, req *http.Request, ep *balancer.Endpoint, resp *http.Response, class outcome.Class, err error) (*http.Response, error) {
	return s.retryFrom(ctx, req, ep, resp, class, err, 1, nil)
}

// retryFrom is retry after the request made used attempts (a hedge race
// makes several) on the endpoints tried (nil: only ep), the last on ep.
func (s *service) retryFrom(ctx context.Context, req *http.Request, ep *balancer.Endpoint, resp *http.Response, class outcome.Class, err error, used int, tried []*balancer.Endpoint) (*http.Response, error) {
	p := s.policy
	hasBody := req.Body != nil && req.Body != http.NoBody
	if hasBody && req.GetBody == nil {
		return resp, err // the body was consumed and cannot be replayed
	}
	idempotent := retry.Idempotent(req.Method, req.Header) || retry.IsIdempotent(ctx)
	var prev time.Duration
	for n := used; n < p.MaxAttempts(); n++ {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		// sent: a response says it was; ConnectError (and NotSent) prove it
		// was not, which Retryable knows.
		if !p.Retryable(class, status, codes.OK, true, idempotent) {
			break
		}
		var after time.Duration
		if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
			if v := resp.Header.Get("Retry-After"); v != "" {
				after, _ = retry.ParseRetryAfter(v, time.Now())
			}
		}
		delay := p.Delay(n-1, prev, after)
		prev = delay
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= delay {
			break // the wait would outlive the caller: keep the answer we have
		}
		if !s.budget.TryWithdraw() {
			break
		}
		if resp != nil { // done with it: read a little so the connection is reused
			io.CopyN(io.Discard, resp.Body, 64<<10)
			resp.Body.Close()
			resp = nil
		}
		if werr := backoffWait(ctx, delay); werr != nil {
			return nil, werr
		}
		if tried == nil {
			tried = make([]*balancer.Endpoint, 0, p.MaxAttempts())
		}
		if !slices.Contains(tried, ep) {
			tried = append(tried, ep)
		}
		next, perr := s.engine.PickAvoiding(s.affinity.pickInfo(ctx, req), tried)
		if perr != nil {
			if perr == balancer.ErrClosed {
				perr = errClosed
			}
			return nil, perr
		}
		ep = next
		var body io.ReadCloser
		if hasBody {
			if body, err = req.GetBody(); err != nil {
				s.engine.Done(ep, outcome.Outcome{Class: outcome.NotSent, Err: err})
				return nil, fmt.Errorf("lodestar: %s: replaying the request body: %w", s.name, err)
			}
		}
		resp, class, _, err = s.attempt(ctx, req, ep, body)
	}
	return resp, err
}

// testHookBackoff, when set, is called as a retry starts waiting d.
var testHookBackoff atomic.Pointer[func(d time.Duration)]

// backoffWait waits d (retry.Wait), or until ctx ends (its error is
// returned then).
func backoffWait(ctx context.Context, d time.Duration) error {
	if h := testHookBackoff.Load(); h != nil {
		(*h)(d)
	}
	return retry.Wait(ctx, d)
}
