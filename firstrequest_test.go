package lodestar_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/resolver"
)

// asyncFeed hides a feed's synchronous delivery (resolver.Subscriber), so the
// engine watches it on a goroutine: the path every non-static feed takes.
type asyncFeed struct{ f resolver.Feed }

func (a asyncFeed) Watch(ctx context.Context, s resolver.Sink) error { return a.f.Watch(ctx, s) }

func mustGet(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// 200 fresh transports in a row, each's first request succeeds: a static
// target is in force when NewTransport returns, and a feed that answers on its
// own goroutine is waited for.
func TestFreshTransportFirstRequest(t *testing.T) {
	_, eps := backends(t, 2)
	target := "static:///" + eps[0].Address + "," + eps[1].Address
	for i := range 200 {
		svc := lodestar.Service{Target: target}
		if i%2 == 1 { // the same list through an asynchronous feed
			st, err := resolver.NewStatic(eps...)
			if err != nil {
				t.Fatal(err)
			}
			svc = lodestar.Service{Feed: asyncFeed{st}}
		}
		tr, err := lodestar.NewTransport(lodestar.Options{Services: map[string]lodestar.Service{"users": svc}})
		if err != nil {
			t.Fatal(err)
		}
		_, err = mustGet(&http.Client{Transport: tr}, "http://users/v1/profile")
		tr.Close()
		if err != nil {
			t.Fatalf("transport %d: first request: %v", i, err)
		}
	}
}

// 16 goroutines' first requests on one fresh transport all succeed, with a
// static target and with a feed that answers on its own goroutine.
func TestFreshTransportConcurrentFirstRequests(t *testing.T) {
	_, eps := backends(t, 3)
	st, err := resolver.NewStatic(eps...)
	if err != nil {
		t.Fatal(err)
	}
	for name, svc := range map[string]lodestar.Service{
		"static": {Target: "static:///" + eps[0].Address + "," + eps[1].Address + "," + eps[2].Address},
		"async":  {Feed: asyncFeed{st}},
	} {
		t.Run(name, func(t *testing.T) {
			for range 20 {
				tr, err := lodestar.NewTransport(lodestar.Options{Services: map[string]lodestar.Service{"users": svc}})
				if err != nil {
					t.Fatal(err)
				}
				c := &http.Client{Transport: tr}
				var wg sync.WaitGroup
				var failed atomic.Int64
				var firstErr atomic.Value
				for range 16 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						if _, err := mustGet(c, "http://users/"); err != nil {
							failed.Add(1)
							firstErr.CompareAndSwap(nil, err)
						}
					}()
				}
				wg.Wait()
				tr.Close()
				if n := failed.Load(); n > 0 {
					t.Fatalf("%d of 16 first requests failed; first: %v", n, firstErr.Load())
				}
			}
		})
	}
}

