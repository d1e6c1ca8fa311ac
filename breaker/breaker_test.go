package breaker

import (
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/sony/gobreaker/v2"
)

// recorder collects OnStateChange events and checks that calls never overlap.
type recorder struct {
	t      *testing.T
	in     atomic.Int32
	mu     sync.Mutex
	events []transition
}

func (r *recorder) on(from, to State) {
	if r.in.Add(1) != 1 {
		r.t.Errorf("OnStateChange(%v, %v) overlaps another call", from, to)
	}
	r.mu.Lock()
	r.events = append(r.events, transition{from, to})
	r.mu.Unlock()
	r.in.Add(-1)
}

// take returns the events since the last take.
func (r *recorder) take() []transition {
	r.mu.Lock()
	defer r.mu.Unlock()
	ev := r.events
	r.events = nil
	return ev
}

func (r *recorder) expect(t *testing.T, want ...transition) {
	t.Helper()
	if got := r.take(); !slices.Equal(got, want) {
		t.Fatalf("OnStateChange events = %v, want %v", got, want)
	}
}

func newTest(t *testing.T, cfg Config) (*Breaker, *recorder) {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{t: t}
	b := New(cfg, Options{Name: t.Name(), OnStateChange: rec.on})
	t.Cleanup(b.Close)
	return b, rec
}

func ptr[T any](v T) *T { return &v }

func wantState(t *testing.T, b *Breaker, want State) {
	t.Helper()
	if got := b.State(); got != want {
		t.Fatalf("State() = %v, want %v", got, want)
	}
	if got := State(b.cb.State()); got != want {
		t.Fatalf("gobreaker's State() = %v, want %v", got, want)
	}
}

func wantAllow(t *testing.T, b *Breaker, want ...bool) {
	t.Helper()
	var got []bool
	for range want {
		got = append(got, b.Allow())
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Allow() results = %v, want %v", got, want)
	}
}

func record(b *Breaker, c outcome.Class, n int) {
	for range n {
		b.Record(c)
	}
}

// trip opens b with failures, as the default consecutive rule needs.
func trip(t *testing.T, b *Breaker, rec *recorder) {
	t.Helper()
	record(b, outcome.ConnectError, 5)
	wantState(t, b, Open)
	rec.expect(t, transition{Closed, Open})
}

// toHalfOpen waits out the open timeout: the timer makes the transition with
// no traffic at all.
func toHalfOpen(t *testing.T, b *Breaker, rec *recorder, timeout time.Duration) {
	t.Helper()
	time.Sleep(timeout - time.Millisecond)
	synctest.Wait()
	wantState(t, b, Open)
	wantAllow(t, b, false)
	rec.expect(t)
	time.Sleep(2 * time.Millisecond)
	synctest.Wait()
	rec.expect(t, transition{Open, HalfOpen})
	wantState(t, b, HalfOpen)
}

func TestStates(t *testing.T) {
	for _, c := range []struct {
		s    State
		g    gobreaker.State
		name string
	}{{Closed, gobreaker.StateClosed, "closed"}, {HalfOpen, gobreaker.StateHalfOpen, "half-open"}, {Open, gobreaker.StateOpen, "open"}} {
		if State(c.g) != c.s || c.s.String() != c.name {
			t.Errorf("%d: State %v, gobreaker %v, want %q", c.s, c.s, c.g, c.name)
		}
	}
	if got := State(7).String(); got != "state(7)" {
		t.Errorf("State(7) = %q", got)
	}
}

func TestOpensAfterConsecutiveFailures(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, rec := newTest(t, Config{})
		record(b, outcome.ServerError, 4)
		b.Record(outcome.Success) // resets the run
		record(b, outcome.GatewayError, 4)
		b.Record(outcome.ClientError) // the endpoint answered: a success
		record(b, outcome.Timeout, 4)
		wantState(t, b, Closed)
		rec.expect(t)
		wantAllow(t, b, true, true)
		b.Record(outcome.Overloaded)
		wantState(t, b, Open)
		rec.expect(t, transition{Closed, Open})
		wantAllow(t, b, false, false)
		b.Record(outcome.ServerError) // while open: dropped
		b.Record(outcome.Success)
		wantState(t, b, Open)
		rec.expect(t)
	})
}

