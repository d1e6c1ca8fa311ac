package health

import (
	"testing"
	"time"

	"github.com/lodestar-go/lodestar/balancer/outcome"
)

// The connection detector counts refused connections and failures before any
// response, and nothing else: a timeout neither counts nor breaks the run, an
// answer of any class (5xx included) breaks it.
func TestConsecutiveConnectionFailures(t *testing.T) {
	d := NewDetector(DefaultFailureAccrual())
	s := NewStats()
	// Four refusals, a timeout (ignored), then a reset: fires on the fifth.
	recordN(s, d, outcome.ConnectError, 4)
	if fired := recordN(s, d, outcome.Timeout, 10); len(fired) != 0 {
		t.Fatalf("timeouts fired %v; the default accrual must not eject on them", fired)
	}
	fired := recordN(s, d, outcome.LocalError, 1)
	if len(fired) != 1 || fired[0] != ReasonConsecutiveConnectionFailures {
		t.Fatalf("the 5th connection failure fired %v, want [%s]", fired, ReasonConsecutiveConnectionFailures)
	}
	// 5xx, gateway errors, overload and server errors never fire it, and
	// each breaks a run.
	for _, c := range []outcome.Class{outcome.GatewayError, outcome.ServerError, outcome.Overloaded, outcome.Success, outcome.ClientError} {
		s := NewStats()
		if fired := recordN(s, d, c, 100); len(fired) != 0 {
			t.Fatalf("100 × %v fired %v; only connection failures count by default", c, fired)
		}
		recordN(s, d, outcome.ConnectError, 4)
		recordN(s, d, c, 1)
		if fired := recordN(s, d, outcome.ConnectError, 4); len(fired) != 0 {
			t.Fatalf("4 + %v + 4 connection failures fired %v: %v must end the run", c, fired, c)
		}
	}
}

func TestDefaultFailureAccrual(t *testing.T) {
	c := DefaultFailureAccrual()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	d := NewDetector(c)
	if d.Periodic() {
		t.Fatal("the default accrual must run no interval detector")
	}
	if got := d.EjectionTime(1); got != 5*time.Second {
		t.Fatalf("first ejection %v, want 5s", got)
	}
	if got := d.EjectionTime(3); got != 15*time.Second {
		t.Fatalf("third ejection in a row %v, want 15s", got)
	}
	if got := d.EjectionTime(100); got != 30*time.Second {
		t.Fatalf("ejection capped at %v, want 30s", got)
	}
	// Never more than half, but one always may be.
	for _, tc := range []struct {
		total, ejected int
		want           bool
	}{{1, 0, true}, {2, 0, true}, {2, 1, false}, {6, 2, true}, {6, 3, false}, {10, 4, true}, {10, 5, false}} {
		if got := d.Admit(tc.total, tc.ejected); got != tc.want {
			t.Errorf("Admit(%d, %d) = %v, want %v", tc.total, tc.ejected, got, tc.want)
		}
	}
	// A fresh copy each call: changing one does not change the default.
	*c.ConsecutiveConnectionFailures = 1
	if n := *DefaultFailureAccrual().ConsecutiveConnectionFailures; n != DefaultAccrualFailures {
		t.Fatalf("the default changed to %d", n)
	}
}

// Without an interval detector the interval counters are not kept (nothing
// reads them, and the engine then records only failures and the successes
// that end a run), and Settled says when Evaluate has nothing left to do.
func TestNonPeriodicSettled(t *testing.T) {
	d := NewDetector(DefaultFailureAccrual())
	s := NewStats()
	recordN(s, d, outcome.Success, 3)
	recordN(s, d, outcome.ConnectError, 2)
	if succ, fail := s.Counts(); succ != 0 || fail != 0 {
		t.Fatalf("Counts = %d, %d without an interval detector; want 0, 0", succ, fail)
	}
	if !s.Settled() {
		t.Fatal("a fresh endpoint is not Settled")
	}
	now := time.Unix(1000, 0)
	if _, ok := d.Ejected(s, ReasonConsecutiveConnectionFailures, now); !ok {
		t.Fatal("Ejected failed")
	}
	if s.Settled() {
		t.Fatal("an ejected endpoint is Settled")
	}
	h := []Host{{Key: "a", Stats: s}}
	if acts := d.Evaluate(now.Add(5*time.Second), h); len(acts) != 1 || acts[0].Eject {
		t.Fatalf("Evaluate at the end of the ejection: %+v, want its end", acts)
	}
	if s.Settled() {
		t.Fatal("Settled with its multiplier at 1")
	}
	d.Evaluate(now.Add(6*time.Second), h)
	if !s.Settled() {
		t.Fatal("not Settled after its multiplier decayed")
	}
}
