package grpcpolicy_test

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc"
	grpcbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/grpcpolicy"
)

// failingServer is a real gRPC server on 127.0.0.1 whose EmptyCall fails
// with UNAVAILABLE while fail is set.
type failingServer struct {
	testgrpc.UnimplementedTestServiceServer
	fail atomic.Bool
}

func (s *failingServer) EmptyCall(context.Context, *testgrpc.Empty) (*testgrpc.Empty, error) {
	if s.fail.Load() {
		return nil, status.Error(codes.Unavailable, "down for the test")
	}
	return &testgrpc.Empty{}, nil
}

func startFailing(t *testing.T) (*failingServer, string) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &failingServer{}
	srv := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(srv, s)
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return s, lis.Addr().String()
}

// Metrics through the gRPC door, read by the OpenTelemetry SDK's
// ManualReader: a channel with the policy registered with a MeterProvider,
// over three real servers, one failing with UNAVAILABLE. The outlier
// detector ejects it after three gateway errors in a row, so of 60 RPCs
// exactly 3 fail, and the instruments say so: attempts by outcome and
// endpoint, one ejection by its detector, endpoints by state, nothing in
// flight, a duration sample per attempt.
func TestMetricsGRPCDoor(t *testing.T) {
	r := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	defer mp.Shutdown(context.Background())
	const name = "lodestar_metrics_test"
	grpcbalancer.Register(grpcpolicy.NewBuilder(grpcpolicy.Options{Name: name, MeterProvider: mp}))

	var addrs [3]string
	var bad *failingServer
	for i := range addrs {
		s, a := startFailing(t)
		addrs[i] = a
		if i == 1 {
			bad = s
		}
	}
	bad.fail.Store(true)
	target := fmt.Sprintf("static:///%s,%s,%s", addrs[0], addrs[1], addrs[2])
	cc := dial(t, target, serviceConfig(name, `{"outlierDetection": {"consecutiveFailures": 0,
		"consecutiveGatewayFailures": 3, "baseEjectionTime": "10m", "maxEjectionPercent": 50}}`))
	client := testgrpc.NewTestServiceClient(cc)
	failed := 0
	for range 60 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := client.EmptyCall(ctx, &testgrpc.Empty{}, grpc.WaitForReady(true))
		cancel()
		if status.Code(err) == codes.Unavailable {
			failed++
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if failed != 3 {
		t.Fatalf("%d of 60 RPCs failed, want 3 (the bad server's, until its ejection)", failed)
	}

	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	m := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, x := range sm.Metrics {
			m[x.Name] = x
		}
	}
	host, portS, _ := net.SplitHostPort(addrs[1])
	port, _ := strconv.Atoi(portS)
	grpcDoor := attribute.String(balancer.AttrDoor, "grpc")
	oc := func(s string) attribute.KeyValue { return attribute.String(balancer.AttrOutcome, s) }
	badEP := []attribute.KeyValue{attribute.String(balancer.AttrServerAddress, host), attribute.Int(balancer.AttrServerPort, port)}
	for _, c := range []struct {
		what      string
		got, want int64
	}{
		{"attempts, success", sum(m[balancer.MetricAttempts], grpcDoor, oc("success")), 57},
		{"attempts on the bad server, gateway_error", sum(m[balancer.MetricAttempts], append(badEP, grpcDoor, oc("gateway_error"))...), 3},
		{"attempts on the bad server, success", sum(m[balancer.MetricAttempts], append(badEP, oc("success"))...), 0},
		{"ejections", sum(m[balancer.MetricEjections], grpcDoor, attribute.String(balancer.AttrDetector, "consecutive_gateway_failures")), 1},
		{"endpoints ejected", sum(m[balancer.MetricEndpoints], grpcDoor, attribute.String(balancer.AttrEndpointState, "ejected")), 1},
		{"endpoints eligible", sum(m[balancer.MetricEndpoints], grpcDoor, attribute.String(balancer.AttrEndpointState, "eligible")), 2},
		{"in flight", sum(m[balancer.MetricActiveRequests], grpcDoor), 0},
		{"panic", sum(m[balancer.MetricPanic], grpcDoor), 0},
	} {
		if c.got != c.want {
			t.Errorf("%s: %d, want %d", c.what, c.got, c.want)
		}
	}
	h, _ := m[balancer.MetricAttemptDuration].Data.(metricdata.Histogram[float64])
	var samples uint64
	for _, p := range h.DataPoints {
		// The histogram leaves the door out; the channel's service is its target's endpoint.
		if v, ok := p.Attributes.Value(balancer.AttrService); ok && v.AsString() == fmt.Sprintf("%s,%s,%s", addrs[0], addrs[1], addrs[2]) {
			if o, _ := p.Attributes.Value(balancer.AttrOutcome); o.AsString() != "not_sent" {
				samples += p.Count
			}
		}
	}
	if samples != 60 {
		t.Errorf("attempt durations: %d samples, want 60", samples)
	}
}

