package grpcpolicy

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"google.golang.org/grpc"
	grpcbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/internal/monotime"
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

// attemptKey is the context key of an attempt's record.
type attemptKey struct{}

// interceptors is set once any retry interceptor exists, so that pickers of
// channels without a retry section look for a call record only then.
var interceptors atomic.Bool

// callState is one call's retry record, shared by the interceptor and the
// picks and Done callbacks of the call's attempts (grpc may run a Done and
// the next pick on other goroutines, and hedges run at once; mu orders
// them). It guards the fields of the call's attempts too.
type callState struct {
	mu      sync.Mutex
	tried   []*balancer.Endpoint
	triedA  [4]*balancer.Endpoint // tried's first backing array
	channel *channelRetry         // the channel's retry section, told by the first pick
	stream  bool                  // a stream call: its record only steers grpc's own retries
	perTry  time.Duration         // the per-try timeout, once known
	// cancelable: each attempt gets a context of its own (for a per-try
	// timeout or a hedge); set before the first attempt.
	cancelable bool
	first      attemptState // the first attempt's record, to save an allocation
}

// attemptState is one attempt's record (fields under call.mu): its per-try
// timer, armed at its first pick once the policy is known, and its outcome,
// recorded by its Done.
type attemptState struct {
	call     *callState
	cancel   context.CancelFunc
	timer    *time.Timer
	timedOut bool
	done     bool
	class    outcome.Class
	code     codes.Code
	sent     bool
	pushback time.Duration
	hasPush  bool
	noRetry  bool // the server's pushback said not to retry
	latency  time.Duration
}

// attemptOf returns the attempt record in ctx, or nil.
func attemptOf(ctx context.Context) *attemptState {
	if ctx == nil {
		return nil
	}
	as, _ := ctx.Value(attemptKey{}).(*attemptState)
	return as
}

// picked records that a pick of the attempt chose ep on a channel whose retry
// section is ch (nil when it has none), and arms the per-try timeout.
func (as *attemptState) picked(ep *balancer.Endpoint, ch *channelRetry) {
	cs := as.call
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
	as.armLocked()
}

// avoid returns the endpoints the call has tried, for the next pick.
func (as *attemptState) avoid() []*balancer.Endpoint {
	as.call.mu.Lock()
	defer as.call.mu.Unlock()
	return as.call.tried
}

// armLocked starts the attempt's per-try timer, once.
func (as *attemptState) armLocked() {
	if as.call.perTry <= 0 || as.cancel == nil || as.timer != nil {
		return
	}
	cancel := as.cancel
	as.timer = time.AfterFunc(as.call.perTry, func() {
		as.call.mu.Lock()
		as.timedOut = true
		as.call.mu.Unlock()
		cancel()
	})
}

// begin starts attempt as, whose context cancel ends, and returns that
// context carrying it.
func (cs *callState) begin(ctx context.Context, as *attemptState) context.Context {
	var cancel context.CancelFunc
	if cs.cancelable {
		ctx, cancel = context.WithCancel(ctx)
	}
	cs.mu.Lock()
	*as = attemptState{call: cs, cancel: cancel}
	as.armLocked()
	cs.mu.Unlock()
	return context.WithValue(ctx, attemptKey{}, as)
}

// end stops the attempt's timer, ends its context and returns its record as
// it stands (the Done of an attempt runs before its invoker returns).
func (as *attemptState) end() attemptState {
	as.call.mu.Lock()
	defer as.call.mu.Unlock()
	if as.timer != nil {
		as.timer.Stop()
	}
	if as.cancel != nil {
		as.cancel()
	}
	as.cancel, as.timer = nil, nil
	return *as
}

// finished records an attempt's outcome (from its Done).
func (as *attemptState) finished(o outcome.Outcome, code codes.Code, sent bool, push time.Duration, hasPush, noRetry bool) {
	as.call.mu.Lock()
	defer as.call.mu.Unlock()
	as.done, as.class, as.code, as.sent = true, o.Class, code, sent
	as.pushback, as.hasPush, as.noRetry, as.latency = push, hasPush, noRetry, o.Latency
}

// cutByPerTry reports whether the attempt's per-try timer fired.
func (as *attemptState) cutByPerTry() bool {
	as.call.mu.Lock()
	defer as.call.mu.Unlock()
	return as.timedOut
}

// channelRetry is a channel's retry section, compiled, with its budget.
type channelRetry struct {
	policy   *retry.Policy
	budget   *retry.Budget
	hedger   *retry.Hedger // nil: the section does not hedge
	hedge    bool
	maxExtra int          // hedges a call may send: hedge.maxExtra, within maxAttempts
	hedges   atomic.Int64 // hedges sent, for inspection and metrics
}

