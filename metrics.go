package lodestar

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
)

// The HTTP door's own OpenTelemetry instruments, beside each service's
// engine's (see balancer.MetricAttempts and the others): requests, retries,
// retry budget refusals and hedges, per service. All are observable: the
// request path adds one to an atomic counter, and the meter reads the
// counters (and the retry budget's, retry.Budget.Withdrawn and Refused) when
// it collects.
const (
	// MetricRequests counts requests by the outcome class of the answer the
	// caller got (the last attempt's, classified at its response headers),
	// with lodestar.outcome "no_endpoint" when no endpoint could be picked.
	MetricRequests = "lodestar.client.requests"
	// MetricRetries counts retries sent (the retry budget's withdrawals):
	// balancer.MetricRetries.
	MetricRetries = balancer.MetricRetries
	// MetricRetryBudgetExhausted counts retries the budget refused:
	// balancer.MetricRetryBudgetExhausted.
	MetricRetryBudgetExhausted = balancer.MetricRetryBudgetExhausted
	// MetricHedges counts hedged attempts sent: balancer.MetricHedges.
	MetricHedges = balancer.MetricHedges
	// OutcomeNoEndpoint is the lodestar.outcome of a request that got no
	// endpoint: none eligible, discovery pending, all at their limit, closed.
	OutcomeNoEndpoint = "no_endpoint"
)

const nClasses = int(outcome.NotSent) + 1

// serviceObs is a service's request counters.
type serviceObs struct {
	// requests counts answers by class; [nClasses] is OutcomeNoEndpoint.
	requests [nClasses + 1]atomic.Uint64
	// hedges counts hedged attempts: the hedging code adds one per hedge it
	// sends (s.obs.hedges.Add(1)); MetricHedges reads it.
	hedges atomic.Uint64
}

// countAnswer counts a request's answer: resp, or err.
func (s *service) countAnswer(ctx context.Context, resp *http.Response, err error) {
	switch {
	case err == nil:
		s.obs.requests[s.classify(ctx, resp, nil)%outcome.Class(nClasses)].Add(1)
	case errors.Is(err, balancer.ErrNoEndpoints), errors.Is(err, balancer.ErrDiscoveryPending),
		errors.Is(err, balancer.ErrOverloaded), errors.Is(err, balancer.ErrClosed):
		s.obs.requests[nClasses].Add(1)
	default:
		s.obs.requests[s.classify(ctx, nil, err)%outcome.Class(nClasses)].Add(1)
	}
}

// transportMetrics is a Transport's registration with its meter.
type transportMetrics struct {
	reg metric.Registration
}

// startMetrics registers the Transport's instruments; errors are logged and
// leave the Transport without them.
func (t *Transport) startMetrics(opts Options) {
	mp := opts.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	meter := mp.Meter(balancer.MeterName)
	requests, err1 := meter.Int64ObservableCounter(MetricRequests, metric.WithUnit("{request}"),
		metric.WithDescription("Requests through the HTTP door, by the outcome class of their answer."))
	ri, err2 := balancer.NewRetryInstruments(meter)
	retries, refused, hedges := ri.Retries, ri.Refused, ri.Hedges
	if err := errors.Join(err1, err2); err != nil {
		t.logger.Warn("lodestar: metrics off: the meter provider refused an instrument", "error", err)
		return
	}
	type svcAttrs struct {
		svc   *service
		base  metric.ObserveOption
		class [nClasses + 1]metric.ObserveOption
	}
	var all []svcAttrs
	for _, name := range t.names {
		s := t.lookup(name)
		base := []attribute.KeyValue{attribute.String(balancer.AttrService, s.name), attribute.String(balancer.AttrDoor, "http")}
		sa := svcAttrs{svc: s, base: metric.WithAttributeSet(attribute.NewSet(base...))}
		for c := range nClasses + 1 {
			name := OutcomeNoEndpoint
			if c < nClasses {
				name = outcome.Class(c).String()
			}
			sa.class[c] = metric.WithAttributeSet(attribute.NewSet(append(base[:2:2], attribute.String(balancer.AttrOutcome, name))...))
		}
		all = append(all, sa)
	}
	reg, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for _, sa := range all {
			for c := range sa.class {
				if n := sa.svc.obs.requests[c].Load(); n > 0 {
					o.ObserveInt64(requests, int64(n), sa.class[c])
				}
			}
			if b := sa.svc.budget; b != nil {
				o.ObserveInt64(retries, int64(b.Withdrawn()), sa.base)
				o.ObserveInt64(refused, int64(b.Refused()), sa.base)
			}
			o.ObserveInt64(hedges, int64(sa.svc.obs.hedges.Load()), sa.base)
		}
		return nil
	}, requests, retries, refused, hedges)
	if err != nil {
		t.logger.Warn("lodestar: metrics off: the meter provider refused the callback", "error", err)
		return
	}
	t.metrics = &transportMetrics{reg: reg}
}

// stopMetrics unregisters the Transport's instruments (Close).
func (t *Transport) stopMetrics() {
	if t.metrics != nil {
		t.metrics.reg.Unregister()
	}
}
