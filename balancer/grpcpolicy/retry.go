package grpcpolicy

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	grpcbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/retry"
)

// This file is the gRPC door's half of retries. The policy (package retry)
// decides, delays and budgets; the interceptors below make the attempts; and
// the picker, which alone knows which endpoint an attempt went to and what the
// channel's configuration says, talks to the interceptor through a per-call
// record (callState) in the call's context:
//
//   - the interceptor puts the record in the context before the first attempt;
//   - each pick reads it: it avoids the endpoints the call has tried
//     (Engine.PickAvoiding), records the endpoint it chose, hands the
//     interceptor the channel's retry policy and arms the attempt's per-try
//     timeout;
//   - each attempt's Done records its outcome (class, code, whether anything
//     was sent, grpc-retry-pushback-ms), which the interceptor reads when the
//     attempt returns.
//
// Because the record is per call and every pick of the call sees it, grpc's
// own retries (a service config's retryPolicy) and its transparent retries go
// to another endpoint too, as long as the call went through an interceptor.

// callKey is the context key of a call's record.
type callKey struct{}

// interceptors is set once any retry interceptor exists, so that pickers of
// channels without a retry section look for a call record only then.
var interceptors atomic.Bool

// callState is one call's retry record, shared by the interceptor and the
// picks and Done callbacks of the call's attempts (grpc may run a Done and
// the next pick on other goroutines; mu orders them).
type callState struct {
	mu      sync.Mutex
	tried   []*balancer.Endpoint
	triedA  [4]*balancer.Endpoint // tried's first backing array
	channel *channelRetry         // the channel's retry section, told by the first pick
	stream  bool                  // a stream call: its record only steers grpc's own retries

	// The current attempt: its per-try timeout, armed at its first pick
	// once the policy is known.
	perTry   time.Duration
	cancel   context.CancelFunc
	timer    *time.Timer
	timedOut bool

	// The last attempt's outcome, recorded by its Done.
	done     bool
	class    outcome.Class
	code     codes.Code
	sent     bool
	pushback time.Duration
	hasPush  bool
	noRetry  bool // the server's pushback said not to retry
}

// callStateOf returns the call record in ctx, or nil.
func callStateOf(ctx context.Context) *callState {
	if ctx == nil {
		return nil
	}
	cs, _ := ctx.Value(callKey{}).(*callState)
	return cs
}

// picked records that a pick of the call chose ep on a channel whose retry
// section is ch (nil when it has none), and arms the per-try timeout.
func (cs *callState) picked(ep *balancer.Endpoint, ch *channelRetry) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.tried == nil {
		cs.tried = cs.triedA[:0]
	}
	cs.tried = append(cs.tried, ep)
	if cs.channel == nil {
		cs.channel = ch
	}
	if cs.perTry == 0 && ch != nil && !cs.stream {
		cs.perTry = ch.policy.PerTryTimeout()
	}
	cs.armLocked()
}

// avoid returns the endpoints the call has tried, for the next pick.
func (cs *callState) avoid() []*balancer.Endpoint {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.tried
}

// armLocked starts the current attempt's per-try timer, once.
func (cs *callState) armLocked() {
	if cs.perTry <= 0 || cs.cancel == nil || cs.timer != nil {
		return
	}
	cancel := cs.cancel
	cs.timer = time.AfterFunc(cs.perTry, func() {
		cs.mu.Lock()
		cs.timedOut = true
		cs.mu.Unlock()
		cancel()
	})
}

// begin starts an attempt whose context cancel ends.
func (cs *callState) begin(cancel context.CancelFunc) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.cancel, cs.timer, cs.timedOut, cs.done = cancel, nil, false, false
	cs.armLocked()
}

// end stops the attempt's timer and reports whether it cut the attempt.
func (cs *callState) end() (timedOut bool) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.timer != nil {
		cs.timer.Stop()
	}
	cs.cancel, cs.timer = nil, nil
	return cs.timedOut
}