func sum(m metricdata.Metrics, want ...attribute.KeyValue) int64 {
	var pts []metricdata.DataPoint[int64]
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		pts = d.DataPoints
	case metricdata.Gauge[int64]:
		pts = d.DataPoints
	}
	var n int64
	for _, p := range pts {
		ok := true
		for _, kv := range want {
			if v, has := p.Attributes.Value(kv.Key); !has || v != kv.Value {
				ok = false
			}
		}
		if ok {
			n += p.Value
		}
	}
	return n
}

// Retries through the gRPC door's interceptors are counted per channel: with
// one of three servers failing until its ejection and retries on, 60 calls
// all succeed, its 3 failures are retried elsewhere (lodestar.client.retries
// = 3), and nothing was refused or hedged.
func TestMetricsGRPCDoorRetries(t *testing.T) {
	r := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	defer mp.Shutdown(context.Background())
	const name = "lodestar_metrics_retry_test"
	var engMu sync.Mutex
	var eng *balancer.Engine
	grpcbalancer.Register(grpcpolicy.NewBuilder(grpcpolicy.Options{Name: name, MeterProvider: mp,
		OnEngine: func(_ string, e *balancer.Engine) { engMu.Lock(); eng = e; engMu.Unlock() }}))

	var addrs [3]string
	var bad *failingServer
	for i := range addrs {
		s, a := startFailing(t)
		addrs[i] = a
		if i == 1 {
			bad = s
		}
	}
	bad.fail.Store(true)
	retries, err := grpcpolicy.NewRetries(grpcpolicy.RetryOptions{IdempotentMethods: []string{"/grpc.testing.TestService/EmptyCall"}})
	if err != nil {
		t.Fatal(err)
	}
	target := fmt.Sprintf("static:///%s,%s,%s", addrs[0], addrs[1], addrs[2])
	cc := dial(t, target, serviceConfig(name, `{"outlierDetection": {"consecutiveFailures": 0,
		"consecutiveGatewayFailures": 3, "baseEjectionTime": "10m", "maxEjectionPercent": 50},
		"retry": {"maxAttempts": 2, "backoff": {"base": "1ms", "max": "2ms"}}}`), retries.DialOptions()...)
	client := testgrpc.NewTestServiceClient(cc)
	// All three connected first: with the failing server the only one
	// ready, a retry has nowhere else to go (seen on a loaded machine).
	cc.Connect()
	eventually(t, "3 eligible endpoints", 10*time.Second, func() bool {
		engMu.Lock()
		defer engMu.Unlock()
		return eng != nil && len(eng.Eligible()) == 3
	})
	for i := range 60 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := client.EmptyCall(ctx, &testgrpc.Empty{}, grpc.WaitForReady(true))
		cancel()
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	m := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, x := range sm.Metrics {
			m[x.Name] = x
		}
	}
	grpcDoor := attribute.String(balancer.AttrDoor, "grpc")
	for _, c := range []struct {
		what      string
		got, want int64
	}{
		{"retries", sum(m[balancer.MetricRetries], grpcDoor), 3},
		{"retries refused", sum(m[balancer.MetricRetryBudgetExhausted], grpcDoor), 0},
		{"hedges", sum(m[balancer.MetricHedges], grpcDoor), 0},
		{"attempts, success", sum(m[balancer.MetricAttempts], grpcDoor, attribute.String(balancer.AttrOutcome, "success")), 60},
		{"attempts, gateway_error", sum(m[balancer.MetricAttempts], grpcDoor, attribute.String(balancer.AttrOutcome, "gateway_error")), 3},
	} {
		if c.got != c.want {
			t.Errorf("%s: %d, want %d", c.what, c.got, c.want)
		}
	}
}
