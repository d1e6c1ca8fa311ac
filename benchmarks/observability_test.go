package benchmarks

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/resolver"
)

// meterProviders are the two sides of the observability benchmarks: the
// OpenTelemetry no-op provider (what an application that sets none gets,
// through the global delegate) and the real SDK with a ManualReader, read
// once per benchmark so the aggregation is live.
func meterProviders(b *testing.B) []struct {
	name string
	mp   metric.MeterProvider
	read func()
} {
	r := sdkmetric.NewManualReader()
	sdk := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	b.Cleanup(func() { sdk.Shutdown(context.Background()) })
	read := func() {
		var rm metricdata.ResourceMetrics
		if err := r.Collect(context.Background(), &rm); err != nil {
			b.Fatal(err)
		}
	}
	return []struct {
		name string
		mp   metric.MeterProvider
		read func()
	}{{"noop", noop.NewMeterProvider(), func() {}}, {"sdk", sdk, read}}
}

// BenchmarkObservability measures what metrics cost the request path, side
// by side in one run: a pick with its Done (round robin over 10 endpoints),
// and a request through the Transport over a no-op base, each with the no-op
// meter provider and with the real SDK (the duration histogram recorded in
// Done with the endpoint's precomputed attributes; every other instrument is
// observable and costs nothing here).
func BenchmarkObservability(b *testing.B) {
	quiet := slog.New(slog.DiscardHandler)
	for _, mp := range meterProviders(b) {
		e, err := balancer.NewEngine(balancer.Config{}, balancer.Options{Service: "svc", MeterProvider: mp.mp, Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { e.Close() })
		eps := make([]resolver.Endpoint, 10)
		for i := range eps {
			eps[i] = resolver.Endpoint{Address: pickAddr(i)}
		}
		e.Update(eps)
		o := outcome.Outcome{Class: outcome.Success, Latency: 2 * time.Millisecond}
		b.Run("pick+done/"+mp.name+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				ep, err := e.Pick(balancer.PickInfo{})
				if err != nil {
					b.Fatal(err)
				}
				e.Done(ep, o)
			}
			mp.read()
		})
		b.Run("pick+done/"+mp.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					ep, err := e.Pick(balancer.PickInfo{})
					if err != nil {
						b.Error(err)
						return
					}
					e.Done(ep, o)
				}
			})
			mp.read()
		})
	}
	addrs := []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"}
	for _, mp := range meterProviders(b) {
		feed, err := resolver.NewStaticAddrs(addrs...)
		if err != nil {
			b.Fatal(err)
		}
		tr, err := lodestar.NewTransport(lodestar.Options{
			Base:          noopTransport{},
			Services:      map[string]lodestar.Service{"svc": {Feed: feed}},
			MeterProvider: mp.mp,
			Logger:        quiet,
		})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { tr.Close() })
		req, _ := http.NewRequest("GET", "http://svc/v1/item", nil)
		b.Run("roundtrip/"+mp.name+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				roundTrip(b, tr, req)
			}
			mp.read()
		})
		b.Run("roundtrip/"+mp.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := tr.RoundTrip(req)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
			mp.read()
		})
	}
}

// BenchmarkMetricsCollect measures one collection (ManualReader.Collect) of
// an engine's instruments with 100 and 1,000 endpoints: off the request path,
// paid once per export interval.
func BenchmarkMetricsCollect(b *testing.B) {
	for _, n := range []int{100, 1000} {
		r := sdkmetric.NewManualReader()
		sdk := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
		b.Cleanup(func() { sdk.Shutdown(context.Background()) })
		e, err := balancer.NewEngine(balancer.Config{}, balancer.Options{Service: "svc", MeterProvider: sdk, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { e.Close() })
		eps := make([]resolver.Endpoint, n)
		for i := range eps {
			eps[i] = resolver.Endpoint{Address: pickAddr(i)}
		}
		e.Update(eps)
		for range 10 * n {
			ep, _ := e.Pick(balancer.PickInfo{})
			e.Done(ep, outcome.Outcome{Class: outcome.Success, Latency: time.Millisecond})
		}
		b.Run(map[int]string{100: "endpoints=100", 1000: "endpoints=1000"}[n], func(b *testing.B) {
			b.ReportAllocs()
			var rm metricdata.ResourceMetrics
			for b.Loop() {
				if err := r.Collect(context.Background(), &rm); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
