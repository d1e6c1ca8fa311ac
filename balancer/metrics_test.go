package balancer

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/lodestar-go/lodestar/balancer/outcome"
)

// newSDK returns a real OpenTelemetry SDK meter provider whose figures the
// test reads with the returned ManualReader.
func newSDK(t testing.TB) (*sdkmetric.MeterProvider, *sdkmetric.ManualReader) {
	t.Helper()
	r := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	t.Cleanup(func() { mp.Shutdown(context.Background()) })
	return mp, r
}

// collect reads every metric of r, by name.
func collect(t testing.TB, r *sdkmetric.ManualReader) map[string]metricdata.Metrics {
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

// sumWhere adds up the int64 points (sum or gauge) of m whose attributes
// include every pair of want.
func sumWhere(m metricdata.Metrics, want ...attribute.KeyValue) int64 {
	var pts []metricdata.DataPoint[int64]
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		pts = d.DataPoints
	case metricdata.Gauge[int64]:
		pts = d.DataPoints
	}
	var n int64
	for _, p := range pts {
		if hasAll(p.Attributes, want) {
			n += p.Value
		}
	}
	return n
}

func hasAll(set attribute.Set, want []attribute.KeyValue) bool {
	for _, kv := range want {
		if v, ok := set.Value(kv.Key); !ok || v != kv.Value {
			return false
		}
	}
	return true
}

// histCount returns the number of samples in m's points whose attributes
// include want.
func histCount(m metricdata.Metrics, want ...attribute.KeyValue) uint64 {
	h, ok := m.Data.(metricdata.Histogram[float64])
	if !ok {
		return 0
	}
	var n uint64
	for _, p := range h.DataPoints {
		if hasAll(p.Attributes, want) {
			n += p.Count
		}
	}
	return n
}

var quiet = slog.New(slog.DiscardHandler)