// hedgeDelay returns how long a call waits before its next hedge, and false
// when it is not to hedge (a percentile delay before the channel has enough
// latencies).
func (ch *channelRetry) hedgeDelay() (time.Duration, bool) { return ch.hedger.Delay() }

// observe records an answered attempt's latency for the percentile hedge
// delay (not a cancelled one: its time says nothing of the service's).
func (ch *channelRetry) observe(class outcome.Class, d time.Duration) {
	if ch.hedger != nil && class.Counted() {
		ch.hedger.ObserveAt(d, monotime.Now())
	}
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
	ch := &channelRetry{policy: p, budget: p.NewBudget(nil), hedger: p.NewHedger(nil)}
	if ch.hedger != nil {
		// Hedges count toward maxAttempts, as in the HTTP door.
		ch.maxExtra = min(ch.hedger.Hedge().MaxExtra, p.MaxAttempts()-1)
		ch.hedge = ch.maxExtra > 0
	}
	return ch, nil
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
	channels   sync.Map // weak.Pointer[grpc.ClientConn] → *channelRetry: a hedging section a channel's call met
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
		cs.first.call = cs
		return streamer(context.WithValue(ctx, attemptKey{}, &cs.first), desc, cc, method, opts...)
	}
}

// UnaryClientInterceptor returns the interceptor that retries (and hedges)
// unary calls; see Retries.
func (r *Retries) UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return r.unary
}

// testHookBackoff, when set, is called as a retry starts waiting d.
var testHookBackoff atomic.Pointer[func(d time.Duration)]

// outcomeOf reads an ended attempt: its class, code and error, with a cut by
// the per-try timeout turned into DEADLINE_EXCEEDED saying so.
func outcomeOf(ctx context.Context, a attemptState, perTry time.Duration, err error) (outcome.Class, codes.Code, error) {
	class, code := a.class, a.code
	if a.timedOut && ctx.Err() == nil {
		// The per-try timeout cut the attempt, not the caller.
		class, code = outcome.Timeout, codes.DeadlineExceeded
		err = status.Error(codes.DeadlineExceeded, fmt.Sprintf("lodestar: per-try timeout (%v) exceeded: %v", perTry, status.Convert(err).Message()))
	}
	return class, code, err
}

func (r *Retries) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	cs := &callState{}
	// known is the section this channel's calls met so far (noSection for
	// none), or nil before its first call: a call learns its channel's
	// section only at its first pick.
	known := r.fixed
	if known == nil {
		if v, ok := r.channels.Load(weak.Make(cc)); ok {
			known = v.(*channelRetry)
		}
	}
	if known != nil && known.policy != nil {
		cs.perTry = known.policy.PerTryTimeout()
		if r.fixed != nil {
			cs.channel = r.fixed
		}
	}
	// An attempt needs a context of its own only for a per-try timeout,
	// which a channel not seen yet may have.
	cs.cancelable = known == nil || cs.perTry > 0
	idempotent := retry.IsIdempotent(ctx) || r.idempotentMethod(method)
	if known != nil && known.hedge && idempotent {
		if m, ok := reply.(proto.Message); ok {
			cs.cancelable = true // hedges' losers are cancelled
			err := r.hedged(ctx, cs, known, method, req, m, cc, invoker, opts)
			r.follow(cc, cs, known)
			return err
		}
	}
	var prev time.Duration
	for n := 1; ; n++ {
		as := &cs.first
		if n > 1 {
			as = new(attemptState)
		}
		err := invoker(cs.begin(ctx, as), method, req, reply, cc, opts...)
		a := as.end()
		cs.mu.Lock()
		ch, perTry := cs.channel, cs.perTry
		cs.mu.Unlock()
		class, code, err := outcomeOf(ctx, a, perTry, err)
		if n == 1 {
			r.follow(cc, cs, known)
		}
		if ch == nil {
			return err // a channel without a retry section: nothing to apply
		}
		if n == 1 {
			ch.budget.Deposit()
		}
		if a.done {
			ch.observe(class, a.latency)
		}
		if err == nil || !a.done || a.noRetry || n >= ch.policy.MaxAttempts() ||
			!ch.policy.Retryable(class, 0, code, a.sent, idempotent) {
			// No Done record: the pick failed (no endpoint, overload); the
			// engine already waited as configured, and a retry would meet
			// the same answer.
			return err
		}
		if prev, err = r.waitRetry(ctx, ch, n, prev, a, err); err != nil {
			return err
		}
	}
}

// noSection is what the interceptors remember of a channel whose calls met
// no retry section.
var noSection = &channelRetry{}

