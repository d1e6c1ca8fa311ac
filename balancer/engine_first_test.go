package balancer

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/resolver"
)

// gatedFeed answers with its set once open is closed, or with err if set.
type gatedFeed struct {
	open chan struct{}
	eps  []resolver.Endpoint
	err  error
}

func (f *gatedFeed) Watch(ctx context.Context, s resolver.Sink) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-f.open:
	}
	if f.err != nil {
		s.ReportError(f.err)
	} else {
		s.Update(f.eps)
	}
	<-ctx.Done()
	return ctx.Err()
}

func startedEngine(t *testing.T, cfg Config, feed resolver.Feed) *Engine {
	t.Helper()
	e, err := NewEngine(cfg, Options{Service: "users", Target: "test:///users"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	e.Start(feed)
	return e
}

// A feed that never answers: the first pick fails after the initial timeout
// with the "not answered yet" error (not ErrNoEndpoints), naming the target and
// the wait; later picks fail at once.
func TestFirstAnswerNeverComes(t *testing.T) {
	e := startedEngine(t, Config{InitialDiscoveryTimeout: 50 * time.Millisecond}, &gatedFeed{open: make(chan struct{})})
	start := time.Now()
	_, err := e.Pick(PickInfo{Ctx: context.Background()})
	if !errors.Is(err, ErrDiscoveryPending) || errors.Is(err, ErrNoEndpoints) {
		t.Fatalf("err = %v; want ErrDiscoveryPending and not ErrNoEndpoints", err)
	}
	if waited := time.Since(start); waited < 50*time.Millisecond {
		t.Fatalf("failed after %v, before the 50ms initial timeout", waited)
	}
	var pe *DiscoveryPendingError
	if !errors.As(err, &pe) || pe.Waited < 50*time.Millisecond || pe.Target != "test:///users" {
		t.Fatalf("err = %#v; want a *DiscoveryPendingError with Waited >= 50ms and the target", err)
	}
	for _, want := range []string{`"users"`, "test:///users", "has not answered yet after"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	// The timeout runs from Start, not from each pick: the next fails at once.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := e.Pick(PickInfo{Ctx: ctx}); !errors.Is(err, ErrDiscoveryPending) || ctx.Err() != nil {
		t.Fatalf("second pick: err = %v (ctx %v); want ErrDiscoveryPending at once", err, ctx.Err())
	}
}

// The request's deadline ends the wait first: the error is still "not answered
// yet", and also matches the context's error.
func TestFirstAnswerContextFirst(t *testing.T) {
	e := startedEngine(t, Config{}, &gatedFeed{open: make(chan struct{})})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	_, err := e.Pick(PickInfo{Ctx: ctx})
	if !errors.Is(err, ErrDiscoveryPending) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v; want ErrDiscoveryPending and context.DeadlineExceeded", err)
	}
}

// A feed that answers late: picks made before the answer wait for it and
// succeed.
func TestFirstAnswerLate(t *testing.T) {
	f := &gatedFeed{open: make(chan struct{}), eps: resolverEndpoints(3, nil)}
	e := startedEngine(t, Config{}, f)
	const n = 16
	errs := make(chan error, n)
	var started sync.WaitGroup
	for range n {
		started.Add(1)
		go func() {
			started.Done()
			ep, err := e.Pick(PickInfo{Ctx: context.Background()})
			if err == nil {
				e.Done(ep, outcome.Outcome{Class: outcome.Success})
			}
			errs <- err
		}()
	}
	started.Wait()
	close(f.open)
	for range n {
		if err := <-errs; err != nil {
			t.Fatalf("pick before the first answer: %v", err)
		}
	}
}

// A feed whose first answer is an error ends the wait at once: picks fail with
// the pending error carrying the feed's error.
func TestFirstAnswerIsError(t *testing.T) {
	feedErr := errors.New("agent unreachable")
	f := &gatedFeed{open: make(chan struct{}), err: feedErr}
	e := startedEngine(t, Config{InitialDiscoveryTimeout: time.Minute}, f)
	done := make(chan error, 1)
	go func() {
		_, err := e.Pick(PickInfo{Ctx: context.Background()})
		done <- err
	}()
	close(f.open)
	err := <-done
	if !errors.Is(err, ErrDiscoveryPending) || !errors.Is(err, feedErr) || errors.Is(err, ErrNoEndpoints) {
		t.Fatalf("err = %v; want ErrDiscoveryPending wrapping the feed's error", err)
	}
	if !strings.Contains(err.Error(), "agent unreachable") {
		t.Fatalf("error %q does not carry the feed's error", err)
	}
}

// After the first set the usual rules stand: an empty answer is "found no
// endpoints" (ErrNoEndpoints), at once.
func TestFirstAnswerEmptySet(t *testing.T) {
	f := &gatedFeed{open: make(chan struct{}), eps: []resolver.Endpoint{}}
	close(f.open)
	e := startedEngine(t, Config{}, f)
	// The pick waits for the answer (the feed's goroutine may not have run
	// yet), then fails as usual.
	if _, err := e.Pick(PickInfo{Ctx: context.Background()}); !errors.Is(err, ErrNoEndpoints) || errors.Is(err, ErrDiscoveryPending) {
		t.Fatalf("err = %v; want ErrNoEndpoints once the empty answer is in", err)
	}
}

// A static feed is in force when Start returns, and Set is in force when it
// returns: no pick after Set goes to a removed endpoint.
func TestStaticSynchronous(t *testing.T) {
	eps := resolverEndpoints(4, nil)
	st, err := resolver.NewStatic(eps...)
	if err != nil {
		t.Fatal(err)
	}
	e := startedEngine(t, Config{}, st)
	if ep, err := e.Pick(PickInfo{}); err != nil {
		t.Fatalf("pick right after Start: %v", err)
	} else {
		e.Done(ep, outcome.Outcome{})
	}
	for i := range 200 {
		keep := eps[i%4 : i%4+1]
		if err := st.Set(keep...); err != nil {
			t.Fatal(err)
		}
		for range 4 {
			ep, err := e.Pick(PickInfo{})
			if err != nil {
				t.Fatal(err)
			}
			if ep.Address() != keep[0].Address {
				t.Fatalf("round %d: picked %s right after Set(%s)", i, ep.Address(), keep[0].Address)
			}
			e.Done(ep, outcome.Outcome{})
		}
	}
}

// A closed engine fails picks with ErrClosed at once, whatever the waits.
func TestPickAfterClose(t *testing.T) {
	for _, cfg := range []Config{{}, {WaitForEndpoints: time.Minute}} {
		e, err := NewEngine(cfg, Options{})
		if err != nil {
			t.Fatal(err)
		}
		e.Start(&gatedFeed{open: make(chan struct{})})
		e.Close()
		if _, err := e.Pick(PickInfo{Ctx: context.Background()}); err != ErrClosed {
			t.Fatalf("%+v: err = %v, want ErrClosed", cfg, err)
		}
	}
}
