package retry

import (
	"cmp"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/internal/backoff"
)

// Policy is a Config compiled for the request path: immutable, safe for
// concurrent use, and its decisions allocate nothing. A front door builds one
// per service (NewPolicy) and holds the service's Budget beside it.
type Policy struct {
	maxAttempts   int
	perTryTimeout time.Duration
	classes       uint16              // bit c: outcome.Class c is retryable
	statuses      [statusWords]uint64 // bit s: HTTP status s is retryable
	codes         uint32              // bit c: gRPC code c is retryable
	backoff       backoff.Config      // defaults applied
	hedge         Hedge               // valid when hedged
	hedged        bool
	budget        BudgetConfig // resolved (defaults applied), for NewBudget
}

// Hedge is a policy's hedging, parsed from HedgeConfig.
type Hedge struct {
	// Delay is the fixed time to wait before a hedge, or 0 when Percentile
	// is set.
	Delay time.Duration
	// Percentile, in [50, 99.9], picks the wait from the service's recent
	// latencies, or is 0 when Delay is set.
	Percentile float64
	// MaxExtra is the most hedges per request, in [1, 3].
	MaxExtra int
}

// NewPolicy validates c (Validate) and compiles it. Values out of their
// `range` tag's range, which balancer.CheckRanges rejects, are clamped into
// it here rather than trusted. rnd returns uniformly random 64-bit values,
// concurrently, for the backoff's jitter; nil means math/rand/v2.Uint64 (tests
// pass a seeded source).
func NewPolicy(c Config, rnd func() uint64) (*Policy, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if rnd == nil {
		rnd = rand.Uint64
	}
	p := &Policy{
		maxAttempts:   DefaultMaxAttempts,
		perTryTimeout: min(max(c.PerTryTimeout, 0), time.Hour),
		backoff:       c.Backoff.backoffConfig(rnd),
	}
	ratio, perSecond, window := c.Budget.settings() // resolved: shares nothing with c
	p.budget = BudgetConfig{Ratio: &ratio, MinPerSecond: &perSecond, Window: window}
	if c.MaxAttempts != 0 {
		p.maxAttempts = min(max(c.MaxAttempts, 1), 10)
	}
	retryOn := c.RetryOn
	if retryOn == nil {
		retryOn = defaultRetryOn
	}
	for _, name := range retryOn {
		class, _ := conditionClass(name)
		p.classes |= 1 << class
	}
	for _, s := range c.RetryableStatuses {
		p.statuses[s/64] |= 1 << (s % 64)
	}
	for _, name := range c.RetryableCodes {
		code, _ := parseCode(name)
		p.codes |= 1 << code
	}
	if h := c.Hedge; h != nil {
		d, pct, _ := parseHedgeDelay(cmp.Or(h.Delay, DefaultHedgeDelay))
		p.hedge = Hedge{Delay: d, Percentile: pct, MaxExtra: DefaultHedgeMaxExtra}
		if h.MaxExtra != 0 {
			p.hedge.MaxExtra = min(max(h.MaxExtra, 1), 3)
		}
		p.hedged = true
	}
	return p, nil
}

// MaxAttempts is the most attempts one request makes, the first included
// (1: no retry).
func (p *Policy) MaxAttempts() int { return p.maxAttempts }

// PerTryTimeout bounds each attempt; 0 means no per-try bound. The caller's
// deadline bounds the whole request regardless.
func (p *Policy) PerTryTimeout() time.Duration { return p.perTryTimeout }

// Hedge returns the policy's hedging, and false when hedging is off.
func (p *Policy) Hedge() (Hedge, bool) { return p.hedge, p.hedged }

// NewBudget returns a new budget built from the policy's budget section; see
// the package function NewBudget.
func (p *Policy) NewBudget(now func() time.Duration) *Budget { return NewBudget(p.budget, now) }

// Retryable reports whether a failed attempt may be retried, by the policy's
// lists and the safety rule. class is the attempt's outcome class, status its
// HTTP status (0 when none, or over gRPC) and code its gRPC status code
// (codes.OK when none, or over HTTP). sent reports whether the request may
// have reached the server; idempotent whether sending it twice is harmless
// (see Idempotent: for HTTP, the method or an Idempotency-Key header; the
// caller may also mark a request).
//
// The attempt is listed when its class is in RetryOn, or its status in
// RetryableStatuses, or its code in RetryableCodes. Success and Canceled (the
// caller gave up) are never retried, NotSent (the request never went out)
// always is.
//
// The safety rule: a non-idempotent request is never sent twice. After the
// request may have reached the server (sent), only an idempotent request is
// retried, whatever the lists say; a request of any method is retried when the
// failure proves it never left: sent is false (connection refused, DNS
// failure, HTTP/2 REFUSED_STREAM or GOAWAY before the stream was processed,
// gRPC's transparent-retry cases), or the class is ConnectError or NotSent,
// which are that proof. A front door that cannot tell must pass sent = true.
//
// Retryable does not count attempts (MaxAttempts), consult the budget
// (Budget.TryWithdraw), check that a body can be replayed, or look at the
// caller's deadline: the front door does, in that order of cheapness.
func (p *Policy) Retryable(class outcome.Class, status int, code codes.Code, sent, idempotent bool) bool {
	switch class {
	case outcome.Success, outcome.Canceled:
		return false
	case outcome.NotSent:
		return true
	case outcome.ConnectError:
		sent = false
	}
	if sent && !idempotent {
		return false
	}
	return class < 16 && p.classes&(1<<class) != 0 ||
		status > 0 && status <= maxStatus && p.statuses[status/64]&(1<<(status%64)) != 0 ||
		code > 0 && code < 32 && p.codes&(1<<code) != 0
}

// Delay returns how long to wait before retry number retry (0 for the first
// retry, the request's second attempt): the backoff's jittered delay. prev is
// the delay Delay returned for the retry before (0 before the first retry):
// decorrelated jitter draws from [base, 3·prev]; full and equal jitter ignore
// it.
//
// retryAfter is the server's own word, when it gave one (HTTP Retry-After on
// a 429 or 503, see ParseRetryAfter; gRPC grpc-retry-pushback-ms, see
// ParseRetryPushback), else 0. It is honoured up to backoff.max: the delay is
// max(jittered delay, min(retryAfter, backoff.max)). The cap is deliberate:
// the retry goes to another endpoint, while the one that asked for the pause
// gets no picks for its Retry-After (the front door tells the balancer), so a
// long Retry-After from one endpoint need not hold the request; and the
// caller's deadline bounds the wait in any case.
func (p *Policy) Delay(retry int, prev, retryAfter time.Duration) time.Duration {
	d := p.backoff.Next(retry, prev)
	if retryAfter > 0 {
		d = max(d, min(retryAfter, p.backoff.Max))
	}
	return d
}