func TestConsecutiveOnlySkipsSuccesses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, rec := newTest(t, Config{ConsecutiveFailures: ptr(3), FailureRatio: ptr(0.0)})
		record(b, outcome.Success, 100)
		if n := b.cb.Counts().Requests; n != 0 {
			t.Fatalf("gobreaker saw %d requests, want 0 (successes with no failure to reset are skipped)", n)
		}
		record(b, outcome.LocalError, 2)
		b.Record(outcome.Success) // must reach gobreaker: it resets the run
		record(b, outcome.Success, 10)
		record(b, outcome.LocalError, 2)
		wantState(t, b, Closed)
		if c := b.cb.Counts(); c.Requests != 5 || c.ConsecutiveFailures != 2 {
			t.Fatalf("gobreaker counts %+v, want 5 requests, 2 consecutive failures", c)
		}
		b.Record(outcome.LocalError)
		wantState(t, b, Open)
		rec.expect(t, transition{Closed, Open})
	})
}

func TestOpensOnFailureRatio(t *testing.T) {
	cfg := Config{ConsecutiveFailures: ptr(0), FailureRatio: ptr(0.5), MinRequests: 20, Window: 10 * time.Second}
	synctest.Test(t, func(t *testing.T) {
		b, rec := newTest(t, cfg)
		record(b, outcome.Success, 9)
		record(b, outcome.ServerError, 10) // 10/19 failed, but fewer than minRequests
		wantState(t, b, Closed)
		b.Record(outcome.ServerError) // 11/20
		wantState(t, b, Open)
		rec.expect(t, transition{Closed, Open})
	})
	synctest.Test(t, func(t *testing.T) {
		b, rec := newTest(t, cfg)
		record(b, outcome.Success, 30)
		record(b, outcome.ServerError, 29) // 29/59 < 0.5
		wantState(t, b, Closed)
		b.Record(outcome.ServerError) // 30/60 = 0.5
		wantState(t, b, Open)
		rec.expect(t, transition{Closed, Open})
	})
	// The window rolls: successes 9.4s old still count, 10.5s old ones do not.
	for _, c := range []struct {
		wait time.Duration
		want State
	}{{4400 * time.Millisecond, Open}, {5500 * time.Millisecond, Closed}} {
		synctest.Test(t, func(t *testing.T) {
			b, _ := newTest(t, cfg)
			record(b, outcome.Success, 10)
			time.Sleep(5 * time.Second)
			record(b, outcome.ServerError, 9)
			time.Sleep(c.wait)
			b.Record(outcome.ServerError) // 10/20 if the successes are in the window, else 10/10 < minRequests
			if got := b.State(); got != c.want {
				t.Fatalf("after %v more: State() = %v, want %v (counts %+v)", c.wait, got, c.want, b.cb.Counts())
			}
			if c.want == Closed {
				record(b, outcome.ServerError, 9)
				wantState(t, b, Closed)
				b.Record(outcome.ServerError) // 20/20
				wantState(t, b, Open)
			}
		})
	}
}

func TestExcludedOutcomesDoNotCount(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, rec := newTest(t, Config{})
		record(b, outcome.ServerError, 4)
		for range 50 {
			b.Record(outcome.Canceled) // neither resets the run nor extends it
			b.Record(outcome.NotSent)
		}
		wantState(t, b, Closed)
		if c := b.cb.Counts(); c.Requests != 4 || c.TotalExclusions != 0 {
			t.Fatalf("gobreaker counts %+v, want 4 requests and no exclusions", c)
		}
		b.Record(outcome.ServerError)
		wantState(t, b, Open)
		rec.expect(t, transition{Closed, Open})
	})
	synctest.Test(t, func(t *testing.T) {
		b, _ := newTest(t, Config{ConsecutiveFailures: ptr(0), MinRequests: 5})
		record(b, outcome.Canceled, 100)
		record(b, outcome.ServerError, 4) // 4 < minRequests, canceled ones do not make up the volume
		wantState(t, b, Closed)
		b.Record(outcome.ServerError)
		wantState(t, b, Open)
	})
}

func TestHalfOpenProbesThenClosed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, rec := newTest(t, Config{HalfOpenRequests: 3, OpenTimeout: 10 * time.Second})
		trip(t, b, rec)
		toHalfOpen(t, b, rec, 10*time.Second)
		wantAllow(t, b, true, true, true, false, false)
		record(b, outcome.Success, 2)
		wantState(t, b, HalfOpen)
		wantAllow(t, b, false)
		b.Record(outcome.ClientError)
		wantState(t, b, Closed)
		rec.expect(t, transition{HalfOpen, Closed})
		wantAllow(t, b, true, true, true, true)
		// Closed again with fresh counts: it takes five new failures to trip.
		record(b, outcome.ServerError, 4)
		wantState(t, b, Closed)
		trip(t, b, rec)
	})
}

