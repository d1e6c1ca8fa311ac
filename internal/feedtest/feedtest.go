// Package feedtest helps test discovery feeds: a Sink that records what a feed
// sends, with waits bounded by a deadline, and a runner that checks Watch
// returns promptly when its context ends. Only tests import it.
package feedtest

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar/resolver"
)

// Update is one set a feed published, with the time it arrived.
type Update struct {
	At        time.Time
	Endpoints []resolver.Endpoint
}

// Recorder is a resolver.Sink that records every Update and ReportError.
type Recorder struct {
	mu      sync.Mutex
	updates []Update
	errs    []error
	changed chan struct{} // closed and replaced on every call
}

var _ resolver.Sink = (*Recorder)(nil)

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder { return &Recorder{changed: make(chan struct{})} }

// Update records a published set.
func (r *Recorder) Update(eps []resolver.Endpoint) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.updates = append(r.updates, Update{time.Now(), eps})
	close(r.changed)
	r.changed = make(chan struct{})
}

// ReportError records a reported error.
func (r *Recorder) ReportError(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, err)
	close(r.changed)
	r.changed = make(chan struct{})
}

// Snapshot returns what was recorded so far and a channel closed at the next call.
func (r *Recorder) Snapshot() ([]Update, []error, chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.updates), slices.Clone(r.errs), r.changed
}

// WaitUpdate waits up to timeout for an update at index ≥ from that satisfies
// ok, and returns it with its index; it fails the test, naming what, if none comes.
func (r *Recorder) WaitUpdate(t testing.TB, from int, timeout time.Duration, what string, ok func([]resolver.Endpoint) bool) (Update, int) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		ups, errs, changed := r.Snapshot()
		for i := from; i < len(ups); i++ {
			if ok(ups[i].Endpoints) {
				return ups[i], i
			}
		}
		select {
		case <-changed:
		case <-deadline.C:
			var last []resolver.Endpoint
			if len(ups) > 0 {
				last = ups[len(ups)-1].Endpoints
			}
			t.Fatalf("no update with %s within %v; last set %v; errors %v", what, timeout, Addrs(last), errs)
		}
	}
}

// WaitErrors waits up to timeout until at least n errors were reported.
func (r *Recorder) WaitErrors(t testing.TB, n int, timeout time.Duration) []error {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		_, errs, changed := r.Snapshot()
		if len(errs) >= n {
			return errs
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("%d errors reported within %v, want %d: %v", len(errs), timeout, n, errs)
		}
	}
}

// Watch runs f.Watch into a new Recorder until the test ends, then checks that
// Watch returns context.Canceled within 500ms of the cancel.
func Watch(t testing.TB, f resolver.Feed) *Recorder {
	t.Helper()
	r := NewRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Watch(ctx, r) }()
	t.Cleanup(func() {
		cancel()
		start := time.Now()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Watch returned %v, want context.Canceled", err)
			}
			if d := time.Since(start); d > 500*time.Millisecond {
				t.Errorf("Watch took %v to return after cancel", d)
			}
		case <-time.After(5 * time.Second):
			buf := make([]byte, 1<<16)
			t.Errorf("Watch did not return within 5s of cancel:\n%s", buf[:runtime.Stack(buf, true)])
		}
	})
	return r
}

// Addrs returns the sorted addresses of eps.
func Addrs(eps []resolver.Endpoint) []string {
	out := make([]string, len(eps))
	for i, ep := range eps {
		out[i] = ep.Address
	}
	slices.Sort(out)
	return out
}

// HasAddrs returns a predicate for WaitUpdate: the set is exactly want.
func HasAddrs(want ...string) func([]resolver.Endpoint) bool {
	slices.Sort(want)
	return func(eps []resolver.Endpoint) bool { return slices.Equal(Addrs(eps), want) }
}

// ByAddr returns the endpoint of eps at addr.
func ByAddr(eps []resolver.Endpoint, addr string) (resolver.Endpoint, bool) {
	for _, ep := range eps {
		if ep.Address == addr {
			return ep, true
		}
	}
	return resolver.Endpoint{}, false
}

// CheckNoRepeats fails the test if r recorded two equal sets in a row or an
// invalid set.
func CheckNoRepeats(t testing.TB, r *Recorder) {
	t.Helper()
	ups, _, _ := r.Snapshot()
	for i := 1; i < len(ups); i++ {
		if resolver.EqualSets(ups[i-1].Endpoints, ups[i].Endpoints) {
			t.Errorf("updates %d and %d publish the same set %v", i-1, i, Addrs(ups[i].Endpoints))
		}
	}
	for i, u := range ups {
		if err := resolver.ValidateSet(u.Endpoints); err != nil {
			t.Errorf("update %d: %v", i, err)
		}
	}
}

// Token stands for an ACL token or a password in the secret tests. Every
// 3-character piece of it is unusual enough that finding one in an error
// means the secret, or part of it, leaked.
const Token = "Zq9SeCrEt7Xw"

// Leaked reports whether msg holds Token or any 3-character piece of it.
func Leaked(msg string) bool {
	for i := 0; i+3 <= len(Token); i++ {
		if strings.Contains(msg, Token[i:i+3]) {
			return true
		}
	}
	return false
}
