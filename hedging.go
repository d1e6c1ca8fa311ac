package lodestar

import (
	"context"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/retry"
)

// Hedging (the retry policy's hedge section): a request that may be hedged
// runs its first attempt inline, as any request does, on its own
// cancellable context, with a timer armed for the hedge delay. An answer
// before the delay stops the timer: the request goes on as without hedging
// (the timer and its state come from a per-service pool, so this costs the
// context and two timer operations). When the delay passes first, the
// timer's goroutine runs the race (hedge.race): it sends hedges, each to an
// endpoint not tried yet and, of two the algorithm offers, the one with
// fewer requests in flight (Engine.PickHedge), each paid by the budget, up
// to min(maxExtra, maxAttempts-1), one per delay; the first answer the
// policy does not call retryable wins, the others are cancelled and their
// bodies closed, and every attempt has returned before RoundTrip does (the
// winner's context ends with its body). When every attempt failed
// retryably, the request goes on to the retry loop with the attempts and
// endpoints the race used.

// hedging is a service's hedging state, in service.
type hedging struct {
	hedger    *retry.Hedger // nil: the service does not hedge
	maxHedges int           // min(maxExtra, maxAttempts-1) ≥ 1
	hedges    sync.Pool     // of *hedge, whose timer has not fired
}

// initHedging sets up hedging for a service with a retry policy.
func (s *service) initHedging() {
	h, ok := s.policy.Hedge()
	if !ok || s.policy.MaxAttempts() < 2 {
		return
	}
	s.hedger = s.policy.NewHedger(nil)
	s.maxHedges = min(h.MaxExtra, s.policy.MaxAttempts()-1)
	s.hedges.New = func() any { return newHedge(s) }
}

// hedgeable reports whether req may be hedged: it is idempotent, and its
// body, if any, can be replayed. Non-idempotent requests are never hedged.
func hedgeable(ctx context.Context, req *http.Request) bool {
	if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		return false
	}
	return retry.Idempotent(req.Method, req.Header) || retry.IsIdempotent(ctx)
}

// attemptCtx is a hedged attempt's own context. The race sets lost before
// it cancels the context of an attempt that another one beat.
type attemptCtx struct {
	ctx    context.Context
	cancel context.CancelFunc
	lost   atomic.Bool
}

// isLost reports whether the race cancelled the attempt; false for nil.
func (a *attemptCtx) isLost() bool { return a != nil && a.lost.Load() }

// hedge is one hedgeable request's race: pooled per service while its timer
// has not fired, and the race's own once it has.
type hedge struct {
	s     *service
	timer *time.Timer // runs race when the delay passes with no answer

	// The request, set before the timer is armed.
	ctx   context.Context // the caller's
	req   *http.Request
	ep    *balancer.Endpoint // the first attempt's
	delay time.Duration
	first attemptCtx // the first attempt's context

	results chan hedgeResult // every attempt's answer, the first's from RoundTrip
	final   chan hedgeResult // the race's answer, for RoundTrip
}

// hedgeResult is one attempt's answer, or the race's.
type hedgeResult struct {
	own   *attemptCtx
	ep    *balancer.Endpoint
	resp  *http.Response
	class outcome.Class
	err   error
	// The race's answer only: whether it is final (the policy does not
	// retry it), how many attempts the race made and on which endpoints.
	good     bool
	attempts int
	tried    []*balancer.Endpoint
}

func newHedge(s *service) *hedge {
	h := &hedge{
		s:       s,
		results: make(chan hedgeResult, 1+s.maxHedges),
		final:   make(chan hedgeResult, 1),
	}
	h.timer = time.AfterFunc(time.Hour, h.race)
	h.timer.Stop()
	return h
}

// hedgedRoundTrip is roundTrip for a hedgeable request, the first attempt on
// ep, with a hedge after delay.
func (s *service) hedgedRoundTrip(ctx context.Context, req *http.Request, ep *balancer.Endpoint, delay time.Duration) (*http.Response, error) {
	h := s.hedges.Get().(*hedge)
	h.ctx, h.req, h.ep, h.delay = ctx, req, ep, delay
	h.first.ctx, h.first.cancel = context.WithCancel(ctx)
	h.timer.Reset(delay)
	resp, class, end, err := s.attemptOn(ctx, &h.first, req, ep, nil)
	if h.timer.Stop() {
		// Answered before the delay: no race. The hedge goes back to the
		// pool (the attempt's context ends with its body, or has ended).
		h.ctx, h.req, h.ep, h.first.ctx, h.first.cancel = nil, nil, nil, nil, nil
		s.hedges.Put(h)
		s.budget.DepositAt(end)
		if err == nil && !s.policy.Retryable(class, resp.StatusCode, codes.OK, true, true) {
			return resp, nil
		}
		return s.retry(ctx, req, ep, resp, class, err)
	}
	// The delay passed first: the race is on (it deposits for the request).
	// This attempt's answer joins it; the race answers once every attempt
	// has returned.
	h.results <- hedgeResult{own: &h.first, ep: ep, resp: resp, class: class, err: err}
	f := <-h.final
	if f.good {
		return f.resp, f.err
	}
	return s.retryFrom(ctx, req, f.ep, f.resp, f.class, f.err, f.attempts, f.tried)
}

