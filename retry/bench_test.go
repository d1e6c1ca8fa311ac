package retry_test

import (
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/retry"
)

// Deposit is on every request's path (through the real monotonic clock).
func BenchmarkDeposit(b *testing.B) {
	bu := retry.NewBudget(retry.BudgetConfig{}, nil)
	b.ReportAllocs()
	for b.Loop() {
		bu.Deposit()
	}
}

// DepositAt is Deposit for a front door that has read the clock already.
func BenchmarkDepositAt(b *testing.B) {
	bu := retry.NewBudget(retry.BudgetConfig{}, nil)
	now := time.Duration(0)
	b.ReportAllocs()
	for b.Loop() {
		now += time.Microsecond
		bu.DepositAt(now)
	}
}

// Every request of a busy service deposits on the same budget.
func BenchmarkDepositParallel(b *testing.B) {
	bu := retry.NewBudget(retry.BudgetConfig{}, nil)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			bu.Deposit()
		}
	})
}

// TryWithdraw, half granted: one deposit per 5 withdrawals at ratio 0.2
// keeps it balanced.
func BenchmarkTryWithdraw(b *testing.B) {
	bu := retry.NewBudget(retry.BudgetConfig{}, nil)
	b.ReportAllocs()
	for b.Loop() {
		bu.Deposit()
		bu.TryWithdraw()
	}
}

func BenchmarkDelay(b *testing.B) {
	for _, j := range []string{"full", "equal", "decorrelated"} {
		b.Run(j, func(b *testing.B) {
			p, err := retry.NewPolicy(retry.Config{Backoff: retry.BackoffConfig{Jitter: j}}, nil)
			if err != nil {
				b.Fatal(err)
			}
			var d time.Duration
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				d = p.Delay(i&3, d, 0)
			}
		})
	}
}

func BenchmarkRetryable(b *testing.B) {
	p, err := retry.NewPolicy(retry.Config{RetryableStatuses: []int{409}, RetryableCodes: []string{"ABORTED"}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	classes := []outcome.Class{outcome.ClientError, outcome.GatewayError, outcome.LocalError, outcome.Timeout}
	n := 0
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if p.Retryable(classes[i&3], 400+i&255, codes.Code(i&15), i&4 == 0, i&8 == 0) {
			n++
		}
	}
	sink = n
}

var sink int

func BenchmarkIdempotent(b *testing.B) {
	h := http.Header{"Content-Type": {"application/json"}}
	n := 0
	b.ReportAllocs()
	for b.Loop() {
		if retry.Idempotent("POST", h) {
			n++
		}
	}
	sink = n
}

// Observe is on every attempt's path of a service with a percentile hedge
// delay (through the real monotonic clock; ObserveAt saves the read).
func BenchmarkLatencyObserve(b *testing.B) {
	tr := retry.NewLatencyTracker(0, nil)
	b.ReportAllocs()
	d := time.Duration(0)
	for b.Loop() {
		d += 997 * time.Nanosecond
		tr.Observe(d % (50 * time.Millisecond))
	}
}

// ObserveAt through a Hedger, as the HTTP door calls it, from every core.
func BenchmarkHedgerObserveParallel(b *testing.B) {
	p, err := retry.NewPolicy(retry.Config{Hedge: &retry.HedgeConfig{Delay: "p95"}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	h := p.NewHedger(nil)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		d := time.Duration(0)
		for pb.Next() {
			d += 997 * time.Nanosecond
			h.ObserveAt(d%(50*time.Millisecond), monotime())
		}
	})
}

// Quantile reads the whole window (Hedger calls it at most every 100ms).
func BenchmarkLatencyQuantile(b *testing.B) {
	tr := retry.NewLatencyTracker(0, nil)
	for i := range 10000 {
		tr.Observe(time.Duration(i) * time.Microsecond)
	}
	b.ReportAllocs()
	for b.Loop() {
		tr.Quantile(0.95)
	}
}

var epoch = time.Now()

func monotime() time.Duration { return time.Since(epoch) }