// follow remembers the section the call met on cc (known is what was
// remembered before it), so that the channel's next calls know it from their
// start: whether to hedge, and whether an attempt needs a context of its own.
// The entry goes when cc is collected.
func (r *Retries) follow(cc *grpc.ClientConn, cs *callState, known *channelRetry) {
	if r.fixed != nil {
		return
	}
	cs.mu.Lock()
	met, picked := cs.channel, len(cs.tried) > 0
	cs.mu.Unlock()
	if !picked {
		return // no pick: the call learnt nothing
	}
	if met == nil {
		met = noSection
	}
	if met == known {
		return
	}
	key := weak.Make(cc)
	if _, loaded := r.channels.Swap(key, met); !loaded {
		runtime.AddCleanup(cc, func(k weak.Pointer[grpc.ClientConn]) { r.channels.Delete(k) }, key)
	}
}

// waitRetry makes the wait before retry n (the budget allowing, and the
// caller's deadline leaving time for it): it returns the delay it waited, or
// last (unchanged) when there is to be no retry, or the caller's error when
// the context ended during the wait.
func (r *Retries) waitRetry(ctx context.Context, ch *channelRetry, n int, prev time.Duration, a attemptState, last error) (time.Duration, error) {
	var after time.Duration
	if a.hasPush {
		after = a.pushback
	}
	delay := ch.policy.Delay(n-1, prev, after)
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= delay {
		return prev, last // the wait would outlive the caller
	}
	if !ch.budget.TryWithdraw() {
		return prev, last
	}
	if werr := backoffWait(ctx, delay); werr != nil {
		return prev, status.FromContextError(werr).Err()
	}
	return delay, nil
}

// attemptResult is what a hedged call's attempt ended with.
type attemptResult struct {
	as    *attemptState
	reply proto.Message
	err   error
}

// hedged runs an idempotent unary call with hedging: each attempt runs on
// its own goroutine with its own reply message; after the hedge delay with
// no answer, another attempt goes to an endpoint the call has not tried (up
// to MaxExtra, each drawn from the budget); the first answer the policy does
// not retry wins and is copied into reply, and the others are cancelled. A
// retryable failure waits for the attempts still running, and retries (with
// backoff, the budget and MaxAttempts) when none is. Nothing outlives the
// call: on return every attempt has been cancelled, and each one's goroutine
// ends when grpc returns from it.
func (r *Retries) hedged(ctx context.Context, cs *callState, ch *channelRetry, method string, req any, reply proto.Message, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts []grpc.CallOption) error {
	results := make(chan attemptResult, ch.policy.MaxAttempts())
	var running []*attemptState
	launch := func(as *attemptState) {
		rep := proto.Clone(reply)
		proto.Reset(rep)
		actx := cs.begin(ctx, as)
		running = append(running, as)
		go func() {
			err := invoker(actx, method, req, rep, cc, opts...)
			results <- attemptResult{as, rep, err}
		}()
	}
	stopAll := func() {
		for _, as := range running {
			as.end()
		}
	}
	defer stopAll()

	launch(&cs.first)
	ch.budget.Deposit()
	var timer *time.Timer
	var timerC <-chan time.Time
	armHedge := func() {
		if d, ok := ch.hedgeDelay(); ok {
			if timer == nil {
				timer = time.NewTimer(d)
			} else {
				timer.Reset(d)
			}
			timerC = timer.C
		} else {
			timerC = nil
		}
	}
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	armHedge()
	retries, extras, inflight := 0, 0, 1
	var prev time.Duration
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-timerC:
			timerC = nil
			if extras < ch.maxExtra && 1+extras+retries < ch.policy.MaxAttempts() && ch.budget.TryWithdraw() {
				extras++
				inflight++
				ch.hedges.Add(1)
				launch(new(attemptState))
				armHedge()
			}
		case res := <-results:
			inflight--
			a := res.as.end()
			cs.mu.Lock()
			perTry := cs.perTry
			cs.mu.Unlock()
			class, code, err := outcomeOf(ctx, a, perTry, res.err)
			if a.done {
				ch.observe(class, a.latency)
			}
			if !a.done && err != nil && inflight > 0 {
				continue // this attempt found no endpoint; another is running
			}
			if err == nil || !a.done || a.noRetry || !ch.policy.Retryable(class, 0, code, a.sent, true) {
				if err == nil {
					proto.Reset(reply)
					proto.Merge(reply, res.reply)
				}
				return err // the first answer that is an answer wins
			}
			if inflight > 0 {
				continue // another attempt may still answer
			}
			if 1+extras+retries >= ch.policy.MaxAttempts() {
				return err // hedges count toward maxAttempts
			}
			var werr error
			if prev, werr = r.waitRetry(ctx, ch, retries+1, prev, a, err); werr != nil {
				return werr
			}
			retries++
			inflight++
			launch(new(attemptState))
			armHedge()
		}
	}
}

// backoffWait waits d (retry.Wait), or until ctx ends (its error is
// returned then).
func backoffWait(ctx context.Context, d time.Duration) error {
	if h := testHookBackoff.Load(); h != nil {
		(*h)(d)
	}
	return retry.Wait(ctx, d)
}