// finished records an attempt's outcome (from its Done).
func (cs *callState) finished(o outcome.Outcome, code codes.Code, sent bool, push time.Duration, hasPush, noRetry bool) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.done, cs.class, cs.code, cs.sent = true, o.Class, code, sent
	cs.pushback, cs.hasPush, cs.noRetry = push, hasPush, noRetry
}

// cutByPerTry reports whether the current attempt's per-try timer fired.
func (cs *callState) cutByPerTry() bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.timedOut
}

// channelRetry is a channel's retry section, compiled, with its budget.
type channelRetry struct {
	policy *retry.Policy
	budget *retry.Budget
}

// newChannelRetry compiles a channel's retry section (nil when it has none).
func newChannelRetry(c *retry.Config, rnd func() uint64) (*channelRetry, error) {
	if c == nil {
		return nil, nil
	}
	p, err := retry.NewPolicy(*c, rnd)
	if err != nil {
		return nil, err
	}
	return &channelRetry{policy: p, budget: p.NewBudget(nil)}, nil
}

// pushbackKey is gRFC A6's server pushback trailer.
const pushbackKey = "grpc-retry-pushback-ms"

// readPushback returns the pushback of an attempt's trailer: a delay to
// honour (and pause the endpoint for), or an order not to retry.
func readPushback(di grpcbalancer.DoneInfo) (d time.Duration, has, noRetry bool) {
	v := di.Trailer[pushbackKey]
	if len(v) == 0 {
		return 0, false, false
	}
	d, ok := retry.ParseRetryPushback(v[0])
	return d, ok, !ok
}

// RetryOptions configure the retry interceptors.
type RetryOptions struct {
	// Config, when set, is the retry policy for every call through the
	// interceptors, whatever the channel's configuration says; its budget is
	// the interceptors' own, shared by all their calls. nil (the default)
	// applies each channel's own retry section: the "retry" section of the
	// lodestar policy's loadBalancingConfig, with one budget per channel. A
	// call on a channel without one is not retried by lodestar.
	Config *retry.Config
	// IdempotentMethods lists the methods that are safe to send twice, by
	// full name ("/pkg.Service/Method"), or every method of a service
	// ("/pkg.Service/"). A call to one of them, or whose context carries
	// retry.WithIdempotent, may be retried after it may have reached the
	// server. Any other call is retried only when the failure proves it
	// never left (see retry.Policy.Retryable).
	IdempotentMethods []string
}

// Retries are the gRPC door's retries: interceptors that apply the channel's
// retry section (or RetryOptions.Config) to unary calls, each retry on an
// endpoint the call has not tried, with per-try timeouts, jittered backoff,
// the server's pushback and the retry budget.
//
// Streams: lodestar does not retry a stream itself, as it would have to keep
// and replay what the stream sent. StreamClientInterceptor only tags the call,
// so that grpc's own retries of it (a retryPolicy in the service config,
// which does buffer and replay) and its transparent retries go to another
// endpoint. The same holds for unary calls: with the interceptor installed,
// grpc's retryPolicy retries on another endpoint too.
//
// Configure one of the two retry mechanisms for a method, not both: a unary
// call with both a grpc retryPolicy and a lodestar retry section can make
// up to the product of their maxAttempts.
type Retries struct {
	fixed      *channelRetry
	idempotent map[string]bool
	services   []string
}

// NewRetries returns the retry interceptors configured by opts; a bad
// opts.Config is an error naming the field.
func NewRetries(opts RetryOptions) (*Retries, error) {
	r := &Retries{idempotent: map[string]bool{}}
	if opts.Config != nil {
		if err := balancer.CheckRanges(opts.Config); err != nil {
			return nil, fmt.Errorf("lodestar: retry: %w", err)
		}
		ch, err := newChannelRetry(opts.Config, nil)
		if err != nil {
			return nil, fmt.Errorf("lodestar: retry: %w", err)
		}
		r.fixed = ch
	}
	for i, m := range opts.IdempotentMethods {
		switch {
		case !strings.HasPrefix(m, "/") || strings.Count(m, "/") != 2 || len(m) < 3:
			return nil, fmt.Errorf(`lodestar: retry: IdempotentMethods[%d]: %q is not "/pkg.Service/Method" or "/pkg.Service/"`, i, m)
		case strings.HasSuffix(m, "/"):
			r.services = append(r.services, m)
		default:
			r.idempotent[m] = true
		}
	}
	interceptors.Store(true)
	return r, nil
}