func TestFailedProbeReopens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, rec := newTest(t, Config{HalfOpenRequests: 2, OpenTimeout: time.Second})
		trip(t, b, rec)
		toHalfOpen(t, b, rec, time.Second)
		wantAllow(t, b, true, true, false)
		b.Record(outcome.Success)
		b.Record(outcome.GatewayError)
		wantState(t, b, Open)
		rec.expect(t, transition{HalfOpen, Open})
		wantAllow(t, b, false)
		b.Record(outcome.Success) // the open breaker drops it
		wantState(t, b, Open)
		// A full open timeout again, then fresh probe slots.
		toHalfOpen(t, b, rec, time.Second)
		wantAllow(t, b, true, true, false)
		record(b, outcome.Success, 2)
		wantState(t, b, Closed)
		rec.expect(t, transition{HalfOpen, Closed})
	})
}

func TestLostProbeRearms(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, rec := newTest(t, Config{HalfOpenRequests: 2, OpenTimeout: 10 * time.Second})
		trip(t, b, rec)
		toHalfOpen(t, b, rec, 10*time.Second)
		wantAllow(t, b, true, true, false) // both probes' outcomes get lost
		// The wait for lost outcomes runs from the claim of the last slot
		// (just now), not from the transition.
		time.Sleep(10*time.Second - time.Microsecond)
		wantAllow(t, b, false)
		time.Sleep(time.Microsecond)
		wantAllow(t, b, true, true, false) // granted again
		wantState(t, b, HalfOpen)
		// A probe outcome that does arrive restarts the wait: one success at
		// +6s, the other probe lost.
		time.Sleep(6 * time.Second)
		b.Record(outcome.Success)
		wantState(t, b, HalfOpen)
		time.Sleep(9 * time.Second)
		wantAllow(t, b, false) // 9s since the last outcome
		time.Sleep(time.Second)
		wantAllow(t, b, true, true, false)
		b.Record(outcome.Success) // gobreaker has 2 successes in a row now
		wantState(t, b, Closed)
		rec.expect(t, transition{HalfOpen, Closed})
	})
}

func TestExcludedProbeGivesSlotBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, rec := newTest(t, Config{OpenTimeout: time.Second})
		trip(t, b, rec)
		toHalfOpen(t, b, rec, time.Second)
		wantAllow(t, b, true, false)
		b.Record(outcome.Canceled)
		wantAllow(t, b, true, false)
		b.Record(outcome.NotSent)
		wantAllow(t, b, true, false)
		b.Record(outcome.Canceled)
		b.Record(outcome.Canceled) // more than were claimed: no extra slot
		wantAllow(t, b, true, false)
		b.Record(outcome.Success)
		wantState(t, b, Closed)
		rec.expect(t, transition{HalfOpen, Closed})
	})
}

// OnStateChange runs outside every lock: it may call the breaker, even
// Record, and a transition that causes is delivered after it returns.
func TestCallbackMayCallBreaker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var b *Breaker
		var events []transition
		b = New(Config{OpenTimeout: time.Second}, Options{OnStateChange: func(from, to State) {
			events = append(events, transition{from, to})
			b.State()
			b.Allow()
			b.Record(outcome.ServerError) // re-entrant: may cause a transition, delivered after this call
		}})
		defer b.Close()
		record(b, outcome.ServerError, 5)
		time.Sleep(time.Second + time.Millisecond)
		synctest.Wait()
		// closed→open (its Record is dropped), open→half-open (its Record is a
		// failed probe), half-open→open.
		want := []transition{{Closed, Open}, {Open, HalfOpen}, {HalfOpen, Open}}
		if !slices.Equal(events, want) {
			t.Fatalf("events %v, want %v", events, want)
		}
		if b.State() != Open {
			t.Fatalf("State() = %v", b.State())
		}
	})
}

func TestCloseStopsTimer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, rec := newTest(t, Config{OpenTimeout: time.Second})
		trip(t, b, rec)
		b.Close()
		time.Sleep(time.Minute)
		synctest.Wait()
		rec.expect(t)
		if b.State() != Open {
			t.Fatalf("State() = %v, want open", b.State())
		}
	})
}

