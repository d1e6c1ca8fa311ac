package grpcpolicy_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	grpcbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/grpcpolicy"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/retry"
)

// How a retryServer answers UnaryCall.
const (
	answerOK          = iota
	answerUnavailable // UNAVAILABLE, the server's own answer
	answerReset       // reads the request, then drops the connection
	answerHang        // waits for the call's end
	answerPushback    // RESOURCE_EXHAUSTED with grpc-retry-pushback-ms
	answerSlow        // answers after 30ms
)

// retryServer is a real gRPC server on 127.0.0.1 whose UnaryCall answers as
// mode says, counting calls and checksumming payloads.
type retryServer struct {
	testgrpc.UnimplementedTestServiceServer
	addr     string
	mode     atomic.Int32
	pushback string
	calls    atomic.Int64
	canceled atomic.Int64 // calls that saw their context end
	sums     sync.Map     // [32]byte → count, of payloads received
	conns    sync.Map     // remote address → net.Conn
}

func (s *retryServer) UnaryCall(ctx context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	s.calls.Add(1)
	if body := req.GetPayload().GetBody(); len(body) > 0 {
		n, _ := s.sums.LoadOrStore(sha256.Sum256(body), new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
	}
	switch s.mode.Load() {
	case answerUnavailable:
		return nil, status.Error(codes.Unavailable, "unavailable by request")
	case answerReset:
		if p, ok := peer.FromContext(ctx); ok {
			if c, ok := s.conns.Load(p.Addr.String()); ok {
				c.(net.Conn).Close()
			}
		}
		<-ctx.Done()
		return nil, ctx.Err()
	case answerHang:
		<-ctx.Done()
		s.canceled.Add(1)
		return nil, ctx.Err()
	case answerSlow:
		select {
		case <-time.After(30 * time.Millisecond):
		case <-ctx.Done():
			s.canceled.Add(1)
			return nil, ctx.Err()
		}
	case answerPushback:
		grpc.SetTrailer(ctx, metadata.Pairs("grpc-retry-pushback-ms", s.pushback))
		return nil, status.Error(codes.ResourceExhausted, "slow down")
	}
	return &testgrpc.SimpleResponse{}, nil
}

// trackingListener records accepted connections in the server's conns.
type trackingListener struct {
	net.Listener
	s *retryServer
}

func (l trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.s.conns.Store(c.RemoteAddr().String(), c)
	}
	return c, err
}

// startRetryServers starts n retry servers; they stop at the end of the test.
func startRetryServers(t *testing.T, n int) []*retryServer {
	t.Helper()
	ss := make([]*retryServer, n)
	for i := range ss {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s := &retryServer{addr: lis.Addr().String(), pushback: "1000"}
		srv := grpc.NewServer()
		testgrpc.RegisterTestServiceServer(srv, s)
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.Serve(trackingListener{lis, s})
		}()
		t.Cleanup(func() {
			srv.Stop()
			<-done
		})
		ss[i] = s
	}
	return ss
}

func retryAddrs(ss []*retryServer) string {
	a := make([]string, len(ss))
	for i, s := range ss {
		a[i] = s.addr
	}
	return strings.Join(a, ",")
}

func totalCalls(ss []*retryServer) (n int64) {
	for _, s := range ss {
		n += s.calls.Load()
	}
	return n
}

// retryClient dials the retry servers through the test policy with cfg and
// the retry interceptors of opts, and waits for every endpoint to be READY.
func retryClient(t *testing.T, ss []*retryServer, cfg string, opts grpcpolicy.RetryOptions, extra ...grpc.DialOption) (testgrpc.TestServiceClient, *balancer.Engine) {
	t.Helper()
	registerTestPolicy()
	r, err := grpcpolicy.NewRetries(opts)
	if err != nil {
		t.Fatal(err)
	}
	cc := dial(t, "static:///"+retryAddrs(ss), serviceConfig(testPolicy, cfg), append(r.DialOptions(), extra...)...)
	cc.Connect()
	eng := waitEligible(t, retryAddrs(ss), len(ss))
	return testgrpc.NewTestServiceClient(cc), eng
}

// keyFor returns an affinity key that eng's hashing algorithm maps to addr.
func keyFor(t *testing.T, eng *balancer.Engine, addr string) string {
	t.Helper()
	for i := range 10000 {
		k := fmt.Sprintf("key-%d", i)
		ep, err := eng.Pick(balancer.PickInfo{Hash: balancer.HashKey(k), HasHash: true})
		if err != nil {
			t.Fatal(err)
		}
		eng.Done(ep, outcome.Outcome{Class: outcome.Success})
		if ep.Address() == addr {
			return k
		}
	}
	t.Fatalf("no key maps to %s", addr)
	return ""
}

