package grpcpolicy_test

import (
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/resolver"
	"github.com/lodestar-go/lodestar/resolver/grpcresolver"
)

// Issue 17 through the gRPC door. A refused connection never makes a
// subchannel READY, so a dead endpoint is NotConnected and never picked; what
// gRPC does see of a broken endpoint is one that accepts connections and then
// fails every stream: here, a real HTTP/2 server (net/http, cleartext) that
// resets each stream (RST_STREAM INTERNAL_ERROR) before answering, or, when
// repaired, serves it with a real grpc.Server.

// h2Backend is a gRPC backend behind net/http's HTTP/2 server.
type h2Backend struct {
	addr   string
	calls  atomic.Int64 // streams received
	broken atomic.Int32 // 0: serve; 1: reset every stream; 2: UNAVAILABLE at once
}

type emptyService struct {
	testgrpc.UnimplementedTestServiceServer
	b *h2Backend
}

func (s emptyService) EmptyCall(context.Context, *testgrpc.Empty) (*testgrpc.Empty, error) {
	if s.b.broken.Load() == 2 {
		return nil, status.Error(codes.Unavailable, "shedding")
	}
	return &testgrpc.Empty{}, nil
}

func startH2Backends(t *testing.T, n int) []*h2Backend {
	t.Helper()
	bs := make([]*h2Backend, n)
	for i := range bs {
		b := &h2Backend{}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		b.addr = lis.Addr().String()
		gs := grpc.NewServer()
		testgrpc.RegisterTestServiceServer(gs, emptyService{b: b})
		hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b.calls.Add(1)
			if b.broken.Load() == 1 {
				panic(http.ErrAbortHandler) // the server resets the stream: RST_STREAM INTERNAL_ERROR
			}
			gs.ServeHTTP(w, r)
		})}
		hs.Protocols = new(http.Protocols)
		hs.Protocols.SetUnencryptedHTTP2(true)
		done := make(chan struct{})
		go func() {
			defer close(done)
			hs.Serve(lis)
		}()
		t.Cleanup(func() {
			hs.Close()
			<-done
			gs.Stop()
		})
		bs[i] = b
	}
	return bs
}

func h2Counts(bs []*h2Backend) []int64 {
	c := make([]int64, len(bs))
	for i, b := range bs {
		c[i] = b.calls.Load()
	}
	return c
}

// h2Share returns backend i's share of the calls between a and b.
func h2Share(a, b []int64, i int) (float64, int64) {
	var total int64
	for k := range b {
		total += b[k] - a[k]
	}
	if total == 0 {
		return 0, 0
	}
	return float64(b[i]-a[i]) / float64(total), total
}

// grpcLoad runs 16 goroutines making EmptyCalls until stop closes.
func grpcLoad(client testgrpc.TestServiceClient, stop <-chan struct{}, wg *sync.WaitGroup) {
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				ctx = balancer.WithAffinityKey(ctx, "k"+strconvItoa(g)+"-"+strconvItoa(i))
				client.EmptyCall(ctx, &testgrpc.Empty{})
				cancel()
			}
		}()
	}
}

func strconvItoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b [20]byte
	n := len(b)
	for ; i > 0; i /= 10 {
		n--
		b[n] = byte('0' + i%10)
	}
	return string(b[n:])
}

var grpcBuiltins = []string{"round_robin", "weighted_round_robin", "random", "weighted_random",
	"least_request", "peak_ewma", "ring_hash", "maglev", "bounded_load"}

