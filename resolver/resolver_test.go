package resolver

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/lodestar-go/lodestar/internal/backoff"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// chanSink records what a feed sends.
type chanSink struct {
	updates chan []Endpoint
	errs    chan error
}

func newChanSink() *chanSink {
	return &chanSink{updates: make(chan []Endpoint, 16), errs: make(chan error, 16)}
}
func (s *chanSink) Update(eps []Endpoint) { s.updates <- eps }
func (s *chanSink) ReportError(err error) { s.errs <- err }

func recv[T any](t *testing.T, c <-chan T) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(5 * time.Second):
		t.Fatal("timed out waiting for the feed")
		panic("unreachable")
	}
}

func TestEndpointValidate(t *testing.T) {
	for _, tc := range []struct {
		ep   Endpoint
		want string // substring of the error, "" for valid
	}{
		{Endpoint{Address: "10.0.0.1:80"}, ""},
		{Endpoint{Address: "[::1]:443", Weight: 5}, ""},
		{Endpoint{Address: "backend.internal:8080"}, ""},
		{Endpoint{Address: "10.0.0.1"}, "want host:port"},
		{Endpoint{Address: ":80"}, "empty host"},
		{Endpoint{Address: "10.0.0.1:0"}, "port \"0\""},
		{Endpoint{Address: "10.0.0.1:99999"}, "port \"99999\""},
		{Endpoint{Address: "10.0.0.1:80", Weight: MaxWeight + 1}, "weight"},
		{Endpoint{Address: "10.0.0.1:80", Priority: -1}, "priority"},
	} {
		err := tc.ep.Validate()
		if tc.want == "" && err != nil {
			t.Errorf("%+v: unexpected error %v", tc.ep, err)
		}
		if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%+v: error %v, want one mentioning %q", tc.ep, err, tc.want)
		}
	}
	err := ValidateSet([]Endpoint{{Address: "a:1"}, {Address: "a:1"}})
	if err == nil || !strings.Contains(err.Error(), "endpoints[1]: address a:1 appears twice") {
		t.Errorf("duplicate: got %v", err)
	}
}

func TestEqualSets(t *testing.T) {
	a := []Endpoint{{Address: "a:1", Metadata: map[string]string{"k": "v"}}, {Address: "b:1"}}
	b := []Endpoint{{Address: "b:1", Weight: 1}, {Address: "a:1", Metadata: map[string]string{"k": "v"}}}
	if !EqualSets(a, b) {
		t.Error("same sets in another order (weight 0 == weight 1) compare unequal")
	}
	b[0].Weight = 2
	if EqualSets(a, b) {
		t.Error("sets with different weights compare equal")
	}
}

func TestStaticFeedWatchAndSet(t *testing.T) {
	f, err := NewStaticAddrs("127.0.0.1:1", "127.0.0.1:2")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sink := newChanSink()
	done := make(chan error)
	go func() { done <- f.Watch(ctx, sink) }()

	if got := recv(t, sink.updates); len(got) != 2 || got[0].Address != "127.0.0.1:1" {
		t.Fatalf("first set = %v", got)
	}
	if err := f.Set(Endpoint{Address: "127.0.0.1:3", Weight: 7}); err != nil {
		t.Fatal(err)
	}
	if got := recv(t, sink.updates); len(got) != 1 || got[0].Address != "127.0.0.1:3" || got[0].Weight != 7 {
		t.Fatalf("after Set = %v", got)
	}
	if err := f.Set(Endpoint{Address: "nonsense"}); err == nil {
		t.Fatal("Set accepted an address without a port")
	}
	if got := f.Endpoints(); len(got) != 1 || got[0].Address != "127.0.0.1:3" {
		t.Fatalf("a rejected Set changed the set: %v", got)
	}
	cancel()
	if err := recv(t, done); !errors.Is(err, context.Canceled) {
		t.Fatalf("Watch returned %v, want context.Canceled", err)
	}
}

func TestParse(t *testing.T) {
	f, err := Parse("static:///127.0.0.1:80,127.0.0.1:81")
	if err != nil {
		t.Fatal(err)
	}
	if got := f.(*Static).Endpoints(); len(got) != 2 || got[1].Address != "127.0.0.1:81" {
		t.Fatalf("parsed set = %v", got)
	}
	for target, want := range map[string]string{
		"127.0.0.1:80":            "no scheme",
		"nosuch:///x:1":           `unknown scheme "nosuch"`,
		"static:///":              "no addresses",
		"static://host/1.2.3.4:5": "unexpected authority",
		"static:///1.2.3.4":       "want host:port",
		"static:///a:1,a:1":       "appears twice",
	} {
		_, err := Parse(target)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want an error mentioning %q", target, err, want)
		}
	}
}

// flakyFeed returns from Watch with an error the first n times.
type flakyFeed struct {
	mu    sync.Mutex
	fails int
	calls int
}

func (f *flakyFeed) Watch(ctx context.Context, s Sink) error {
	f.mu.Lock()
	f.calls++
	fail := f.calls <= f.fails
	f.mu.Unlock()
	if fail {
		return errors.New("boom")
	}
	s.Update([]Endpoint{{Address: "127.0.0.1:9"}})
	<-ctx.Done()
	return ctx.Err()
}

func TestRunRestartsWithBackoff(t *testing.T) {
	f := &flakyFeed{fails: 2}
	sink := newChanSink()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, f, sink, RunOptions{Backoff: backoff.Config{Base: time.Millisecond, Max: 2 * time.Millisecond}})
	}()
	for range 2 {
		if err := recv(t, sink.errs); !strings.Contains(err.Error(), "boom") {
			t.Fatalf("reported %v, want the feed's error", err)
		}
	}
	if got := recv(t, sink.updates); len(got) != 1 {
		t.Fatalf("update after restarts = %v", got)
	}
	cancel()
	recv(t, done)
}

func TestBackoffDelayBounds(t *testing.T) {
	c := backoff.Config{Base: 10 * time.Millisecond, Max: 80 * time.Millisecond, Multiplier: 2, Jitter: backoff.Equal}
	for attempt, want := range []time.Duration{10, 20, 40, 80, 80} {
		want *= time.Millisecond
		for range 50 {
			d := c.Delay(attempt)
			if d > want || d < want/2 {
				t.Fatalf("attempt %d: delay %v outside [%v, %v]", attempt, d, want/2, want)
			}
		}
	}
}

// FuzzParse: any target string gives a Feed or an error, never a panic, and a
// static feed it gives holds only valid endpoints.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"static:///127.0.0.1:80,127.0.0.1:81", "static:///[::1]:443", "static://x/y", "nosuch:///a", "static:///a:1,a:1", "", "://", "static:///%zz"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		feed, err := Parse(target)
		if err != nil {
			if feed != nil {
				t.Fatal("a feed returned with an error")
			}
			return
		}
		if s, ok := feed.(*Static); ok {
			if err := ValidateSet(s.Endpoints()); err != nil {
				t.Fatalf("Parse(%q) accepted an invalid set: %v", target, err)
			}
		}
	})
}

func TestParseRedactsSecrets(t *testing.T) {
	_, err := Parse("nosuch://agent/svc?tag=a&token=s3cr3t")
	if err == nil || strings.Contains(err.Error(), "s3cr3t") || !strings.Contains(err.Error(), "token=REDACTED") {
		t.Fatalf("err = %v, want the token redacted", err)
	}
}
