package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// mode is how a backend answers requests (not health checks) at the moment.
type mode int32

const (
	modeOK          mode = iota // answers every request
	modeUnavailable             // answers every request 503 / UNAVAILABLE
	modeFlaky                   // answers every other request 500 / INTERNAL
	modeCold                    // its next request takes coldStart, then modeOK
)

// coldStart is how long a backend's first request after its fix takes (a
// cold cache): long enough to watch a half-open breaker with its one probe
// in flight.
const coldStart = 300 * time.Millisecond

// answer is how a backend ended one request.
type answer int

const (
	answered answer = iota
	unavailable
	failed
)

// backend is one simulated server, the same for both doors: its mode, its
// health as its health endpoint reports it, and the time of every request
// that reached it (health checks excluded), from which the traffic shares
// are computed.
type backend struct {
	name, addr string
	mode       atomic.Int32
	flips      atomic.Int64 // modeFlaky's request count
	setHealthy func(bool)   // what its health endpoint says
	stop       func()

	mu       sync.Mutex
	requests []request
}

// request is one request that reached a backend: when its client sent it and
// when it arrived. A client sends a request, then lodestar picks its
// endpoint, so a request sent after an endpoint left the rotation and
// arrived before it came back was picked while it was out.
type request struct {
	sent, arrived time.Time
	failed        bool // answered with an error
}

// base is the time sent stamps count from: a request carries time.Since(base)
// (header X-Sent, gRPC metadata x-sent), which the backend adds back to base,
// so that stamps keep the monotonic clock the engine's events are timed with.
var base = time.Now()

func stamp() string { return strconv.FormatInt(int64(time.Since(base)), 10) }

func unstamp(s string) time.Time {
	d, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}
	}
	return base.Add(time.Duration(d))
}

func (b *backend) setMode(m mode) { b.mode.Store(int32(m)) }

// handle does the work of a request sent at sent and says how it ends.
func (b *backend) handle(sent time.Time) answer {
	r := request{sent: sent, arrived: time.Now()}
	a := answered
	switch mode(b.mode.Load()) {
	case modeUnavailable:
		a = unavailable
	case modeFlaky:
		if b.flips.Add(1)%2 == 1 {
			a = failed
		}
	case modeCold:
		if b.mode.CompareAndSwap(int32(modeCold), int32(modeOK)) {
			defer time.Sleep(coldStart) // after the request is recorded
		}
	}
	r.failed = a != answered
	b.mu.Lock()
	b.requests = append(b.requests, r)
	b.mu.Unlock()
	return a
}

// count returns how many requests sent at or after from reached b before to:
// those lodestar picked b for within [from, to).
func (b *backend) count(from, to time.Time) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, r := range b.requests {
		if !r.sent.Before(from) && r.arrived.Before(to) {
			n++
		}
	}
	return n
}

// arrivedIn returns how many requests reached b within [from, to), whenever
// they were sent, and how many of those it answered with an error.
func (b *backend) arrivedIn(from, to time.Time) (n, failed int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, r := range b.requests {
		if !r.arrived.Before(from) && r.arrived.Before(to) {
			n++
			if r.failed {
				failed++
			}
		}
	}
	return n, failed
}

// simulated marks the backends' own error answers, so that a client can tell
// them from errors of its own (no endpoint, no connection).
const simulated = "(simulated)"

// startHTTP starts an HTTP backend on 127.0.0.1: /healthz answers 200 or 503
// as setHealthy says; every other path is a request.
func startHTTP(name string) *backend {
	b := &backend{name: name}
	var healthy atomic.Bool
	healthy.Store(true)
	b.setHealthy = healthy.Store
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			if !healthy.Load() {
				http.Error(w, "draining", http.StatusServiceUnavailable)
				return
			}
			io.WriteString(w, "ok")
			return
		}
		switch b.handle(unstamp(r.Header.Get("X-Sent"))) {
		case unavailable:
			http.Error(w, name+": unavailable "+simulated, http.StatusServiceUnavailable)
		case failed:
			http.Error(w, name+": internal error "+simulated, http.StatusInternalServerError)
		default:
			io.WriteString(w, name)
		}
	}))
	b.addr, b.stop = srv.Listener.Addr().String(), srv.Close
	return b
}

// grpcBackend is a gRPC backend: the interop TestService's EmptyCall is a
// request; grpc's standard health service reports its health.
type grpcBackend struct {
	testgrpc.UnimplementedTestServiceServer
	*backend
}

func (g grpcBackend) EmptyCall(ctx context.Context, _ *testgrpc.Empty) (*testgrpc.Empty, error) {
	var sent time.Time
	if v := metadata.ValueFromIncomingContext(ctx, "x-sent"); len(v) == 1 {
		sent = unstamp(v[0])
	}
	switch g.handle(sent) {
	case unavailable:
		return nil, status.Error(codes.Unavailable, g.name+": unavailable "+simulated)
	case failed:
		return nil, status.Error(codes.Internal, g.name+": internal error "+simulated)
	}
	return &testgrpc.Empty{}, nil
}

// startGRPC starts a gRPC backend on 127.0.0.1 with the standard health
// service (grpc.health.v1.Health), SERVING or NOT_SERVING as setHealthy says.
func startGRPC(name string) (*backend, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &backend{name: name, addr: lis.Addr().String()}
	hs := health.NewServer()
	b.setHealthy = func(ok bool) {
		st := healthpb.HealthCheckResponse_SERVING
		if !ok {
			st = healthpb.HealthCheckResponse_NOT_SERVING
		}
		hs.SetServingStatus("", st)
	}
	srv := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(srv, grpcBackend{backend: b})
	healthpb.RegisterHealthServer(srv, hs)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(lis)
	}()
	b.stop = func() {
		srv.Stop()
		<-done
	}
	return b, nil
}
