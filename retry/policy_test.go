package retry_test

import (
	"context"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/retry"
)

// seeded returns a deterministic source of uniform 64-bit values, safe for
// concurrent use.
func seeded(seed uint64) func() uint64 {
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	return func() uint64 {
		mu.Lock()
		defer mu.Unlock()
		return r.Uint64()
	}
}

func mustPolicy(t testing.TB, c retry.Config) *retry.Policy {
	t.Helper()
	p, err := retry.NewPolicy(c, seeded(1))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var allClasses = []outcome.Class{outcome.Success, outcome.ClientError, outcome.Overloaded, outcome.ServerError,
	outcome.GatewayError, outcome.Timeout, outcome.LocalError, outcome.ConnectError, outcome.Canceled, outcome.NotSent}

// everything lists every condition, every status and every code: the safety
// rule must still hold.
func everything() retry.Config {
	c := retry.Config{RetryOn: []string{"connect_error", "reset", "gateway_error", "overloaded", "timeout", "server_error"}}
	for s := 100; s <= 599; s++ {
		c.RetryableStatuses = append(c.RetryableStatuses, s)
	}
	c.RetryableCodes = []string{"CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
		"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
		"OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}
	return c
}

// The safety table: a non-idempotent request that may have reached the server
// is never retried, whatever the lists say; only the classes that prove the
// request never left (ConnectError, NotSent) override sent.
func TestRetryableSafety(t *testing.T) {
	p := mustPolicy(t, everything())
	for _, class := range allClasses {
		for status := 0; status <= 600; status++ {
			for code := codes.OK; code <= codes.Unauthenticated+1; code++ {
				got := p.Retryable(class, status, code, true, false)
				want := class == outcome.ConnectError || class == outcome.NotSent
				if got != want {
					t.Fatalf("Retryable(%v, %d, %v, sent, not idempotent) = %v, want %v", class, status, code, got, want)
				}
			}
		}
	}
	// With everything listed, the other three combinations retry every class
	// but Success and Canceled (ClientError has no condition name: it is
	// listed by its status or code).
	for _, class := range allClasses {
		want := class != outcome.Success && class != outcome.Canceled
		for _, sc := range []struct{ sent, idem bool }{{false, false}, {false, true}, {true, true}} {
			if got := p.Retryable(class, 409, codes.Aborted, sc.sent, sc.idem); got != want {
				t.Errorf("Retryable(%v, sent=%v, idempotent=%v) = %v, want %v", class, sc.sent, sc.idem, got, want)
			}
		}
	}
}

// The default lists: connect_error, reset, gateway_error, overloaded; no
// status or code beyond them.
func TestRetryableDefaults(t *testing.T) {
	p := mustPolicy(t, retry.Config{})
	for _, tc := range []struct {
		class      outcome.Class
		status     int
		code       codes.Code
		sent, idem bool
		want       bool
	}{
		{outcome.ConnectError, 0, codes.OK, false, false, true}, // POST, connection refused
		{outcome.ConnectError, 0, codes.OK, true, false, true},  // the class is the proof
		{outcome.NotSent, 0, codes.OK, true, false, true},
		{outcome.LocalError, 0, codes.OK, true, false, false}, // POST reset after it was sent: never
		{outcome.LocalError, 0, codes.OK, false, false, true}, // POST refused stream
		{outcome.LocalError, 0, codes.OK, true, true, true},   // GET reset
		{outcome.GatewayError, 503, codes.OK, true, true, true},
		{outcome.GatewayError, 503, codes.OK, true, false, false},
		{outcome.GatewayError, 0, codes.Unavailable, true, true, true},
		{outcome.Overloaded, 429, codes.OK, true, true, true},
		{outcome.Timeout, 0, codes.OK, true, true, false}, // not listed by default
		{outcome.Timeout, 0, codes.DeadlineExceeded, false, true, false},
		{outcome.ServerError, 500, codes.OK, true, true, false},
		{outcome.ClientError, 409, codes.OK, true, true, false},
		{outcome.ClientError, 0, codes.Aborted, true, true, false},
		{outcome.Success, 200, codes.OK, false, true, false},
		{outcome.Canceled, 0, codes.Canceled, false, true, false},
	} {
		if got := p.Retryable(tc.class, tc.status, tc.code, tc.sent, tc.idem); got != tc.want {
			t.Errorf("Retryable(%v, %d, %v, sent=%v, idempotent=%v) = %v, want %v", tc.class, tc.status, tc.code, tc.sent, tc.idem, got, tc.want)
		}
	}
}

// Statuses and codes are retried in addition to the classes; an empty retryOn
// retries no class.
func TestRetryableLists(t *testing.T) {
	p := mustPolicy(t, retry.Config{RetryOn: []string{}, RetryableStatuses: []int{409, 503}, RetryableCodes: []string{"ABORTED"}})
	for _, tc := range []struct {
		class  outcome.Class
		status int
		code   codes.Code
		want   bool
	}{
		{outcome.ClientError, 409, codes.OK, true},
		{outcome.GatewayError, 503, codes.OK, true},
		{outcome.GatewayError, 502, codes.OK, false},
		{outcome.ConnectError, 0, codes.OK, false}, // retryOn is empty
		{outcome.ClientError, 0, codes.Aborted, true},
		{outcome.GatewayError, 0, codes.Unavailable, false},
		{outcome.ClientError, 0, codes.Code(40), false}, // out of the table
		{outcome.ClientError, 640, codes.OK, false},
		{outcome.ClientError, -1, codes.OK, false},
		{outcome.Class(200), 0, codes.OK, false},
	} {
		if got := p.Retryable(tc.class, tc.status, tc.code, true, true); got != tc.want {
			t.Errorf("Retryable(%v, %d, %v) = %v, want %v", tc.class, tc.status, tc.code, got, tc.want)
		}
	}
	p = mustPolicy(t, retry.Config{RetryOn: []string{"timeout", "server_error"}})
	if !p.Retryable(outcome.Timeout, 0, codes.OK, true, true) || !p.Retryable(outcome.ServerError, 500, codes.OK, true, true) ||
		p.Retryable(outcome.GatewayError, 503, codes.OK, true, true) {
		t.Error("retryOn [timeout, server_error] not applied")
	}
}

// Delay: full jitter within [0, step] (seed 1), the server's Retry-After
// honoured up to backoff.max and never shortening the backoff, decorrelated
// chains within [base, max].
func TestDelay(t *testing.T) {
	p := mustPolicy(t, retry.Config{Backoff: retry.BackoffConfig{Base: 25 * time.Millisecond, Max: time.Second}})
	for retry, step := range []time.Duration{25, 50, 100, 200, 400, 800, 1000, 1000} {
		step *= time.Millisecond
		for range 1000 {
			if d := p.Delay(retry, 0, 0); d < 0 || d > step {
				t.Fatalf("retry %d: %v outside [0, %v]", retry, d, step)
			}
			if d := p.Delay(retry, 0, 300*time.Millisecond); d < 300*time.Millisecond || d > max(step, 300*time.Millisecond) {
				t.Fatalf("retry %d, Retry-After 300ms: %v outside [300ms, %v]", retry, d, max(step, 300*time.Millisecond))
			}
			if d := p.Delay(retry, 0, time.Hour); d != time.Second {
				t.Fatalf("retry %d, Retry-After 1h: %v, want the cap, 1s", retry, d)
			}
		}
	}
	// A default policy: base 25ms, max 1s.
	p = mustPolicy(t, retry.Config{Backoff: retry.BackoffConfig{Jitter: "decorrelated"}})
	var prev time.Duration
	for i := range 10000 {
		d := p.Delay(i%12, prev, 0)
		if d < retry.DefaultBackoffBase || d > retry.DefaultBackoffMax {
			t.Fatalf("decorrelated: %v outside [25ms, 1s]", d)
		}
		prev = d
		if i%12 == 11 {
			prev = 0
		}
	}
	// Equal jitter never goes below half the step.
	p = mustPolicy(t, retry.Config{Backoff: retry.BackoffConfig{Jitter: "equal", Base: 10 * time.Millisecond, Max: 80 * time.Millisecond}})
	for range 1000 {
		if d := p.Delay(2, 0, 0); d < 20*time.Millisecond || d > 40*time.Millisecond {
			t.Fatalf("equal jitter: %v outside [20ms, 40ms]", d)
		}
	}
	// A base above the default max raises the max (documented default).
	p = mustPolicy(t, retry.Config{Backoff: retry.BackoffConfig{Base: 3 * time.Second, Jitter: "decorrelated"}})
	if d := p.Delay(5, 0, 0); d != 3*time.Second {
		t.Fatalf("base 3s, max defaulted: %v, want 3s", d)
	}
	// Same seed, same delays.
	a := mustPolicy(t, retry.Config{})
	b := mustPolicy(t, retry.Config{})
	for i := range 100 {
		if x, y := a.Delay(i%5, 0, 0), b.Delay(i%5, 0, 0); x != y {
			t.Fatalf("seeded policies disagree: %v, %v", x, y)
		}
	}
}

// Values a Go caller built out of range are clamped, not trusted.
func TestPolicyClamps(t *testing.T) {
	p := mustPolicy(t, retry.Config{MaxAttempts: 99, PerTryTimeout: -time.Second, Hedge: &retry.HedgeConfig{Delay: "5ms", MaxExtra: 50}})
	if p.MaxAttempts() != 10 || p.PerTryTimeout() != 0 {
		t.Fatalf("attempts %d, per-try %v", p.MaxAttempts(), p.PerTryTimeout())
	}
	if h, ok := p.Hedge(); !ok || h != (retry.Hedge{Delay: 5 * time.Millisecond, MaxExtra: 3}) {
		t.Fatalf("hedge %+v", h)
	}
	p = mustPolicy(t, retry.Config{MaxAttempts: -1})
	if p.MaxAttempts() != 1 {
		t.Fatalf("attempts %d", p.MaxAttempts())
	}
	nan := math.NaN()
	b := retry.NewBudget(retry.BudgetConfig{Ratio: &nan}, func() time.Duration { return 0 })
	if n := b.Available(); n != 100 {
		t.Fatalf("NaN ratio: %d available, want the reserve, 100", n)
	}
}

func TestWait(t *testing.T) {
	if err := retry.Wait(context.Background(), time.Millisecond); err != nil {
		t.Fatalf("Wait = %v, want nil", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := retry.Wait(ctx, time.Hour); err != context.Canceled {
		t.Fatalf("Wait on a cancelled context = %v, want context.Canceled at once", err)
	}
	if err := retry.Wait(ctx, 0); err != context.Canceled {
		t.Fatalf("Wait(0) on a cancelled context = %v", err)
	}
}