// An endpoint that accepts connections and resets every stream before
// answering: with default settings its share of calls after the first second
// is ≤ 2% for every algorithm (its resets are LocalError, "failed before any
// response", which failure accrual counts), 0% while ejected, and once it is
// repaired it is back when its ejection ends, with its share.
func TestE2EGRPCResettingEndpointRepelledByDefault(t *testing.T) {
	registerTestPolicy()
	for _, alg := range grpcBuiltins {
		t.Run(alg, func(t *testing.T) {
			t.Parallel()
			bs := startH2Backends(t, 6)
			bad := bs[5]
			bad.broken.Store(1)
			as := make([]string, len(bs))
			for i, b := range bs {
				as[i] = b.addr
			}
			feed, err := resolver.NewStaticAddrs(as...)
			if err != nil {
				t.Fatal(err)
			}
			service := "repel-" + alg
			cc := dial(t, "repel:///"+service, serviceConfig(testPolicy, `{"algorithm": "`+alg+`"}`),
				grpc.WithResolvers(grpcresolver.FeedBuilder("repel", feed)))
			cc.Connect()
			eng := waitEligible(t, service, 6)
			ep := eng.Endpoint(bad.addr)
			if ep == nil {
				t.Fatalf("no engine endpoint for %s", bad.addr)
			}
			var mu sync.Mutex
			var periods [][2]time.Time
			var why []string
			unsub := eng.Subscribe(func(ev balancer.Event) {
				if ev.Kind != balancer.ConditionChanged || ev.Address != bad.addr {
					return
				}
				was, is := ev.Old&balancer.Ejected != 0, ev.New&balancer.Ejected != 0
				mu.Lock()
				defer mu.Unlock()
				if is && !was {
					periods = append(periods, [2]time.Time{time.Now()})
					why = append(why, ev.Why)
				} else if was && !is && len(periods) > 0 {
					periods[len(periods)-1][1] = time.Now()
				}
			})
			defer unsub()

			client := testgrpc.NewTestServiceClient(cc)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			grpcLoad(client, stop, &wg)
			defer func() { close(stop); wg.Wait() }()

			time.Sleep(time.Second) // the first second: load, not synchronisation
			c1 := h2Counts(bs)
			// While ejected, the endpoint gets no stream at all.
			mu.Lock()
			ejectedNow := len(periods) > 0 && periods[len(periods)-1][1].IsZero()
			mu.Unlock()
			time.Sleep(1500 * time.Millisecond)
			c2 := h2Counts(bs)
			sh, total := h2Share(c1, c2, 5)
			t.Logf("resetting endpoint: %.3f%% of %d calls from 1s to 2.5s; classes: local_error %d", sh*100, total, ep.Outcomes(outcome.LocalError))
			if total < 100 {
				t.Fatalf("only %d calls in 1.5s: the load did not run", total)
			}
			if sh > 0.02 {
				t.Fatalf("the resetting endpoint got %.2f%% of %d calls after the first second, want ≤ 2%%", sh*100, total)
			}
			mu.Lock()
			stillEjected := len(periods) > 0 && periods[len(periods)-1][1].IsZero() && len(periods) == 1
			n, first := len(periods), ""
			if n > 0 {
				first = why[0]
			}
			mu.Unlock()
			switch {
			case n > 0:
				if !strings.Contains(first, "consecutive_connection_failures") {
					t.Fatalf("ejected for %q, want consecutive_connection_failures", first)
				}
			case ep.Outcomes(outcome.LocalError) >= 5:
				t.Fatalf("never ejected (local errors %d, server errors %d)", ep.Outcomes(outcome.LocalError), ep.Outcomes(outcome.ServerError))
			default:
				// The failure scores kept it under accrual's 5 failures
				// (peak_ewma can): nothing to eject.
				t.Logf("not ejected: the scores kept it to %d local errors", ep.Outcomes(outcome.LocalError))
			}
			if ejectedNow && stillEjected && c2[5] != c1[5] {
				t.Fatalf("%d streams reached the endpoint while it was ejected", c2[5]-c1[5])
			}

			// Repaired: it serves again, and is back when its ejection ends.
			bad.broken.Store(0)
			served := bad.calls.Load()
			eventually(t, "the repaired endpoint to be back and served", 25*time.Second, func() bool {
				return ep.Conditions()&balancer.Ejected == 0 && ep.Outcomes(outcome.Success) > 0 && bad.calls.Load() > served
			})
			c3 := h2Counts(bs)
			time.Sleep(1500 * time.Millisecond)
			c4 := h2Counts(bs)
			sh, total = h2Share(c3, c4, 5)
			t.Logf("repaired: %.1f%% of %d calls (fair share 16.7%%)", sh*100, total)
			if sh < 0.06 {
				t.Fatalf("repaired, the endpoint got %.2f%% of %d calls, want its share back (≥ 6%%)", sh*100, total)
			}
		})
	}
}

// An endpoint that answers UNAVAILABLE at once (a gateway error: not ejected
// by default, its meaning is the application's) gets no more of
// least_request's calls than of round robin's: the failure counts in the
// score.
func TestE2EGRPCFastUnavailableNoMagnet(t *testing.T) {
	registerTestPolicy()
	shares := map[string]float64{}
	var mu sync.Mutex
	t.Run("group", func(t *testing.T) {
		for _, alg := range []string{"round_robin", "least_request"} {
			t.Run(alg, func(t *testing.T) {
				t.Parallel()
				bs := startH2Backends(t, 6)
				bs[0].broken.Store(2)
				as := make([]string, len(bs))
				for i, b := range bs {
					as[i] = b.addr
				}
				feed, err := resolver.NewStaticAddrs(as...)
				if err != nil {
					t.Fatal(err)
				}
				service := "unavail-" + alg
				cc := dial(t, "unavail:///"+service, serviceConfig(testPolicy, `{"algorithm": "`+alg+`"}`),
					grpc.WithResolvers(grpcresolver.FeedBuilder("unavail", feed)))
				cc.Connect()
				eng := waitEligible(t, service, 6)
				client := testgrpc.NewTestServiceClient(cc)
				stop := make(chan struct{})
				var wg sync.WaitGroup
				grpcLoad(client, stop, &wg)
				time.Sleep(500 * time.Millisecond) // warm-up: load, not synchronisation
				c1 := h2Counts(bs)
				time.Sleep(1500 * time.Millisecond)
				c2 := h2Counts(bs)
				close(stop)
				wg.Wait()
				sh, total := h2Share(c1, c2, 0)
				t.Logf("%s: the UNAVAILABLE endpoint got %.2f%% of %d calls", alg, sh*100, total)
				if total < 100 {
					t.Fatalf("only %d calls: the load did not run", total)
				}
				if c := eng.Endpoint(bs[0].addr).Conditions(); c != 0 {
					t.Fatalf("the UNAVAILABLE endpoint is %v: gateway errors must not eject by default", c)
				}
				mu.Lock()
				shares[alg] = sh
				mu.Unlock()
			})
		}
	})
	if t.Failed() {
		return
	}
	if shares["least_request"] > shares["round_robin"] {
		t.Fatalf("least_request gave the UNAVAILABLE endpoint %.2f%%, more than round robin's %.2f%%",
			shares["least_request"]*100, shares["round_robin"]*100)
	}
}
