package breaker

import (
	"testing"
	"time"

	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/sony/gobreaker/v2"
)

// Record in the closed state, the cost every Done pays: the default config
// (both rules, so every outcome is one gobreaker Execute), and the
// consecutive-failures rule alone (successes with no failure to reset skip
// gobreaker).
func BenchmarkRecord(b *testing.B) {
	for _, c := range []struct {
		name string
		cfg  Config
	}{{"default", Config{}}, {"consecutive-only", Config{FailureRatio: ptr(0.0)}}} {
		br := New(c.cfg, Options{OnStateChange: func(from, to State) {}})
		b.Run(c.name+"/success", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				br.Record(outcome.Success)
			}
		})
		b.Run(c.name+"/1-in-16-failed", func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if i++; i&15 == 0 {
					br.Record(outcome.ServerError)
				} else {
					br.Record(outcome.Success)
				}
			}
		})
		b.Run(c.name+"/success/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					br.Record(outcome.Success)
				}
			})
		})
		if br.State() != Closed {
			b.Fatalf("%s: state %v", c.name, br.State())
		}
		br.Close()
	}
}

// Allow on the pick path: closed (an atomic load), half-open claiming a probe
// (paired with the canceled outcome that gives it back), half-open with no
// probe left (reads the clock to see whether to re-arm).
func BenchmarkAllow(b *testing.B) {
	b.Run("closed", func(b *testing.B) {
		br := New(Config{}, Options{})
		defer br.Close()
		b.ReportAllocs()
		for b.Loop() {
			br.Allow()
		}
	})
	halfOpen := func(b *testing.B, n int) *Breaker {
		br := New(Config{OpenTimeout: 20 * time.Millisecond, HalfOpenRequests: n}, Options{})
		record(br, outcome.ServerError, 5)
		waitHalfOpen(b, br)
		return br
	}
	b.Run("half-open/claim+release", func(b *testing.B) {
		br := halfOpen(b, 1)
		defer br.Close()
		b.ReportAllocs()
		for b.Loop() {
			if !br.Allow() {
				b.Fatal("no probe")
			}
			br.Record(outcome.Canceled)
		}
	})
	b.Run("half-open/none-left", func(b *testing.B) {
		br := halfOpen(b, 1)
		defer br.Close()
		br.Allow()
		b.ReportAllocs()
		for b.Loop() {
			br.Allow() // true once per 20ms, when it re-arms
		}
	})
	b.Run("half-open/none-left/parallel", func(b *testing.B) {
		br := halfOpen(b, 1)
		defer br.Close()
		br.Allow()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				br.Allow()
			}
		})
	})
}

// The gobreaker APIs Record could have used instead, for comparison: the
// two-step breaker's Allow returns a closure (one allocation).
func BenchmarkGobreaker(b *testing.B) {
	st := gobreaker.Settings{Interval: 10 * time.Second, BucketPeriod: time.Second}
	b.Run("Execute", func(b *testing.B) {
		cb := gobreaker.NewCircuitBreaker[struct{}](st)
		b.ReportAllocs()
		for b.Loop() {
			_, _ = cb.Execute(succeed)
		}
	})
	b.Run("TwoStep", func(b *testing.B) {
		cb := gobreaker.NewTwoStepCircuitBreaker[struct{}](st)
		b.ReportAllocs()
		for b.Loop() {
			done, err := cb.Allow()
			if err == nil {
				done(nil)
			}
		}
	})
}