const unaryMethod = "/grpc.testing.TestService/UnaryCall"

// An idempotent call answered UNAVAILABLE is retried on another endpoint, even
// when the algorithm (ring hash, with the key of the failing endpoint) would
// pick the same one again.
func TestGRPCRetryGoesToAnotherEndpoint(t *testing.T) {
	ss := startRetryServers(t, 4)
	client, eng := retryClient(t, ss,
		`{"algorithm":"ring_hash","retry":{"maxAttempts":3,"backoff":{"base":"1ms","max":"2ms"}}}`,
		grpcpolicy.RetryOptions{IdempotentMethods: []string{unaryMethod}})
	bad := ss[0]
	bad.mode.Store(answerUnavailable)
	ctx := balancer.WithAffinityKey(context.Background(), keyFor(t, eng, bad.addr))
	for i := range 50 {
		if _, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{}); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if got := bad.calls.Load(); got != 50 {
		t.Errorf("the failing endpoint saw %d calls, want 50 (each call's first attempt, never a retry)", got)
	}
	if got := totalCalls(ss); got != 100 {
		t.Errorf("servers saw %d calls, want 100 (one retry per call)", got)
	}
}

// A call that is not idempotent and reached the server (which then dropped
// the connection) is never sent twice; marked idempotent, it is retried.
func TestGRPCRetryNeverResendsNonIdempotent(t *testing.T) {
	ss := startRetryServers(t, 3)
	client, eng := retryClient(t, ss,
		`{"algorithm":"ring_hash","retry":{"maxAttempts":3,"retryOn":["reset","gateway_error"],"backoff":{"base":"1ms","max":"2ms"}}}`,
		grpcpolicy.RetryOptions{})
	bad := ss[1]
	bad.mode.Store(answerReset)
	ctx := balancer.WithAffinityKey(context.Background(), keyFor(t, eng, bad.addr))
	_, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("err = %v, want UNAVAILABLE (the connection dropped after the request was read)", err)
	}
	if got := totalCalls(ss); got != 1 {
		t.Fatalf("servers saw %d calls, want 1: a non-idempotent call that reached a server is never sent twice", got)
	}
	// The same call, marked idempotent, is retried elsewhere and succeeds.
	// (Until the channel reconnects to the server that dropped it, its calls
	// go elsewhere at once: call until one has reached it again.)
	for i := 0; bad.calls.Load() < 2; i++ {
		if i == 200 {
			t.Fatal("no idempotent call reached the resetting server")
		}
		if _, err := client.UnaryCall(retry.WithIdempotent(ctx), &testgrpc.SimpleRequest{}); err != nil {
			t.Fatalf("idempotent call %d: %v", i, err)
		}
	}
}

// A 1 MB request is sent byte-identical on its retry.
func TestGRPCRetryReplaysLargeMessage(t *testing.T) {
	ss := startRetryServers(t, 2)
	client, eng := retryClient(t, ss,
		`{"algorithm":"ring_hash","retry":{"maxAttempts":2,"backoff":{"base":"1ms","max":"2ms"}}}`,
		grpcpolicy.RetryOptions{IdempotentMethods: []string{"/grpc.testing.TestService/"}})
	ss[0].mode.Store(answerUnavailable)
	body := bytes.Repeat([]byte("lodestar"), 1<<17) // 1 MiB
	ctx := balancer.WithAffinityKey(context.Background(), keyFor(t, eng, ss[0].addr))
	if _, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: body}}, grpc.MaxCallSendMsgSize(4<<20)); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(body)
	for i, s := range ss {
		n, ok := s.sums.Load(sum)
		if !ok || n.(*atomic.Int64).Load() != 1 {
			t.Errorf("server %d did not receive the exact 1 MiB payload once", i)
		}
	}
}

