package grpcpolicy

import (
	"context"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/lodestar-go/lodestar/balancer"
)

// retryMetrics are a channel's retry instruments (balancer.MetricRetries,
// MetricRetryBudgetExhausted, MetricHedges, with lodestar.door "grpc"): they
// read the budget and hedge counters of the channel's retry section when the
// meter collects. A config change gives the channel a new section (a new
// budget); what the old one counted is kept in retired, so the counters never
// go back.
type retryMetrics struct {
	cur     atomic.Pointer[channelRetry]
	retired [3]atomic.Int64 // retries, refused, hedges of the sections before cur
	reg     metric.Registration
}

// setRetry makes ch (nil for none) the channel's current retry section.
func (m *retryMetrics) setRetry(ch *channelRetry) {
	if old := m.cur.Swap(ch); old != nil && old != ch {
		m.retired[0].Add(int64(old.budget.Withdrawn()))
		m.retired[1].Add(int64(old.budget.Refused()))
		m.retired[2].Add(old.hedges.Load())
	}
}

// counts returns the channel's retries, refusals and hedges so far, and
// whether it ever had a retry section.
func (m *retryMetrics) counts() (retries, refused, hedges int64, ever bool) {
	retries, refused, hedges = m.retired[0].Load(), m.retired[1].Load(), m.retired[2].Load()
	if ch := m.cur.Load(); ch != nil {
		retries += int64(ch.budget.Withdrawn())
		refused += int64(ch.budget.Refused())
		hedges += ch.hedges.Load()
		ever = true
	}
	return retries, refused, hedges, ever || retries+refused+hedges > 0
}

// start registers the instruments for the channel to service with mp (nil:
// the global provider). A provider that refuses them leaves the channel
// without them; the engine's own instruments say so in its log.
func (m *retryMetrics) start(mp metric.MeterProvider, service string) {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	meter := mp.Meter(balancer.MeterName)
	ri, err := balancer.NewRetryInstruments(meter)
	if err != nil {
		return
	}
	retries, refused, hedges := ri.Retries, ri.Refused, ri.Hedges
	attrs := metric.WithAttributeSet(attribute.NewSet(
		attribute.String(balancer.AttrService, service), attribute.String(balancer.AttrDoor, "grpc")))
	reg, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		r, f, h, ever := m.counts()
		if ever {
			o.ObserveInt64(retries, r, attrs)
			o.ObserveInt64(refused, f, attrs)
			o.ObserveInt64(hedges, h, attrs)
		}
		return nil
	}, retries, refused, hedges)
	if err == nil {
		m.reg = reg
	}
}

// stop unregisters the instruments.
func (m *retryMetrics) stop() {
	if m.reg != nil {
		m.reg.Unregister()
	}
}
