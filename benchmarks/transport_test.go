package benchmarks

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/resolver"
	"github.com/lodestar-go/lodestar/retry"
)

// emptyBody is a response body that is already at EOF and costs no allocation.
type emptyBody struct{}

func (emptyBody) Read([]byte) (int, error) { return 0, io.EOF }
func (emptyBody) Close() error             { return nil }

// noopTransport answers every request at once without any I/O, so a benchmark
// over it measures only the client-side cost of what wraps it.
type noopTransport struct{}

func (noopTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: 200, Body: emptyBody{}, Request: req}, nil
}

// rewriteTransport is the least any request-retargeting RoundTripper must do:
// copy the request and its URL (the caller's must not be changed) and point the
// copy at another host. It is the floor lodestar is compared with.
type rewriteTransport struct {
	base http.RoundTripper
	host string
}

func (t rewriteTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	type out struct {
		req http.Request
		url url.URL
	}
	o := &out{req: *req, url: *req.URL}
	o.url.Host = t.host
	o.req.URL = &o.url
	return t.base.RoundTrip(&o.req)
}

func newLodestar(b *testing.B, base http.RoundTripper, addrs []string, alg balancer.Algorithm) *lodestar.Transport {
	return newLodestarConfig(b, base, addrs, balancer.Config{Algorithm: alg})
}

func newLodestarConfig(b *testing.B, base http.RoundTripper, addrs []string, cfg balancer.Config) *lodestar.Transport {
	b.Helper()
	feed, err := resolver.NewStaticAddrs(addrs...)
	if err != nil {
		b.Fatal(err)
	}
	tr, err := lodestar.NewTransport(lodestar.Options{
		Base:     base,
		Services: map[string]lodestar.Service{"svc": {Feed: feed, Config: cfg}},
	})
	if err != nil {
		b.Fatal(err)
	}
	for len(tr.Engine("svc").Eligible()) < len(addrs) {
		// The static feed delivers on the watcher goroutine; wait for it.
		b.StopTimer()
		b.StartTimer()
	}
	b.Cleanup(func() { tr.Close() })
	return tr
}

func roundTrip(b *testing.B, rt http.RoundTripper, req *http.Request) {
	resp, err := rt.RoundTrip(req)
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

// BenchmarkRoundTripNoop measures the client-side cost lodestar adds to a
// request: "bare" calls the no-op base directly; "copy" is the floor of any
// retargeting RoundTripper (one copy of the request and URL); "lodestar" goes
// through the Transport (lookup, pick, request copy, timing, send, body
// tracking, report).
func BenchmarkRoundTripNoop(b *testing.B) {
	addrs := []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"}
	bare := noopTransport{}
	copyOnly := &rewriteTransport{base: noopTransport{}, host: addrs[0]}
	{
		req, _ := http.NewRequest("GET", "http://svc/v1/item", nil)
		b.Run("copy/serial", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				roundTrip(b, copyOnly, req)
			}
		})
		b.Run("copy/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					roundTrip(b, copyOnly, req)
				}
			})
		})
	}
	for _, alg := range []balancer.Algorithm{&balancer.RoundRobin{}, &balancer.LeastRequest{}} {
		ls := newLodestar(b, noopTransport{}, addrs, alg)
		lsReq, _ := http.NewRequest("GET", "http://svc/v1/item", nil)
		bareReq, _ := http.NewRequest("GET", "http://10.0.0.1:80/v1/item", nil)
		b.Run("bare/serial", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				roundTrip(b, bare, bareReq)
			}
		})
		b.Run("lodestar-"+alg.Name()+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				roundTrip(b, ls, lsReq)
			}
		})
		b.Run("bare/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					roundTrip(b, bare, bareReq)
				}
			})
		})
		b.Run("lodestar-"+alg.Name()+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					roundTrip(b, ls, lsReq)
				}
			})
		})
	}
}

// BenchmarkRoundTripRetryNoop measures what a retry policy costs a request
// it does not retry (issue 11: 0 allocs, at most 50 ns over the plain
// transport), side by side in one run: "lodestar" without a retry section,
// "lodestar-retry" with retries configured (defaults), "lodestar-retry-pertry"
// with a per-try timeout too (which needs the attempt's own context and
// timer).
func BenchmarkRoundTripRetryNoop(b *testing.B) {
	addrs := []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"}
	for _, v := range []struct {
		name string
		cfg  balancer.Config
	}{
		{"lodestar", balancer.Config{}},
		{"lodestar-retry", balancer.Config{Retry: &retry.Config{}}},
		{"lodestar-retry-pertry", balancer.Config{Retry: &retry.Config{PerTryTimeout: time.Second}}},
	} {
		ls := newLodestarConfig(b, noopTransport{}, addrs, v.cfg)
		req, _ := http.NewRequest("GET", "http://svc/v1/item", nil)
		b.Run(v.name+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				roundTrip(b, ls, req)
			}
		})
		b.Run(v.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					roundTrip(b, ls, req)
				}
			})
		})
	}
}

// BenchmarkRoundTripLoopback sends real requests to a net/http server on
// 127.0.0.1: "bare" through an http.Transport straight to the server,
// "lodestar" through lodestar's Transport over a clone of that http.Transport.
func BenchmarkRoundTripLoopback(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	defer srv.Close()
	newBase := func() *http.Transport {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = 64
		return t
	}
	bare := newBase()
	defer bare.CloseIdleConnections()
	ls := newLodestar(b, newBase(), []string{srv.Listener.Addr().String()}, &balancer.RoundRobin{})
	bareReq, _ := http.NewRequest("GET", srv.URL+"/v1/item", nil)
	lsReq, _ := http.NewRequest("GET", "http://svc/v1/item", nil)

	for _, tc := range []struct {
		name string
		rt   http.RoundTripper
		req  *http.Request
	}{{"bare", bare, bareReq}, {"lodestar", ls, lsReq}} {
		b.Run(tc.name+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				roundTrip(b, tc.rt, tc.req)
			}
		})
	}
	for _, tc := range []struct {
		name string
		rt   http.RoundTripper
		req  *http.Request
	}{{"bare", bare, bareReq}, {"lodestar", ls, lsReq}} {
		b.Run(tc.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					roundTrip(b, tc.rt, tc.req)
				}
			})
		})
	}
}