// A per-try timeout cuts a hung attempt (the server sees its call end), and
// the retry lands on another endpoint well within the caller's deadline.
func TestGRPCRetryPerTryTimeout(t *testing.T) {
	ss := startRetryServers(t, 3)
	client, eng := retryClient(t, ss,
		`{"algorithm":"ring_hash","retry":{"maxAttempts":2,"perTryTimeout":"100ms","retryOn":["timeout"],"backoff":{"base":"1ms","max":"2ms"}}}`,
		grpcpolicy.RetryOptions{IdempotentMethods: []string{unaryMethod}})
	hung := ss[2]
	hung.mode.Store(answerHang)
	ctx, cancel := context.WithTimeout(balancer.WithAffinityKey(context.Background(), keyFor(t, eng, hung.addr)), 10*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("took %v: the per-try timeout did not cut the hung attempt", el)
	}
	eventually(t, "the hung server to see its call end", 5*time.Second, func() bool { return hung.canceled.Load() == 1 })
	if got := totalCalls(ss); got != 2 {
		t.Errorf("servers saw %d calls, want 2", got)
	}

	// Without "timeout" in retryOn, the cut attempt is the answer: a
	// DEADLINE_EXCEEDED that names the per-try timeout.
	client2, eng2 := retryClient(t, ss[1:],
		`{"algorithm":"ring_hash","retry":{"maxAttempts":2,"perTryTimeout":"50ms"}}`,
		grpcpolicy.RetryOptions{IdempotentMethods: []string{unaryMethod}})
	ctx2 := balancer.WithAffinityKey(context.Background(), keyFor(t, eng2, hung.addr))
	_, err := client2.UnaryCall(ctx2, &testgrpc.SimpleRequest{})
	if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "per-try timeout (50ms)") {
		t.Fatalf("err = %v, want DEADLINE_EXCEEDED naming the per-try timeout", err)
	}
}

// Cancelling the call while it waits between attempts returns at once.
func TestGRPCRetryCancelDuringBackoff(t *testing.T) {
	ss := startRetryServers(t, 2)
	for _, s := range ss {
		s.mode.Store(answerUnavailable)
	}
	client, _ := retryClient(t, ss,
		`{"retry":{"maxAttempts":3,"backoff":{"base":"10s","max":"20s","jitter":"equal"}}}`,
		grpcpolicy.RetryOptions{IdempotentMethods: []string{unaryMethod}})
	waiting := make(chan time.Duration, 1)
	grpcpolicy.SetTestHookBackoff(t, func(d time.Duration) { waiting <- d })
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{})
		errc <- err
	}()
	if d := <-waiting; d < 5*time.Second {
		t.Fatalf("backoff %v, want at least 5s (equal jitter of 10s)", d)
	}
	start := time.Now()
	cancel()
	err := <-errc
	if status.Code(err) != codes.Canceled {
		t.Fatalf("err = %v, want CANCELLED", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("returned %v after the cancel", el)
	}
}