// testHookHedge, when set, is called as a race sends a hedge to ep, the
// request having tried the endpoints tried.
var testHookHedge atomic.Pointer[func(tried []*balancer.Endpoint, ep *balancer.Endpoint)]

// race runs on the timer's goroutine once the delay has passed with no
// answer from the first attempt (which is still running in RoundTrip, or
// returning: its answer comes through h.results either way).
func (h *hedge) race() {
	s := h.s
	s.budget.Deposit() // the request's, which RoundTrip leaves to the race
	hasBody := h.req.Body != nil && h.req.Body != http.NoBody
	info := s.affinity.pickInfo(h.ctx, h.req)
	owns := make([]*attemptCtx, 1, 1+s.maxHedges)
	owns[0] = &h.first
	tried := make([]*balancer.Endpoint, 1, s.policy.MaxAttempts())
	tried[0] = h.ep
	inflight, hedges := 1, 0

	// launch sends one more hedge, if the count, the caller's context, the
	// budget and the balancer allow.
	launch := func() bool {
		if hedges >= s.maxHedges || h.ctx.Err() != nil || !s.budget.TryWithdraw() {
			return false
		}
		ep, err := s.engine.PickHedge(info, tried)
		if err != nil {
			return false
		}
		var body io.ReadCloser
		if hasBody {
			if body, err = h.req.GetBody(); err != nil {
				s.engine.Done(ep, outcome.Outcome{Class: outcome.NotSent, Err: err})
				return false
			}
		}
		own := &attemptCtx{}
		own.ctx, own.cancel = context.WithCancel(h.ctx)
		if hk := testHookHedge.Load(); hk != nil {
			(*hk)(tried, ep)
		}
		owns = append(owns, own)
		tried = append(tried, ep)
		inflight++
		hedges++
		s.obs.hedges.Add(1) // lodestar.client.hedges
		go func() {
			resp, class, _, err := s.attemptOn(h.ctx, own, h.req, ep, body)
			h.results <- hedgeResult{own: own, ep: ep, resp: resp, class: class, err: err}
		}()
		return true
	}

	var tick <-chan time.Time // the next hedge's delay
	var t *time.Timer
	if launch() && hedges < s.maxHedges {
		t = time.NewTimer(h.delay)
		defer t.Stop()
		tick = t.C
	}
	var win, last *hedgeResult
	for inflight > 0 {
		select {
		case r := <-h.results:
			inflight--
			switch {
			case win != nil: // beaten: it was cancelled, or answered too late
				discard(r, true)
			case !s.policy.Retryable(r.class, statusOf(r.resp), codes.OK, true, true):
				win, tick = &r, nil
				for _, o := range owns {
					if o != r.own {
						o.lost.Store(true)
						o.cancel()
					}
				}
				if last != nil {
					discard(*last, false)
					last = nil
				}
			default: // a retryable failure: wait for the others
				if last != nil {
					discard(*last, false)
				}
				last = &r
			}
		case <-tick:
			if launch() && hedges < s.maxHedges {
				t.Reset(h.delay)
			} else {
				tick = nil
			}
		}
	}
	f := last
	if win != nil {
		f = win
		f.good = true
	}
	f.attempts, f.tried = 1+hedges, tried
	h.final <- *f
}

func statusOf(resp *http.Response) int {
	if resp == nil {
		return 0
	}
	return resp.StatusCode
}

// discard closes the response of an attempt that is not the answer: a
// retryable failure superseded by a later answer (lost false: its body is
// drained a little, so that its connection can be reused, as the retry loop
// does), or an attempt another one beat (lost true: its context is ended
// first, so the drain cannot wait on a slow body). Its outcome is reported
// when its body closes, as for any response.
func discard(r hedgeResult, lost bool) {
	if r.resp == nil {
		return
	}
	n := int64(64 << 10)
	if lost {
		r.own.cancel()
		n = 4 << 10
	}
	io.CopyN(io.Discard, r.resp.Body, n)
	r.resp.Body.Close()
}