// WithRetries returns a dial option that installs the unary retry
// interceptor with each channel's own retry section:
// grpc.WithChainUnaryInterceptor of NewRetries(RetryOptions{}). For streams
// as well, use Retries.DialOptions.
func WithRetries() grpc.DialOption {
	r, _ := NewRetries(RetryOptions{})
	return grpc.WithChainUnaryInterceptor(r.UnaryClientInterceptor())
}

// DialOptions returns the dial options that install both interceptors.
func (r *Retries) DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(r.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(r.StreamClientInterceptor()),
	}
}

// idempotentMethod reports whether method is listed in IdempotentMethods.
func (r *Retries) idempotentMethod(method string) bool {
	if r.idempotent[method] {
		return true
	}
	for _, s := range r.services {
		if strings.HasPrefix(method, s) {
			return true
		}
	}
	return false
}

// StreamClientInterceptor tags each stream call so that grpc's own retries of
// it avoid the endpoints it tried; see Retries.
func (r *Retries) StreamClientInterceptor() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		cs := &callState{stream: true}
		return streamer(context.WithValue(ctx, callKey{}, cs), desc, cc, method, opts...)
	}
}

// UnaryClientInterceptor returns the interceptor that retries unary calls;
// see Retries.
func (r *Retries) UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return r.unary
}

// testHookBackoff, when set, is called as a retry starts waiting d.
var testHookBackoff atomic.Pointer[func(d time.Duration)]

func (r *Retries) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	cs := &callState{}
	if r.fixed != nil {
		cs.channel = r.fixed
		cs.perTry = r.fixed.policy.PerTryTimeout()
	}
	ctx = context.WithValue(ctx, callKey{}, cs)
	var prev time.Duration
	for n := 1; ; n++ {
		actx, cancel := context.WithCancel(ctx)
		cs.begin(cancel)
		err := invoker(actx, method, req, reply, cc, opts...)
		timedOut := cs.end()
		cancel()

		cs.mu.Lock()
		ch, done, class, code, sent := cs.channel, cs.done, cs.class, cs.code, cs.sent
		push, hasPush, noRetry, perTry := cs.pushback, cs.hasPush, cs.noRetry, cs.perTry
		cs.mu.Unlock()
		if timedOut && ctx.Err() == nil {
			// The per-try timeout cut the attempt, not the caller.
			class, code = outcome.Timeout, codes.DeadlineExceeded
			err = status.Error(codes.DeadlineExceeded, fmt.Sprintf("lodestar: per-try timeout (%v) exceeded: %v", perTry, status.Convert(err).Message()))
		}
		if ch == nil {
			return err // a channel without a retry section: nothing to apply
		}
		if n == 1 {
			ch.budget.Deposit()
		}
		if err == nil || !done || noRetry || n >= ch.policy.MaxAttempts() {
			// No Done record: the pick failed (no endpoint, overload); the
			// engine already waited as configured, and a retry would meet
			// the same answer.
			return err
		}
		idempotent := retry.IsIdempotent(ctx) || r.idempotentMethod(method)
		if !ch.policy.Retryable(class, 0, code, sent, idempotent) {
			return err
		}
		var after time.Duration
		if hasPush {
			after = push
		}
		delay := ch.policy.Delay(n-1, prev, after)
		prev = delay
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= delay {
			return err // the wait would outlive the caller
		}
		if !ch.budget.TryWithdraw() {
			return err
		}
		if werr := backoffWait(ctx, delay); werr != nil {
			return status.FromContextError(werr).Err()
		}
	}
}

// backoffWait waits d, or until ctx ends (its error is returned then).
func backoffWait(ctx context.Context, d time.Duration) error {
	if h := testHookBackoff.Load(); h != nil {
		(*h)(d)
	}
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