// A server's grpc-retry-pushback-ms sets the retry's delay (capped by
// backoff.max) and pauses the endpoint: it gets no calls meanwhile.
func TestGRPCRetryPushback(t *testing.T) {
	ss := startRetryServers(t, 3)
	client, eng := retryClient(t, ss,
		`{"algorithm":"ring_hash","retry":{"maxAttempts":2,"backoff":{"base":"1ms","max":"300ms"}}}`,
		grpcpolicy.RetryOptions{IdempotentMethods: []string{unaryMethod}})
	slow := ss[0]
	slow.mode.Store(answerPushback)
	slow.pushback = "60000"
	key := keyFor(t, eng, slow.addr)
	delays := make(chan time.Duration, 4)
	grpcpolicy.SetTestHookBackoff(t, func(d time.Duration) { delays <- d })
	if _, err := client.UnaryCall(balancer.WithAffinityKey(context.Background(), key), &testgrpc.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	if d := <-delays; d != 300*time.Millisecond {
		t.Errorf("retry delay %v, want the pushback capped at backoff.max (300ms)", d)
	}
	if c := eng.Endpoint(slow.addr).Conditions(); c&balancer.Paused == 0 {
		t.Fatalf("conditions %v, want paused", c)
	}
	before := slow.calls.Load()
	for range 20 {
		if _, err := client.UnaryCall(balancer.WithAffinityKey(context.Background(), key), &testgrpc.SimpleRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	if got := slow.calls.Load() - before; got != 0 {
		t.Errorf("the paused endpoint got %d of 20 calls", got)
	}
}

// A pushback that says not to retry (a negative value) is obeyed.
func TestGRPCRetryPushbackNoRetry(t *testing.T) {
	ss := startRetryServers(t, 2)
	ss[0].mode.Store(answerPushback)
	ss[0].pushback = "-1"
	client, eng := retryClient(t, ss,
		`{"algorithm":"ring_hash","retry":{"maxAttempts":3,"backoff":{"base":"1ms","max":"2ms"}}}`,
		grpcpolicy.RetryOptions{IdempotentMethods: []string{unaryMethod}})
	ctx := balancer.WithAffinityKey(context.Background(), keyFor(t, eng, ss[0].addr))
	if _, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("err = %v, want RESOURCE_EXHAUSTED", err)
	}
	if got := totalCalls(ss); got != 1 {
		t.Errorf("servers saw %d calls, want 1", got)
	}
}

// grpc's own retryPolicy (in the service config) goes to another endpoint
// when the interceptor is installed, and to the same one without it.
func TestGRPCOwnRetryPolicyAvoidsTriedEndpoint(t *testing.T) {
	ss := startRetryServers(t, 3)
	bad := ss[0]
	bad.mode.Store(answerUnavailable)
	sc := fmt.Sprintf(`{"loadBalancingConfig":[{%q:{"algorithm":"ring_hash"}}],
	  "methodConfig":[{"name":[{"service":"grpc.testing.TestService"}],
	    "retryPolicy":{"maxAttempts":3,"initialBackoff":"0.001s","maxBackoff":"0.002s","backoffMultiplier":2,"retryableStatusCodes":["UNAVAILABLE"]}}]}`, testPolicy)
	registerTestPolicy()
	for _, withInterceptor := range []bool{true, false} {
		t.Run(fmt.Sprint("interceptor=", withInterceptor), func(t *testing.T) {
			var opts []grpc.DialOption
			if withInterceptor {
				r, err := grpcpolicy.NewRetries(grpcpolicy.RetryOptions{})
				if err != nil {
					t.Fatal(err)
				}
				opts = r.DialOptions()
			}
			for _, s := range ss {
				s.calls.Store(0)
			}
			// A target of its own per run: the engines are recorded by target.
			list := retryAddrs(ss)
			if !withInterceptor {
				list = strings.Join([]string{ss[2].addr, ss[1].addr, ss[0].addr}, ",")
			}
			cc := dial(t, "static:///"+list, sc, opts...)
			cc.Connect()
			eng := waitEligible(t, list, 3)
			ctx := balancer.WithAffinityKey(context.Background(), keyFor(t, eng, bad.addr))
			_, err := testgrpc.NewTestServiceClient(cc).UnaryCall(ctx, &testgrpc.SimpleRequest{})
			if withInterceptor {
				if err != nil || bad.calls.Load() != 1 {
					t.Fatalf("err = %v, bad endpoint saw %d calls; want success after one attempt there", err, bad.calls.Load())
				}
			} else if status.Code(err) != codes.Unavailable || bad.calls.Load() != 3 {
				t.Fatalf("err = %v, bad endpoint saw %d calls; want every attempt there (the control)", err, bad.calls.Load())
			}
			cc.Close()
		})
	}
}

// Retry storm: every endpoint fails; the budget bounds what servers see.
func TestGRPCRetryStormBoundedByBudget(t *testing.T) {
	ss := startRetryServers(t, 4)
	for _, s := range ss {
		s.mode.Store(answerUnavailable)
	}
	client, _ := retryClient(t, ss,
		`{"retry":{"maxAttempts":5,"backoff":{"base":"1ms","max":"1ms"},"budget":{"ratio":0.2,"minPerSecond":10,"window":"10s"}}}`,
		grpcpolicy.RetryOptions{IdempotentMethods: []string{unaryMethod}})
	const n = 1000
	start := time.Now()
	var wg sync.WaitGroup
	var failed atomic.Int64
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				if _, err := client.UnaryCall(context.Background(), &testgrpc.SimpleRequest{}); err != nil {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	if failed.Load() != n {
		t.Fatalf("%d of %d calls failed, want all", failed.Load(), n)
	}
	// Finagle's bound: ratio × requests + minPerSecond × (T + window).
	bound := int64(1.2*n + 10*(secs+10))
	got := totalCalls(ss)
	t.Logf("%d calls, every endpoint failing: servers saw %d attempts in %.1fs (bound %d; %d without a budget)", n, got, secs, bound, 5*n)
	if got > bound {
		t.Fatalf("servers saw %d attempts, above the budget's bound %d", got, bound)
	}
	if got <= n {
		t.Fatalf("servers saw %d attempts: no retry happened", got)
	}
}

// A channel whose config has a retry section, used without the interceptor,
// says so once; with RetryOptions.Config, the interceptors retry on a
// channel without a section of its own.
func TestGRPCRetryWithoutInterceptorWarns(t *testing.T) {
	var logs syncBuffer
	grpcbalancer.Register(grpcpolicy.NewBuilder(grpcpolicy.Options{Name: "lodestar_retrywarn2",
		Logger: slog.New(slog.NewTextHandler(&logs, nil))}))
	ss := startRetryServers(t, 2)
	cc := dial(t, "static:///"+retryAddrs(ss), serviceConfig("lodestar_retrywarn2", `{"retry": {"maxAttempts": 2}}`))
	client := testgrpc.NewTestServiceClient(cc)
	for range 3 {
		if _, err := client.UnaryCall(context.Background(), &testgrpc.SimpleRequest{}, grpc.WaitForReady(true)); err != nil {
			t.Fatal(err)
		}
	}
	if got := strings.Count(logs.String(), "applies to calls made with the retry interceptor"); got != 1 {
		t.Fatalf("logs %q: want the warning once, got %d", logs.String(), got)
	}
}

func TestGRPCRetryGoConfig(t *testing.T) {
	ss := startRetryServers(t, 2)
	client, eng := retryClient(t, ss, `{"algorithm":"ring_hash"}`,
		grpcpolicy.RetryOptions{Config: &retry.Config{MaxAttempts: 2, Backoff: retry.BackoffConfig{Base: time.Millisecond, Max: 2 * time.Millisecond}},
			IdempotentMethods: []string{unaryMethod}})
	ss[0].mode.Store(answerUnavailable)
	ctx := balancer.WithAffinityKey(context.Background(), keyFor(t, eng, ss[0].addr))
	if _, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	if got := totalCalls(ss); got != 2 {
		t.Errorf("servers saw %d calls, want 2", got)
	}
}

func TestNewRetriesRejectsBadOptions(t *testing.T) {
	for _, tc := range []struct {
		opts grpcpolicy.RetryOptions
		want string
	}{
		{grpcpolicy.RetryOptions{Config: &retry.Config{MaxAttempts: 11}}, "maxAttempts"},
		{grpcpolicy.RetryOptions{Config: &retry.Config{RetryOn: []string{"5xx"}}}, "retryOn[0]"},
		{grpcpolicy.RetryOptions{IdempotentMethods: []string{"Get"}}, "IdempotentMethods[0]"},
		{grpcpolicy.RetryOptions{IdempotentMethods: []string{"/a/b", "/a/b/c"}}, "IdempotentMethods[1]"},
	} {
		_, err := grpcpolicy.NewRetries(tc.opts)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewRetries(%+v) = %v, want an error naming %s", tc.opts, err, tc.want)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// hedgeClient is retryClient after one call, so that the interceptors know
// the channel hedges (they learn a channel's section from its first call).
func hedgeClient(t *testing.T, ss []*retryServer, cfg string, opts grpcpolicy.RetryOptions) (testgrpc.TestServiceClient, *balancer.Engine) {
	t.Helper()
	client, eng := retryClient(t, ss, cfg, opts)
	if _, err := client.UnaryCall(context.Background(), &testgrpc.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	for _, s := range ss {
		s.calls.Store(0)
	}
	return client, eng
}

// A call whose endpoint does not answer within the hedge delay is hedged to
// another endpoint; the hedge's answer wins and the slow attempt is
// cancelled (its server sees its call end).
func TestGRPCHedgeToAnotherEndpoint(t *testing.T) {
	ss := startRetryServers(t, 5)
	client, eng := hedgeClient(t, ss,
		`{"algorithm":"ring_hash","retry":{"maxAttempts":2,"hedge":{"delay":"20ms","maxExtra":1}}}`,
		grpcpolicy.RetryOptions{IdempotentMethods: []string{unaryMethod}})
	slow := ss[3]
	slow.mode.Store(answerHang)
	ctx := balancer.WithAffinityKey(context.Background(), keyFor(t, eng, slow.addr))
	const n = 20
	for i := range n {
		start := time.Now()
		if _, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{}); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if el := time.Since(start); el > 5*time.Second {
			t.Fatalf("call %d took %v: not hedged", i, el)
		}
	}
	eventually(t, "every slow attempt to be cancelled", 5*time.Second, func() bool { return slow.canceled.Load() == n })
	if got := totalCalls(ss); got != 2*n {
		t.Errorf("servers saw %d calls, want %d (each call and its hedge)", got, 2*n)
	}
}

// A call that is not idempotent is never hedged.
func TestGRPCHedgeOnlyIdempotent(t *testing.T) {
	ss := startRetryServers(t, 3)
	client, eng := hedgeClient(t, ss,
		`{"algorithm":"ring_hash","retry":{"maxAttempts":2,"perTryTimeout":"200ms","retryOn":[],"hedge":{"delay":"10ms"}}}`,
		grpcpolicy.RetryOptions{})
	slow := ss[0]
	slow.mode.Store(answerHang)
	ctx := balancer.WithAffinityKey(context.Background(), keyFor(t, eng, slow.addr))
	_, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("err = %v, want the per-try timeout's DEADLINE_EXCEEDED", err)
	}
	if got := totalCalls(ss); got != 1 {
		t.Fatalf("servers saw %d calls, want 1: a call that is not idempotent is not hedged", got)
	}
}

// Hedges draw on the retry budget: with every endpoint slower than the hedge
// delay, the hedges stay within ratio × calls + minPerSecond × (T + window).
func TestGRPCHedgesWithinBudget(t *testing.T) {
	ss := startRetryServers(t, 3)
	client, _ := hedgeClient(t, ss,
		`{"retry":{"maxAttempts":4,"budget":{"ratio":0.1,"minPerSecond":1,"window":"1s"},"hedge":{"delay":"1ms","maxExtra":3}}}`,
		grpcpolicy.RetryOptions{IdempotentMethods: []string{unaryMethod}})
	for _, s := range ss {
		s.mode.Store(answerSlow)
	}
	const n = 200
	start := time.Now()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				if _, err := client.UnaryCall(context.Background(), &testgrpc.SimpleRequest{}); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	hedges := totalCalls(ss) - n
	bound := int64(0.1*n + 1*(secs+1) + 1)
	t.Logf("%d calls, all slower than the hedge delay: %d hedges in %.1fs (bound %d; %d with maxExtra and no budget)", n, hedges, secs, bound, 3*n)
	if hedges > bound {
		t.Fatalf("%d hedges, above the budget's bound %d", hedges, bound)
	}
	if hedges == 0 {
		t.Fatal("no hedge was sent")
	}
}

// A percentile hedge delay: no hedge until the channel has latencies for it
// (100), then a call stuck on the slow endpoint is hedged at the channel's
// median and the slow attempt is cancelled.
func TestGRPCHedgePercentileDelay(t *testing.T) {
	ss := startRetryServers(t, 4)
	client, eng := hedgeClient(t, ss,
		`{"algorithm":"ring_hash","retry":{"maxAttempts":2,"hedge":{"delay":"p50"}}}`,
		grpcpolicy.RetryOptions{IdempotentMethods: []string{unaryMethod}})
	slow := ss[1]
	slow.mode.Store(answerHang)
	slowCtx := balancer.WithAffinityKey(context.Background(), keyFor(t, eng, slow.addr))
	fastKey := keyFor(t, eng, ss[0].addr)
	// Too few latencies yet: a call to the hung endpoint is not hedged.
	short, cancel := context.WithTimeout(slowCtx, 100*time.Millisecond)
	_, err := client.UnaryCall(short, &testgrpc.SimpleRequest{})
	cancel()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("err = %v, want DEADLINE_EXCEEDED: no hedge before the channel has latencies", err)
	}
	if got := totalCalls(ss); got != 1 {
		t.Fatalf("servers saw %d calls, want 1", got)
	}
	// 150 latencies, over more than the 100ms after which the channel's
	// percentile is recomputed.
	start := time.Now()
	for i := 0; i < 150 || time.Since(start) < 250*time.Millisecond; i++ {
		if _, err := client.UnaryCall(balancer.WithAffinityKey(context.Background(), fastKey), &testgrpc.SimpleRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		ctx, cancel := context.WithTimeout(slowCtx, 10*time.Second)
		_, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{})
		cancel()
		if err != nil {
			t.Fatalf("call %d: %v (not hedged)", i, err)
		}
	}
	// Each succeeded, so the hedge answered; the hung attempts were cancelled
	// (and maybe some hedges of the warm-up's slower calls that landed on the
	// hung endpoint: half the calls are above the median).
	eventually(t, "the slow attempts to be cancelled", 5*time.Second, func() bool { return slow.canceled.Load() >= 6 })
}