// With a real SDK meter provider installed, a pick and its Done still
// allocate nothing: the duration histogram is recorded with the endpoint's
// attribute set, built on its first outcome of the class and kept.
func TestDoneRecordsWithoutAllocating(t *testing.T) {
	mp, r := newSDK(t)
	for _, omit := range []bool{false, true} {
		e, err := NewEngine(Config{}, Options{Service: "svc", Door: "test", MeterProvider: mp, MetricsOmitEndpoint: omit, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		e.Update(resolverEndpoints(10, nil))
		o := outcome.Outcome{Class: outcome.Success, Latency: 3 * time.Millisecond}
		allocs := testing.AllocsPerRun(1000, func() {
			ep, err := e.Pick(PickInfo{})
			if err != nil {
				t.Fatal(err)
			}
			e.Done(ep, o)
		})
		if allocs != 0 {
			t.Errorf("omitEndpoint %v: %.1f allocations per pick and Done with the SDK installed", omit, allocs)
		}
		got := collect(t, r)
		if n := histCount(got[MetricAttemptDuration], attribute.String(AttrService, "svc")); n < 1000 {
			t.Errorf("omitEndpoint %v: the duration histogram holds %d samples, want at least 1000", omit, n)
		}
		e.Close()
	}
}

// An endpoint's attribute sets are built on first use, one class at a time,
// and kept: an endpoint without traffic holds none, and goroutines racing to
// build one all get the same.
func TestEndpointMetricSetsBuiltOnFirstUse(t *testing.T) {
	mp, _ := newSDK(t)
	e, err := NewEngine(Config{}, Options{Service: "svc", Door: "test", MeterProvider: mp, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	e.Update(resolverEndpoints(3, nil))
	built := func(ep *Endpoint) (classes []outcome.Class) {
		for c := range nClasses {
			if ep.metrics().sets[c].Load() != nil {
				classes = append(classes, outcome.Class(c))
			}
		}
		return classes
	}
	for i := range 3 {
		if got := built(e.Endpoint(addr(i))); len(got) != 0 || e.Endpoint(addr(i)).metrics().active.Load() != nil {
			t.Fatalf("endpoint %d holds sets %v before any traffic", i, got)
		}
	}
	ep := e.Endpoint(addr(1))
	ep.Acquire()
	e.Done(ep, outcome.Outcome{Class: outcome.GatewayError, Latency: time.Millisecond})
	if got := built(ep); len(got) != 1 || got[0] != outcome.GatewayError {
		t.Fatalf("after one gateway error the endpoint holds sets %v, want only gateway_error's", got)
	}
	if got := built(e.Endpoint(addr(0))); len(got) != 0 {
		t.Fatalf("another endpoint's Done built sets %v on endpoint 0", got)
	}
	em := e.Endpoint(addr(2)).metrics()
	var wg sync.WaitGroup
	got := make([]*classSets, 8)
	for i := range got {
		wg.Go(func() { got[i] = em.of(outcome.Timeout) })
	}
	wg.Wait()
	for i, cs := range got {
		if cs != got[0] || cs != em.sets[outcome.Timeout].Load() {
			t.Fatalf("goroutine %d got set %p, goroutine 0 %p, kept %p", i, cs, got[0], em.sets[outcome.Timeout].Load())
		}
	}
}

// The engine's instruments read what it keeps: attempts by outcome class and
// endpoint, in flight, endpoints by state, panic, ejections by detector and
// their ends, discovery answers and errors. A closed engine reports nothing
// more.
func TestEngineMetrics(t *testing.T) {
	mp, r := newSDK(t)
	clk := newFakeClock()
	e, err := NewEngine(Config{}, Options{Service: "svc", Door: "test", MeterProvider: mp, Now: clk.Now, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	eps := resolverEndpoints(4, nil)
	e.Update(eps)
	a0 := e.Endpoint(eps[0].Address)
	for range 7 {
		e.Done(mustPick(t, e, a0), outcome.Outcome{Class: outcome.Success, Latency: time.Millisecond})
	}
	for range 3 {
		e.Done(mustPick(t, e, a0), outcome.Outcome{Class: outcome.GatewayError, Latency: time.Millisecond})
	}
	held := mustPick(t, e, nil)
	e.SetConditionWhy(eps[1].Address, Ejected, true, ejectWhy("consecutive_gateway_failures", 30*time.Second))
	e.SetConditionWhy(eps[2].Address, Ejected, true, ejectWhy("latency", 30*time.Second))
	e.SetConditionWhy(eps[2].Address, Ejected, false, unejectExpired)
	e.SetConditionWhy(eps[3].Address, Unhealthy, true, "health check: status 503")
	e.ReportError(errors.New("feed down"))
	e.Update(eps)

	got := collect(t, r)
	host, port := attribute.String(AttrServerAddress, "10.0.0.0"), attribute.Int(AttrServerPort, 8080)
	svc := attribute.String(AttrService, "svc")
	for _, c := range []struct {
		name string
		got  int64
		want int64
	}{
		{"attempts success on ep0", sumWhere(got[MetricAttempts], svc, host, port, attribute.String(AttrOutcome, "success")), 7},
		{"attempts gateway_error on ep0", sumWhere(got[MetricAttempts], svc, host, attribute.String(AttrOutcome, "gateway_error")), 3},
		{"successful attempts on every endpoint", sumWhere(got[MetricAttempts], svc, attribute.String(AttrOutcome, "success")), 7},
		{"in flight", sumWhere(got[MetricActiveRequests], svc), 1},
		{"endpoints ejected", sumWhere(got[MetricEndpoints], attribute.String(AttrEndpointState, "ejected")), 1},
		{"endpoints unhealthy", sumWhere(got[MetricEndpoints], attribute.String(AttrEndpointState, "unhealthy")), 1},
		{"endpoints eligible", sumWhere(got[MetricEndpoints], attribute.String(AttrEndpointState, "eligible")), 2},
		{"panic", sumWhere(got[MetricPanic], svc), 0},
		{"ejections by consecutive_gateway_failures", sumWhere(got[MetricEjections], attribute.String(AttrDetector, "consecutive_gateway_failures")), 1},
		{"ejections by latency", sumWhere(got[MetricEjections], attribute.String(AttrDetector, "latency")), 1},
		{"unejections expired", sumWhere(got[MetricUnejections], attribute.String(AttrReason, "expired")), 1},
		{"discovery updates", sumWhere(got[MetricDiscoveryUpdates], svc), 2},
		{"discovery errors", sumWhere(got[MetricDiscoveryErrors], svc), 1},
	} {
		if c.got != c.want {
			t.Errorf("%s: %d, want %d", c.name, c.got, c.want)
		}
	}
	if n := histCount(got[MetricAttemptDuration], host, attribute.String(AttrOutcome, "gateway_error")); n != 3 {
		t.Errorf("duration samples of ep0's gateway errors: %d, want 3", n)
	}
	e.Done(held, outcome.Outcome{Class: outcome.Success})
	e.Close()
	got = collect(t, r)
	if n := sumWhere(got[MetricActiveRequests], svc); n != 0 {
		t.Errorf("a closed engine still reports %d in flight", n)
	}
}

// With MetricsOmitEndpoint, no attribute names an endpoint and the counts
// are the service's totals.
func TestMetricsOmitEndpoint(t *testing.T) {
	mp, r := newSDK(t)
	e, err := NewEngine(Config{}, Options{Service: "svc", MeterProvider: mp, MetricsOmitEndpoint: true, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	e.Update(resolverEndpoints(5, nil))
	for range 20 {
		e.Done(mustPick(t, e, nil), outcome.Outcome{Class: outcome.Success, Latency: time.Millisecond})
	}
	got := collect(t, r)
	for name, m := range got {
		var sets []attribute.Set
		switch d := m.Data.(type) {
		case metricdata.Sum[int64]:
			for _, p := range d.DataPoints {
				sets = append(sets, p.Attributes)
			}
		case metricdata.Histogram[float64]:
			for _, p := range d.DataPoints {
				sets = append(sets, p.Attributes)
			}
		}
		for _, s := range sets {
			if _, ok := s.Value(AttrServerAddress); ok {
				t.Errorf("%s has %s with endpoints omitted", name, AttrServerAddress)
			}
		}
	}
	if n := sumWhere(got[MetricAttempts], attribute.String(AttrOutcome, "success")); n != 20 {
		t.Errorf("attempts: %d, want 20", n)
	}
}

// The detector and reason attributes come from the Whys the engine writes.
func TestEjectionWhyParsing(t *testing.T) {
	for _, c := range []struct{ why, want string }{
		{ejectWhy("success_rate", time.Second), "success_rate"},
		{ejectWhy("consecutive_failures", time.Minute), "consecutive_failures"},
		{"manual", "other"},
	} {
		if got := ejectionDetector(c.why); got != c.want {
			t.Errorf("ejectionDetector(%q) = %q, want %q", c.why, got, c.want)
		}
	}
	if got := unejectionReason(unejectExpired); got != "expired" {
		t.Errorf("expiry: %q", got)
	}
	if got := breakerTo("circuit breaker half-open → closed"); got != "closed" {
		t.Errorf("breakerTo: %q", got)
	}
	if !strings.HasPrefix(ejectWhy("latency", time.Second), ejectPrefix) {
		t.Error("ejectWhy does not start with ejectPrefix")
	}
}

// mustPick picks until it gets want (nil: any endpoint).
func mustPick(t *testing.T, e *Engine, want *Endpoint) *Endpoint {
	t.Helper()
	for range 1000 {
		ep, err := e.Pick(PickInfo{})
		if err != nil {
			t.Fatal(err)
		}
		if want == nil || ep == want {
			return ep
		}
		e.Done(ep, outcome.Outcome{Class: outcome.NotSent})
	}
	t.Fatalf("never picked %s", want.Address())
	return nil
}
