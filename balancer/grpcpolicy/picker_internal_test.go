package grpcpolicy

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	grpcbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/resolver"
)

// readyPicker is a child picker that always hands out its (nil) SubConn.
type readyPicker struct{ err error }

func (p readyPicker) Pick(grpcbalancer.PickInfo) (grpcbalancer.PickResult, error) {
	return grpcbalancer.PickResult{}, p.err
}

// newTestPicker returns a picker over one endpoint whose child is READY.
func newTestPicker(t testing.TB, cfg balancer.Config) (*picker, *balancer.Endpoint, *endpointState) {
	t.Helper()
	eng, err := balancer.NewEngine(cfg, balancer.Options{Service: "unit"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	eng.Update([]resolver.Endpoint{{Address: "127.0.0.1:1"}})
	ep := eng.Endpoint("127.0.0.1:1")
	st := &endpointState{state: connectivity.Ready}
	st.picker.Store(&childPicker{readyPicker{}})
	ep.Attach(st)
	return &picker{eng: eng, classify: DefaultClassifier}, ep, st
}

func pickDone(t testing.TB, pk *picker, di grpcbalancer.DoneInfo) {
	t.Helper()
	res, err := pk.Pick(grpcbalancer.PickInfo{Ctx: context.Background(), FullMethodName: "/svc/M"})
	if err != nil {
		t.Fatal(err)
	}
	res.Done(di)
}

func TestNeverAttemptedIsNotCounted(t *testing.T) {
	pk, ep, _ := newTestPicker(t, balancer.Config{})
	// grpc's re-pick when the picked transport was not ready: nil error, nothing sent.
	pickDone(t, pk, grpcbalancer.DoneInfo{})
	for c := outcome.Success; c < outcome.NotSent; c++ {
		if n := ep.Outcomes(c); n != 0 {
			t.Errorf("a never-attempted RPC counted as %v (%d)", c, n)
		}
	}
	if n := ep.Outcomes(outcome.NotSent); n != 1 {
		t.Errorf("Outcomes(NotSent) = %d, want 1", n)
	}
	if n := ep.InFlight(); n != 0 {
		t.Errorf("InFlight = %d after Done, want 0", n)
	}

	pickDone(t, pk, grpcbalancer.DoneInfo{BytesSent: true, BytesReceived: true})
	if n := ep.Outcomes(outcome.Success); n != 1 {
		t.Errorf("Outcomes(Success) = %d, want 1", n)
	}
}

func TestDefaultClassifier(t *testing.T) {
	bg := context.Background()
	canceled, cancel := context.WithCancel(bg)
	cancel()
	unavail := status.Error(codes.Unavailable, "x")
	for _, tc := range []struct {
		ctx  context.Context
		di   grpcbalancer.DoneInfo
		want outcome.Class
	}{
		{bg, grpcbalancer.DoneInfo{BytesSent: true}, outcome.Success},
		{bg, grpcbalancer.DoneInfo{Err: status.Error(codes.NotFound, ""), BytesSent: true, BytesReceived: true}, outcome.ClientError},
		{bg, grpcbalancer.DoneInfo{Err: status.Error(codes.ResourceExhausted, ""), BytesSent: true, BytesReceived: true}, outcome.Overloaded},
		{bg, grpcbalancer.DoneInfo{Err: status.Error(codes.Internal, ""), BytesSent: true, BytesReceived: true}, outcome.ServerError},
		{bg, grpcbalancer.DoneInfo{Err: unavail, BytesSent: true, BytesReceived: true}, outcome.GatewayError},
		{bg, grpcbalancer.DoneInfo{Err: unavail, BytesSent: true}, outcome.LocalError},
		{bg, grpcbalancer.DoneInfo{Err: unavail}, outcome.ConnectError},
		{bg, grpcbalancer.DoneInfo{Err: status.Error(codes.DeadlineExceeded, ""), BytesSent: true, BytesReceived: true}, outcome.Timeout},
		{canceled, grpcbalancer.DoneInfo{Err: status.Error(codes.DeadlineExceeded, ""), BytesSent: true}, outcome.Canceled},
		{bg, grpcbalancer.DoneInfo{Err: status.Error(codes.Code(99), ""), BytesSent: true, BytesReceived: true}, outcome.ServerError},
		{bg, grpcbalancer.DoneInfo{Err: errors.New("plain"), BytesSent: true}, outcome.ServerError}, // Unknown
		// A stream the server reset before answering (grpc's status text for
		// RST_STREAM): a reset before any response, whatever its code...
		{bg, grpcbalancer.DoneInfo{Err: status.Error(codes.Internal, "stream terminated by RST_STREAM with error code: INTERNAL_ERROR"), BytesSent: true}, outcome.LocalError},
		{bg, grpcbalancer.DoneInfo{Err: status.Error(codes.Canceled, "stream terminated by RST_STREAM with error code: CANCEL"), BytesSent: true}, outcome.LocalError},
		// ...but overload is overload, and an answer (something received) or
		// another INTERNAL keeps its class.
		{bg, grpcbalancer.DoneInfo{Err: status.Error(codes.ResourceExhausted, "stream terminated by RST_STREAM with error code: ENHANCE_YOUR_CALM"), BytesSent: true}, outcome.Overloaded},
		{bg, grpcbalancer.DoneInfo{Err: status.Error(codes.Internal, "stream terminated by RST_STREAM with error code: INTERNAL_ERROR"), BytesSent: true, BytesReceived: true}, outcome.ServerError},
		{bg, grpcbalancer.DoneInfo{Err: status.Error(codes.Internal, "grpc: error while marshaling"), BytesSent: true}, outcome.ServerError},
	} {
		if got := DefaultClassifier(tc.ctx, "/m", tc.di); got != tc.want {
			t.Errorf("%v (ctx err %v): %v, want %v", tc.di, tc.ctx.Err(), got, tc.want)
		}
	}
	c := ClassifyCodes(map[codes.Code]outcome.Class{codes.NotFound: outcome.ServerError, codes.Unavailable: outcome.Overloaded})
	if got := c(bg, "/m", grpcbalancer.DoneInfo{Err: status.Error(codes.NotFound, "")}); got != outcome.ServerError {
		t.Errorf("override NotFound: %v", got)
	}
	if got := c(bg, "/m", grpcbalancer.DoneInfo{Err: unavail}); got != outcome.Overloaded {
		t.Errorf("override Unavailable: %v", got)
	}
	if got := c(bg, "/m", grpcbalancer.DoneInfo{Err: status.Error(codes.Aborted, "")}); got != outcome.ClientError {
		t.Errorf("default kept for Aborted: %v", got)
	}
	if m := DefaultCodeClasses(); len(m) != 17 || m[codes.Unavailable] != outcome.GatewayError {
		t.Errorf("DefaultCodeClasses = %v", m)
	}
}

func TestChildNotReadyRepicks(t *testing.T) {
	pk, ep, st := newTestPicker(t, balancer.Config{})
	st.picker.Store(&childPicker{readyPicker{err: errors.New("connecting")}})
	if _, err := pk.Pick(grpcbalancer.PickInfo{Ctx: context.Background()}); err != grpcbalancer.ErrNoSubConnAvailable {
		t.Fatalf("pick with a child leaving READY: %v, want ErrNoSubConnAvailable", err)
	}
	if ep.InFlight() != 0 || ep.Outcomes(outcome.NotSent) != 1 {
		t.Errorf("abandoned pick left InFlight=%d NotSent=%d", ep.InFlight(), ep.Outcomes(outcome.NotSent))
	}
}

func TestPickErrors(t *testing.T) {
	eng, err := balancer.NewEngine(balancer.Config{}, balancer.Options{Service: "svc", InitialConditions: balancer.NotConnected})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	eng.Update([]resolver.Endpoint{{Address: "127.0.0.1:1"}}) // one endpoint, not connected
	info := grpcbalancer.PickInfo{Ctx: context.Background()}
	connecting := new(gate)
	connecting.waiting.Store(1)
	if _, err := (&picker{eng: eng, gate: connecting}).Pick(info); err != grpcbalancer.ErrNoSubConnAvailable {
		t.Errorf("connecting: %v, want ErrNoSubConnAvailable", err)
	}
	_, err = (&picker{eng: eng, gate: new(gate), connErr: errors.New("connection refused")}).Pick(info)
	if _, isStatus := status.FromError(err); isStatus || !errors.Is(err, balancer.ErrNoEndpoints) ||
		!strings.Contains(err.Error(), "connection refused") || !strings.Contains(err.Error(), "1 not connected") {
		t.Errorf("all down: %v, want a plain error wrapping ErrNoEndpoints (so grpc fails fast but waits for wait-for-ready)", err)
	}

	weng, _ := balancer.NewEngine(balancer.Config{WaitForEndpoints: 10e9}, balancer.Options{})
	defer weng.Close()
	weng.Update(nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = (&picker{eng: weng, gate: new(gate)}).Pick(grpcbalancer.PickInfo{Ctx: ctx})
	if status.Code(err) != codes.Canceled {
		t.Errorf("waiting pick with a canceled context: %v, want status CANCELLED", err)
	}
	eng.Close()
	if _, err := (&picker{eng: eng, gate: new(gate)}).Pick(info); err != grpcbalancer.ErrNoSubConnAvailable {
		t.Errorf("replaced engine: %v, want ErrNoSubConnAvailable", err)
	}
}

func TestAffinitySources(t *testing.T) {
	pk := &picker{mdKey: "x-shard", clientIP: true}
	in := peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 4711}})
	for _, tc := range []struct {
		name string
		ctx  context.Context
		key  string // "" for none
	}{
		{"none", context.Background(), ""},
		{"client IP", in, "192.0.2.7"},
		{"metadata over client IP", metadata.AppendToOutgoingContext(in, "x-shard", "a"), "a"},
		{"context over metadata", balancer.WithAffinityKey(metadata.AppendToOutgoingContext(in, "x-shard", "a"), "b"), "b"},
		{"empty metadata value skipped", metadata.AppendToOutgoingContext(in, "x-shard", ""), "192.0.2.7"},
	} {
		h, ok := pk.affinityHash(tc.ctx)
		if ok != (tc.key != "") || ok && h != balancer.HashKey(tc.key) {
			t.Errorf("%s: hash %x %v, want that of %q", tc.name, h, ok, tc.key)
		}
	}
	if _, ok := (&picker{}).affinityHash(in); ok {
		t.Error("client IP used without Affinity.ClientIP")
	}
}

func TestPickAndDoneAllocateNothing(t *testing.T) {
	pk, _, _ := newTestPicker(t, balancer.Config{})
	info := grpcbalancer.PickInfo{Ctx: context.Background(), FullMethodName: "/svc/M"}
	di := grpcbalancer.DoneInfo{BytesSent: true, BytesReceived: true}
	pickDone(t, pk, di) // warm the pool
	if n := testing.AllocsPerRun(1000, func() {
		res, err := pk.Pick(info)
		if err != nil {
			t.Fatal(err)
		}
		res.Done(di)
	}); n != 0 {
		t.Errorf("Pick+Done allocates %v times per RPC", n)
	}
}

func BenchmarkPickDone(b *testing.B) {
	pk, _, _ := newTestPicker(b, balancer.Config{})
	info := grpcbalancer.PickInfo{Ctx: context.Background(), FullMethodName: "/svc/M"}
	di := grpcbalancer.DoneInfo{BytesSent: true, BytesReceived: true}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			res, _ := pk.Pick(info)
			res.Done(di)
		}
	})
}
