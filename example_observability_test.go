package lodestar_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
)

// Metrics through OpenTelemetry: give the Transport a MeterProvider (here
// the SDK with a ManualReader; in production, one with an exporter, such as
// Prometheus or OTLP; without one, the global provider is used). The
// instruments are listed in the README's "Observability".
func ExampleOptions_meterProvider() {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	defer backend.Close()

	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer provider.Shutdown(context.Background())

	tr, err := lodestar.NewTransport(lodestar.Options{
		Services:      map[string]lodestar.Service{"users": {Target: "static:///" + backend.Listener.Addr().String()}},
		MeterProvider: provider,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer tr.Close()
	client := &http.Client{Transport: tr}
	for range 3 {
		resp, err := client.Get("http://users/")
		if err != nil {
			fmt.Println(err)
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}

	var rm metricdata.ResourceMetrics
	reader.Collect(context.Background(), &rm)
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch m.Name {
			case lodestar.MetricRequests, balancer.MetricAttempts:
				for _, p := range m.Data.(metricdata.Sum[int64]).DataPoints {
					svc, _ := p.Attributes.Value(attribute.Key(balancer.AttrService))
					oc, _ := p.Attributes.Value(attribute.Key(balancer.AttrOutcome))
					fmt.Printf("%s{service=%s, outcome=%s} %d\n", m.Name, svc.AsString(), oc.AsString(), p.Value)
				}
			case balancer.MetricAttemptDuration:
				for _, p := range m.Data.(metricdata.Histogram[float64]).DataPoints {
					fmt.Printf("%s: %d samples\n", m.Name, p.Count)
				}
			}
		}
	}
	// Unordered output:
	// lodestar.client.requests{service=users, outcome=success} 3
	// lodestar.client.attempts{service=users, outcome=success} 3
	// lodestar.client.attempt.duration: 3 samples
}