// TestConcurrent records and claims probes from 16 goroutines on real time
// with a 1ms open timeout, so that the breaker goes round its states while
// they run. OnStateChange must see a consistent chain of transitions, one
// call at a time, ending in the breaker's state.
func TestConcurrent(t *testing.T) {
	var mu sync.Mutex
	last, n := Closed, 0
	var in atomic.Int32
	b := New(Config{ConsecutiveFailures: ptr(3), MinRequests: 10, Window: 50 * time.Millisecond,
		OpenTimeout: time.Millisecond, HalfOpenRequests: 2},
		Options{OnStateChange: func(from, to State) {
			if in.Add(1) != 1 {
				t.Error("overlapping OnStateChange calls")
			}
			defer in.Add(-1)
			mu.Lock()
			defer mu.Unlock()
			if from != last || from == to {
				t.Errorf("transition %v→%v after one to %v", from, to, last)
			}
			last = to
			n++
		}})
	classes := []outcome.Class{outcome.Success, outcome.Success, outcome.ClientError, outcome.ServerError,
		outcome.ConnectError, outcome.Timeout, outcome.Canceled, outcome.NotSent}
	var wg sync.WaitGroup
	deadline := time.Now().Add(300 * time.Millisecond)
	for g := range 16 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for i := 0; time.Now().Before(deadline); i++ {
				if !b.Allow() {
					if i%64 == 0 {
						time.Sleep(50 * time.Microsecond)
					}
					continue
				}
				c := classes[r.IntN(len(classes))]
				if r.IntN(8) == 0 {
					c = outcome.Success // lost probes and slow responses: sometimes recorded late
					time.Sleep(100 * time.Microsecond)
				}
				b.Record(c)
			}
		})
	}
	wg.Wait()
	b.Close()
	// The timer goroutine may still be delivering.
	for start := time.Now(); ; time.Sleep(time.Millisecond) {
		mu.Lock()
		l, cnt := last, n
		mu.Unlock()
		if l == b.State() {
			t.Logf("%d transitions, ending %v", cnt, l)
			if cnt < 3 {
				t.Errorf("only %d transitions: the test did not exercise the breaker", cnt)
			}
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("last event says %v, breaker says %v", l, b.State())
		}
	}
}

func TestRecordAllocatesNothing(t *testing.T) {
	for _, cfg := range []Config{{}, {FailureRatio: ptr(0.0)}} {
		b := New(cfg, Options{OnStateChange: func(from, to State) {}})
		if n := testing.AllocsPerRun(1000, func() {
			b.Record(outcome.Success)
			b.Record(outcome.ServerError)
			b.Record(outcome.Success)
			b.Record(outcome.Canceled)
		}); n != 0 {
			t.Errorf("%+v: Record allocates %v times per run", cfg, n)
		}
		if b.State() != Closed {
			t.Fatalf("state %v", b.State())
		}
		b.Close()
	}
}

func TestAllowAllocatesNothing(t *testing.T) {
	b := New(Config{OpenTimeout: time.Millisecond}, Options{})
	defer b.Close()
	record(b, outcome.ServerError, 5)
	waitHalfOpen(t, b)
	if n := testing.AllocsPerRun(1000, func() {
		b.Allow() // claims the probe
		b.Allow() // none left: reads the clock
		b.Record(outcome.Canceled)
	}); n != 0 {
		t.Errorf("Allow allocates %v times per run", n)
	}
}

// waitHalfOpen waits, on real time, for b's timer to make it half-open.
func waitHalfOpen(tb testing.TB, b *Breaker) {
	for start := time.Now(); b.State() != HalfOpen; time.Sleep(100 * time.Microsecond) {
		if time.Since(start) > 5*time.Second {
			tb.Fatalf("breaker still %v", b.State())
		}
	}
}

// TestConcurrentProbeClaims: 16 goroutines race for the probe slots of a
// half-open breaker; exactly HalfOpenRequests of their Allow calls win (the
// bubble's clock stands still while they run, so nothing re-arms).
func TestConcurrentProbeClaims(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, rec := newTest(t, Config{HalfOpenRequests: 5, OpenTimeout: time.Second})
		trip(t, b, rec)
		toHalfOpen(t, b, rec, time.Second)
		var won atomic.Int32
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() {
				for range 1000 {
					if b.Allow() {
						won.Add(1)
					}
				}
			})
		}
		wg.Wait()
		if won.Load() != 5 {
			t.Fatalf("%d probes granted, want 5", won.Load())
		}
	})
}