// A feed that never answers: the first request fails after the initial
// timeout with the "not answered yet" error, naming the service and the target
// (redacted); a request with an earlier deadline fails at its deadline with the
// same kind of error.
func TestFeedNeverAnswers(t *testing.T) {
	tr, err := lodestar.NewTransport(lodestar.Options{Services: map[string]lodestar.Service{
		"users": {Feed: silentFeed{}, Config: balancer.Config{InitialDiscoveryTimeout: 100 * time.Millisecond}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	c := &http.Client{Transport: tr}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://users/", nil)
	_, err = c.Do(req)
	if !errors.Is(err, balancer.ErrDiscoveryPending) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("request with a 20ms deadline: err = %v; want ErrDiscoveryPending and DeadlineExceeded", err)
	}

	start := time.Now()
	_, err = mustGet(c, "http://users/")
	if !errors.Is(err, balancer.ErrDiscoveryPending) || errors.Is(err, balancer.ErrNoEndpoints) {
		t.Fatalf("err = %v; want ErrDiscoveryPending, not ErrNoEndpoints", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("the first request waited %v, far past the 100ms initial timeout", time.Since(start))
	}
	for _, want := range []string{`"users"`, "has not answered yet after", "lodestar_test.silentFeed"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

// silentFeed never answers.
type silentFeed struct{}

func (silentFeed) Watch(ctx context.Context, _ resolver.Sink) error {
	<-ctx.Done()
	return ctx.Err()
}

// The target in a "not answered yet" error is redacted: a token never shows.
func TestPendingErrorRedactsTarget(t *testing.T) {
	tr, err := lodestar.NewTransport(lodestar.Options{Services: map[string]lodestar.Service{
		"users": {Target: "lodestar-test-silent://agent/users?token=s3cr3t-t0ken",
			Config: balancer.Config{InitialDiscoveryTimeout: time.Millisecond}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	_, err = mustGet(&http.Client{Transport: tr}, "http://users/")
	if !errors.Is(err, balancer.ErrDiscoveryPending) {
		t.Fatalf("err = %v; want ErrDiscoveryPending", err)
	}
	if strings.Contains(err.Error(), "s3cr3t-t0ken") || !strings.Contains(err.Error(), "lodestar-test-silent://agent/users") {
		t.Fatalf("error %q: want the target named with its token redacted", err)
	}
}

func init() {
	resolver.Register("lodestar-test-silent", func(*url.URL) (resolver.Feed, error) { return silentFeed{}, nil })
}

// Static.Set, then at once a request: the removed endpoint gets no new request
// (the servers count what they receive).
func TestStaticSetThenRequest(t *testing.T) {
	bs, eps := backends(t, 2)
	st, err := resolver.NewStatic(eps...)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := lodestar.NewTransport(lodestar.Options{Services: map[string]lodestar.Service{"users": {Feed: st}}})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	c := &http.Client{Transport: tr}
	for i := range 100 {
		keep, gone := i%2, 1-i%2
		if err := st.Set(eps[keep]); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			got, err := mustGet(c, "http://users/")
			if err != nil {
				t.Fatal(err)
			}
			if got != bs[keep].name {
				t.Fatalf("round %d: request right after Set(%s) went to %s (removed: %s)", i, bs[keep].name, got, bs[gone].name)
			}
		}
	}
}

// Service names are host names: any case reaches the service, and names that
// differ only in case are rejected.
func TestServiceNameCase(t *testing.T) {
	bs, eps := backends(t, 1)
	tr, err := lodestar.NewTransport(lodestar.Options{Services: map[string]lodestar.Service{
		"Users": {Target: "static:///" + eps[0].Address},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	c := &http.Client{Transport: tr}
	for _, u := range []string{"http://users/", "http://USERS/", "http://Users:8080/", "http://uSeRs/x"} {
		got, err := mustGet(c, u)
		if err != nil || got != bs[0].name {
			t.Fatalf("GET %s = %q, %v; want the backend", u, got, err)
		}
	}
	if tr.Engine("USERS") == nil {
		t.Fatal(`Engine("USERS") = nil; want the service's engine`)
	}
	_, err = lodestar.NewTransport(lodestar.Options{Services: map[string]lodestar.Service{
		"users": {Target: "static:///" + eps[0].Address},
		"USERS": {Target: "static:///" + eps[0].Address},
	}})
	if err == nil || !strings.Contains(err.Error(), "configured twice") {
		t.Fatalf("case-variant duplicate names: err = %v; want it rejected", err)
	}
}

// The case-insensitive lookup allocates nothing.
func TestServiceLookupAllocatesNothing(t *testing.T) {
	tr, err := lodestar.NewTransport(lodestar.Options{Services: map[string]lodestar.Service{
		"users": {Target: "static:///127.0.0.1:1"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	for _, host := range []string{"users", "USERS", "Users:8080"} {
		if !tr.HasService(host) {
			t.Fatalf("%q: no service", host)
		}
		if n := testing.AllocsPerRun(100, func() { tr.HasService(host) }); n != 0 {
			t.Errorf("lookup(%q) allocates %v times", host, n)
		}
	}
}
