package lodestar_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/resolver"
)

// readMetrics collects r's metrics by name.
func readMetrics(t *testing.T, r *sdkmetric.ManualReader) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

// sumInt adds up the int64 points of m whose attributes include want.
func sumInt(m metricdata.Metrics, want ...attribute.KeyValue) int64 {
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

// histSamples counts m's histogram samples whose attributes include want.
func histSamples(m metricdata.Metrics, want ...attribute.KeyValue) uint64 {
	h, _ := m.Data.(metricdata.Histogram[float64])
	var n uint64
	for _, p := range h.DataPoints {
		ok := true
		for _, kv := range want {
			if v, has := p.Attributes.Value(kv.Key); !has || v != kv.Value {
				ok = false
			}
		}
		if ok {
			n += p.Count
		}
	}
	return n
}

func hostPort(t *testing.T, addr string) (attribute.KeyValue, attribute.KeyValue) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	return attribute.String(balancer.AttrServerAddress, host), attribute.Int(balancer.AttrServerPort, p)
}

// Metrics through the HTTP door, read by the OpenTelemetry SDK's
// ManualReader after real traffic to loopback servers:
//
//   - "api": three backends, one answering 503. Each 503 is retried once on
//     another endpoint, and after three in a row the outlier detector ejects
//     the bad one, so all 60 requests succeed: 60 requests (success), 63
//     attempts (3 gateway errors on the bad backend), 3 retries, 1 ejection.
//   - "down": one backend answering 503 and a retry budget that allows about
//     one retry a second: 10 requests (gateway_error), each wanting one
//     retry; the budget's allowed and refused retries (its own count, which
//     depends on how fast the requests went) add up to 10, at least one is
//     refused, and the metrics say what the budget says.
//   - "gone": its only endpoint paused: 5 requests with no endpoint.
func TestMetricsHTTPDoor(t *testing.T) {
	r := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	defer mp.Shutdown(context.Background())

	fs, eps := flakyFleet(t, 3)
	fs[1].status.Store(503)
	down := newFlaky(t, "down")
	down.status.Store(503)
	gone := newFlaky(t, "gone")
	mustConfig := func(js string) balancer.Config {
		cfg, err := balancer.ParseConfig([]byte(js))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	static := func(eps ...resolver.Endpoint) resolver.Feed {
		f, err := resolver.NewStatic(eps...)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	tr, err := lodestar.NewTransport(lodestar.Options{
		Services: map[string]lodestar.Service{
			"api": {Feed: static(eps...), Config: mustConfig(`{
				"outlierDetection": {"consecutiveFailures": 0, "consecutiveGatewayFailures": 3, "baseEjectionTime": "10m", "maxEjectionPercent": 50},
				"retry": {"maxAttempts": 2, "retryOn": ["gateway_error"], "backoff": {"base": "1ms", "max": "1ms"}}}`)},
			"down": {Feed: static(resolver.Endpoint{Address: down.addr()}), Config: mustConfig(`{
				"retry": {"maxAttempts": 2, "retryOn": ["gateway_error"], "backoff": {"base": "1ms", "max": "1ms"},
				          "budget": {"ratio": 0, "minPerSecond": 1, "window": "1s"}}}`)},
			"gone": {Feed: static(resolver.Endpoint{Address: gone.addr()})},
		},
		MeterProvider: mp,
		Rand:          seeded(11),
		Logger:        slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	tr.Engine("gone").Pause(gone.addr(), time.Minute, "test") // paused: out of picks, panic or not

	send := func(svc string, n int) (ok, failed int) {
		for range n {
			resp, err := tr.RoundTrip(mustRequest(t, "http://"+svc+"/"))
			if err != nil {
				failed++
				continue
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				ok++
			} else {
				failed++
			}
		}
		return ok, failed
	}
	if ok, _ := send("api", 60); ok != 60 {
		t.Fatalf("api: %d of 60 requests succeeded", ok)
	}
	if _, failed := send("down", 10); failed != 10 {
		t.Fatalf("down: %d of 10 failed", failed)
	}
	if _, failed := send("gone", 5); failed != 5 {
		t.Fatalf("gone: %d of 5 failed", failed)
	}

	m := readMetrics(t, r)
	svc := func(s string) attribute.KeyValue { return attribute.String(balancer.AttrService, s) }
	oc := func(s string) attribute.KeyValue { return attribute.String(balancer.AttrOutcome, s) }
	http := attribute.String(balancer.AttrDoor, "http")
	badHost, badPort := hostPort(t, fs[1].addr())
	for _, c := range []struct {
		what      string
		got, want int64
	}{
		{"api requests, success", sumInt(m[lodestar.MetricRequests], svc("api"), http, oc("success")), 60},
		{"api requests", sumInt(m[lodestar.MetricRequests], svc("api")), 60},
		{"api attempts, success", sumInt(m[balancer.MetricAttempts], svc("api"), oc("success")), 60},
		{"api attempts on the bad backend, gateway_error", sumInt(m[balancer.MetricAttempts], svc("api"), badHost, badPort, oc("gateway_error")), 3},
		{"api attempts on the bad backend", sumInt(m[balancer.MetricAttempts], svc("api"), badHost, badPort), 3},
		{"api retries", sumInt(m[lodestar.MetricRetries], svc("api")), 3},
		{"api retries refused", sumInt(m[lodestar.MetricRetryBudgetExhausted], svc("api")), 0},
		{"api ejections", sumInt(m[balancer.MetricEjections], svc("api"), attribute.String(balancer.AttrDetector, "consecutive_gateway_failures")), 1},
		{"api endpoints ejected", sumInt(m[balancer.MetricEndpoints], svc("api"), attribute.String(balancer.AttrEndpointState, "ejected")), 1},
		{"api endpoints eligible", sumInt(m[balancer.MetricEndpoints], svc("api"), attribute.String(balancer.AttrEndpointState, "eligible")), 2},
		{"api in flight", sumInt(m[balancer.MetricActiveRequests], svc("api")), 0},
		{"down requests, gateway_error", sumInt(m[lodestar.MetricRequests], svc("down"), oc("gateway_error")), 10},
		{"down retries", sumInt(m[lodestar.MetricRetries], svc("down")), int64(tr.RetryBudget("down").Withdrawn())},
		{"down retries refused", sumInt(m[lodestar.MetricRetryBudgetExhausted], svc("down")), int64(tr.RetryBudget("down").Refused())},
		{"down retries allowed and refused", sumInt(m[lodestar.MetricRetries], svc("down")) + sumInt(m[lodestar.MetricRetryBudgetExhausted], svc("down")), 10},
		{"gone requests, no endpoint", sumInt(m[lodestar.MetricRequests], svc("gone"), oc(lodestar.OutcomeNoEndpoint)), 5},
		{"gone endpoints paused", sumInt(m[balancer.MetricEndpoints], svc("gone"), attribute.String(balancer.AttrEndpointState, "paused")), 1},
		{"discovery updates", sumInt(m[balancer.MetricDiscoveryUpdates], http), 3},
		{"hedges", sumInt(m[lodestar.MetricHedges]), 0},
	} {
		if c.got != c.want {
			t.Errorf("%s: %d, want %d", c.what, c.got, c.want)
		}
	}
	if n := histSamples(m[balancer.MetricAttemptDuration], svc("api")); n != 63 {
		t.Errorf("api attempt durations: %d samples, want 63", n)
	}
	if sumInt(m[lodestar.MetricRetryBudgetExhausted], svc("down")) < 1 {
		t.Error("down: the budget refused no retry")
	}
	if got := tr.RetryBudget("api").Withdrawn(); got != 3 {
		t.Errorf("the budget says %d retries, want 3", got)
	}
}

func mustRequest(t *testing.T, url string) *http.Request {
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}
