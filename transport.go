package lodestar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/internal/monotime"
	"github.com/lodestar-go/lodestar/resolver"
	"github.com/lodestar-go/lodestar/retry"
)

// Service is one logical service the Transport balances: where its endpoints come
// from and how to pick among them.
type Service struct {
	// Feed discovers the service's endpoints. Set Feed or Target.
	Feed resolver.Feed
	// Target names a feed by URL when Feed is nil, for example
	// "static:///10.0.0.1:8080,10.0.0.2:8080" (see resolver.Parse).
	Target string
	// Config is the balancing configuration (algorithm, ...). The zero value is
	// round robin.
	Config balancer.Config
	// Host is the Host header the backends see. "" keeps the request's own Host,
	// which is the service name unless the caller set req.Host.
	Host string
	// TLSServerName is the name https requests verify the backend's certificate
	// against (and send as SNI). "" means Host if set, else the service name. It
	// takes effect only when the Transport's Base is an *http.Transport whose
	// TLSClientConfig does not set ServerName itself.
	TLSServerName string
	// Classifier sorts each exchange's outcome. nil means DefaultClassifier.
	Classifier Classifier
}

// Options configure a Transport.
type Options struct {
	// Base sends the requests once an endpoint is picked. nil means a clone of
	// http.DefaultTransport. When Base is an *http.Transport, each service gets a
	// clone of it, so that a drained endpoint's idle connections can be closed on
	// their own; any other RoundTripper is used as it is, and a drained endpoint
	// then closes the idle connections of the whole Base (if it has
	// CloseIdleConnections).
	Base http.RoundTripper
	// Services maps a logical service name (the host part of the request URL, as
	// in http://users/v1/profile) to its Service. At least one. Names are host
	// names: http://USERS/ reaches "users", and two names that differ only in
	// case are rejected.
	Services map[string]Service
	// PassThrough sends requests for hosts that are not services to Base
	// unchanged. By default such a request fails with an *UnknownServiceError.
	PassThrough bool
	// Logger receives discovery errors and membership changes. Default slog.Default().
	Logger *slog.Logger
	// Rand is the random source of every service's balancer (see
	// balancer.Options.Rand). nil means math/rand/v2; tests set a seeded one.
	Rand func() uint64
	// MeterProvider makes the Transport's OpenTelemetry instruments (see
	// metrics.go and the README's "Observability"). nil means
	// otel.GetMeterProvider(), a no-op unless the application set one.
	MeterProvider metric.MeterProvider
	// MetricsOmitEndpoint leaves endpoint addresses out of metric
	// attributes, for services with many endpoints.
	MetricsOmitEndpoint bool
}

// UnknownServiceError is returned for a request whose host names no service
// when Options.PassThrough is off.
type UnknownServiceError struct {
	Host  string   // the request URL's host
	Known []string // the configured service names, sorted
}

// Error names the host and the configured services.
func (e *UnknownServiceError) Error() string {
	return fmt.Sprintf("lodestar: host %q is not a configured service (services: %s)", e.Host, strings.Join(e.Known, ", "))
}

// Is reports whether target is ErrPermanent: the request fails the same way
// however often it is retried.
func (e *UnknownServiceError) Is(target error) bool { return target == ErrPermanent }

// ErrPermanent is matched, with errors.Is, by every error of a request that will
// fail the same way however often it is retried: a host that names no service
// (*UnknownServiceError), a closed Transport (which also matches
// balancer.ErrClosed). A retrying client around the Transport should stop on
// it: for example, go-retryablehttp's CheckRetry returns false for it, and a
// failsafe-go retry policy aborts on it. Other lodestar errors (no endpoint yet
// or now, a failed exchange) may pass, and are the retrier's to judge.
// Configuration errors never reach a request: NewTransport returns them.
var ErrPermanent = errors.New("lodestar: permanent failure")

// permanentError marks err as permanent (see ErrPermanent).
type permanentError struct{ err error }

func (e permanentError) Error() string        { return e.err.Error() }
func (e permanentError) Unwrap() error        { return e.err }
func (e permanentError) Is(target error) bool { return target == ErrPermanent }

// errClosed fails requests on a closed Transport.
var errClosed error = permanentError{balancer.ErrClosed}

// Transport is an http.RoundTripper that balances requests for logical services
// over their endpoints. A request for http://users/path picks an endpoint of the
// service "users" (say 10.0.0.7:8080), is sent there with the Host header still
// "users" (see Service.Host), and its outcome is reported back to the balancer.
//
// A request counts as in flight from the pick until its response body is read to
// the end or closed, as http.Client's contract requires the caller to do.
//
// Transport is safe for concurrent use. Close stops the feeds and closes idle
// connections.
type Transport struct {
	base     http.RoundTripper
	services map[string]*service
	names    []string
	pass     bool
	closed   atomic.Bool
	logger   *slog.Logger
	metrics  *transportMetrics // nil when the meter refused (metrics.go)
}

type service struct {
	name     string
	host     string // Host header to send, "" keeps the request's
	engine   *balancer.Engine
	rt       http.RoundTripper
	classify Classifier
	tracker  *connTracker // nil when rt is not our clone
	affinity affinity     // how requests carry their affinity key

	// Retries, when Config.Retry is set (policy nil otherwise).
	policy *retry.Policy
	budget *retry.Budget // the service's, shared by all its requests
	perTry time.Duration // policy.PerTryTimeout(), 0 for none

	// Hedging, when the policy has a hedge section (see hedging.go).
	hedging

	obs serviceObs // request and hedge counters (metrics.go)
}

// NewTransport starts a Transport for the services in opts. It validates every
// service's configuration and target first and returns an error naming the
// service and field that is wrong; nothing is started then.
func NewTransport(opts Options) (*Transport, error) {
	if len(opts.Services) == 0 {
		return nil, errors.New("lodestar: Options.Services: no services configured")
	}
	base := opts.Base
	if base == nil {
		base = http.DefaultTransport.(*http.Transport).Clone()
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	t := &Transport{base: base, services: make(map[string]*service, len(opts.Services)), pass: opts.PassThrough, logger: logger}

	type pending struct {
		svc  *service
		feed resolver.Feed
	}
	var ps []pending
	for name, sc := range opts.Services {
		if name == "" || strings.ContainsAny(name, "/?#@ ") {
			return nil, fmt.Errorf("lodestar: Options.Services: %q is not a valid host name for a service", name)
		}
		feed := sc.Feed
		if feed == nil {
			if sc.Target == "" {
				return nil, fmt.Errorf("lodestar: service %q: set Feed or Target", name)
			}
			f, err := resolver.Parse(sc.Target)
			if err != nil {
				return nil, fmt.Errorf("lodestar: service %q: Target: %w", name, err)
			}
			feed = f
		}
		if err := sc.Config.Validate(); err != nil {
			return nil, fmt.Errorf("lodestar: service %q: %w", name, err)
		}
		key := strings.ToLower(name)
		if _, dup := t.services[key]; dup {
			return nil, fmt.Errorf("lodestar: Options.Services: %q is configured twice (service names are host names: case does not matter)", name)
		}
		svc := &service{name: name, host: sc.Host, classify: sc.Classifier, rt: base, affinity: newAffinity(sc.Config)}
		if svc.classify == nil {
			svc.classify = DefaultClassifier
		}
		if rc := sc.Config.Retry; rc != nil {
			p, err := retry.NewPolicy(*rc, opts.Rand)
			if err != nil { // validated above; kept for safety
				return nil, fmt.Errorf("lodestar: service %q: retry: %w", name, err)
			}
			svc.policy, svc.budget, svc.perTry = p, p.NewBudget(nil), p.PerTryTimeout()
			svc.initHedging()
		}
		if bt, ok := base.(*http.Transport); ok {
			svc.rt, svc.tracker = cloneForService(bt, name, sc)
		}
		ps = append(ps, pending{svc, feed})
		t.services[key] = svc
		t.names = append(t.names, name)
	}
	sort.Strings(t.names)

	for _, p := range ps {
		svc := p.svc
		sc := opts.Services[svc.name]
		target := resolver.Redact(sc.Target)
		if sc.Feed != nil {
			target = fmt.Sprintf("%T", sc.Feed)
		}
		var hopts balancer.HealthOptions
		if ht, ok := svc.rt.(*http.Transport); ok {
			hopts.TLS = ht.TLSClientConfig // https checks verify as requests do
		}
		eng, err := balancer.NewEngine(sc.Config, balancer.Options{
			Service:   svc.name,
			Target:    target,
			Health:    hopts,
			Logger:    logger,
			Rand:      opts.Rand,
			OnDrained: svc.drained,
			Door:      "http",
			// Observability: metrics.go, balancer/metrics.go.
			MeterProvider:       opts.MeterProvider,
			MetricsOmitEndpoint: opts.MetricsOmitEndpoint,
		})
		if err != nil { // validated above; kept for safety
			t.Close()
			return nil, fmt.Errorf("lodestar: service %q: %w", svc.name, err)
		}
		svc.engine = eng
	}
	t.startMetrics(opts)
	for _, p := range ps {
		p.svc.engine.Start(p.feed)
	}
	return t, nil
}

// Engine returns the balancer of the named service (case does not matter), or
// nil, for inspection.
func (t *Transport) Engine(service string) *balancer.Engine {
	if s := t.lookup(service); s != nil {
		return s.engine
	}
	return nil
}

// lookup finds the service for a request URL's host, with or without a port.
// Service names are host names, so case does not matter: the map is keyed by
// the lower-case name, and a host with upper-case letters is lowered in a stack
// buffer (a map lookup by string(bytes) does not allocate).
func (t *Transport) lookup(host string) *service {
	if s := t.services[host]; s != nil {
		return s
	}
	if i := strings.LastIndexByte(host, ':'); i > 0 && !strings.HasSuffix(host, "]") {
		host = host[:i]
		if s := t.services[host]; s != nil {
			return s
		}
	}
	var buf [64]byte
	if len(host) > len(buf) {
		return t.services[strings.ToLower(host)]
	}
	b, upper := buf[:len(host)], false
	for i := 0; i < len(host); i++ {
		c := host[i]
		if 'A' <= c && c <= 'Z' {
			c, upper = c+'a'-'A', true
		}
		b[i] = c
	}
	if !upper {
		return nil
	}
	return t.services[string(b)]
}

// RoundTrip picks an endpoint of the request's service, sends the request there
// through the base transport and reports the outcome. The request is not
// modified; the response's Request is the caller's request.
//
// A request sent before the service's feed has answered at all waits for that
// first answer (bounded by the request's context and the service's
// Config.InitialDiscoveryTimeout, default 10s); a static list is in force when
// NewTransport returns.
//
// Errors: an *UnknownServiceError for a host that is no service (it matches
// ErrPermanent, as does the error of a closed Transport); a
// *balancer.DiscoveryPendingError (errors.Is(err, balancer.ErrDiscoveryPending))
// when the feed has not delivered endpoints yet; a *balancer.NoEndpointsError
// (errors.Is(err, balancer.ErrNoEndpoints)) when the service has no eligible
// endpoint; the context's error when the request's
// context ends before or during the exchange; otherwise the base transport's
// error, wrapped with the endpoint's address.
//
// With a retry policy (the service's Config.Retry), a failed attempt is sent
// again to another endpoint when the policy lists its outcome and the retry is
// safe; the answer is the last attempt's (see the README's "Retries").
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	svc := t.lookup(req.URL.Host)
	if svc == nil {
		if t.pass {
			return t.base.RoundTrip(req)
		}
		closeBody(req)
		return nil, &UnknownServiceError{Host: req.URL.Host, Known: t.names}
	}
	ctx := req.Context()
	if done := ctx.Done(); done != nil {
		select {
		case <-done:
			closeBody(req)
			return nil, ctx.Err()
		default:
		}
	}
	if t.closed.Load() {
		closeBody(req)
		return nil, errClosed
	}
	ep, err := svc.engine.Pick(svc.affinity.pickInfo(ctx, req))
	if err != nil {
		closeBody(req)
		svc.countAnswer(ctx, nil, err)
		if err == balancer.ErrClosed {
			err = errClosed
		}
		return nil, err
	}
	var resp *http.Response
	if svc.policy != nil {
		resp, err = svc.roundTrip(ctx, req, ep)
	} else {
		resp, err = svc.send(ctx, req, ep)
	}
	svc.countAnswer(ctx, resp, err) // metrics.go
	return resp, err
}

// pauseFor keeps ep out of new picks for as long as its Retry-After asks
// (bounded by balancer.MaxPause), so the other endpoints serve meanwhile.
func (s *service) pauseFor(ep *balancer.Endpoint, resp *http.Response) {
	if v := resp.Header.Get("Retry-After"); v != "" {
		if d, ok := retry.ParseRetryAfter(v, time.Now()); ok {
			s.engine.Pause(ep.Address(), d, fmt.Sprintf("HTTP %d with Retry-After", resp.StatusCode))
		}
	}
}

// call is everything one attempt needs, in one allocation: the outgoing copy of
// the request and its URL, and the response body wrapper that reports the
// outcome when the body is done (trackedBody, or upgradedBody for a 101's
// upgraded connection). It is kept within 512 bytes (http.Request and
// url.URL take 448), the largest size Go allocates without a malloc header.
type call struct {
	req   http.Request // its context is the caller's, or the attempt's own (per-try timeout)
	url   url.URL
	svc   *service
	ep    *balancer.Endpoint
	body  io.ReadCloser // the base's response body (an io.ReadWriteCloser for a 101)
	lat   time.Duration // request sent → response headers (or error)
	end   time.Duration // when the headers arrived, as a monotime reading
	code  int16         // HTTP status: three digits
	class outcome.Class
	done  atomic.Bool
	// cancel ends the attempt's own context (per-try timeout), when it has
	// one: at the body's end, so that the body stays readable until then.
	cancel context.CancelFunc
}

// send sends req to ep and reports the outcome.
func (s *service) send(ctx context.Context, req *http.Request, ep *balancer.Endpoint) (*http.Response, error) {
	resp, _, _, err := s.attempt(ctx, req, ep, nil)
	return resp, err
}

// attempt sends req to ep once and reports the outcome; it returns the
// response or error, the outcome's class and when the exchange ended (a
// monotime reading). body, when not nil, replaces req.Body (a retry's replay
// from GetBody). With a per-try timeout (s.perTry), the attempt runs on its
// own context, derived from ctx, that is cut if the response headers have
// not arrived in time; its class is then outcome.Timeout.
func (s *service) attempt(ctx context.Context, req *http.Request, ep *balancer.Endpoint, body io.ReadCloser) (*http.Response, outcome.Class, time.Duration, error) {
	return s.attemptOn(ctx, nil, req, ep, body)
}

// attemptOn is attempt on own, the attempt's own context (derived from ctx)
// when the caller made one: a hedged attempt's, which the race cancels when
// another attempt wins (an attempt lost so is reported as outcome.Canceled).
// own == nil: the attempt makes its own context only for a per-try timeout.
func (s *service) attemptOn(ctx context.Context, own *attemptCtx, req *http.Request, ep *balancer.Endpoint, body io.ReadCloser) (*http.Response, outcome.Class, time.Duration, error) {
	c := &call{svc: s, ep: ep}
	c.req = *req
	if body != nil {
		c.req.Body = body
	}
	if own != nil {
		c.cancel = own.cancel
		c.req = *c.req.WithContext(own.ctx)
	} else if s.perTry > 0 {
		tctx, cancel := context.WithCancel(ctx)
		c.cancel = cancel
		c.req = *c.req.WithContext(tctx)
	}
	var timer *time.Timer
	if s.perTry > 0 {
		timer = time.AfterFunc(s.perTry, c.cancel)
	}
	c.url = *req.URL
	c.url.Host = ep.Address()
	c.req.URL = &c.url
	if s.host != "" {
		c.req.Host = s.host
	} else if c.req.Host == "" {
		c.req.Host = req.URL.Host
	}
	start := monotime.Now()
	resp, err := s.rt.RoundTrip(&c.req)
	c.end = monotime.Now()
	c.lat = c.end - start
	cut := false // the per-try timeout cut the attempt
	if timer != nil && !timer.Stop() {
		cut = ctx.Err() == nil && !own.isLost()
		if err == nil { // cut as the headers arrived: the body is unusable
			resp.Body.Close()
			resp, err = nil, context.Canceled
		}
	}
	if err != nil {
		class := s.classify(ctx, nil, err)
		if own.isLost() {
			class = outcome.Canceled // another attempt won: not the endpoint's fault
		} else if cut {
			class = outcome.Timeout
			err = &PerTryTimeoutError{Limit: s.perTry, Err: err}
		}
		if s.hedger != nil && class.Counted() {
			s.hedger.ObserveAt(c.lat, c.end)
		}
		s.engine.Done(ep, outcome.Outcome{Class: class, Latency: c.lat, At: monotime.Time(c.end), Err: err})
		if c.cancel != nil {
			c.cancel()
		}
		if ctx.Err() != nil {
			return nil, outcome.Canceled, c.end, ctx.Err()
		}
		return nil, class, c.end, fmt.Errorf("lodestar: %s via %s: %w", s.name, ep.Address(), err)
	}
	c.class = s.classify(ctx, resp, nil)
	c.code = int16(resp.StatusCode)
	if s.hedger != nil {
		s.hedger.ObserveAt(c.lat, c.end)
	}
	resp.Request = req
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		s.pauseFor(ep, resp)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// The upgraded connection is the caller's until it closes it: in
		// flight until then, so that a drain neither ends nor closes it.
		if rwc, ok := resp.Body.(io.ReadWriteCloser); ok {
			c.body = rwc
			resp.Body = (*upgradedBody)(c)
			return resp, c.class, c.end, nil
		}
		c.finish(nil)
		return resp, c.class, c.end, nil
	}
	if resp.Body == nil || resp.Body == http.NoBody {
		c.finish(nil)
		return resp, c.class, c.end, nil
	}
	c.body = resp.Body
	resp.Body = (*trackedBody)(c)
	return resp, c.class, c.end, nil
}

// finish reports the call's outcome once; readErr is a body read error.
func (c *call) finish(readErr error) {
	if !c.done.CompareAndSwap(false, true) {
		return
	}
	o := outcome.Outcome{Class: c.class, Latency: c.lat, At: monotime.Time(c.end), Code: int(c.code)}
	if readErr != nil && readErr != io.EOF {
		o.Err = readErr
		if !o.Class.Failure() {
			o.Class = c.svc.classify(c.req.Context(), nil, readErr)
		}
	}
	c.svc.engine.Done(c.ep, o)
	if c.cancel != nil {
		c.cancel()
	}
}

// trackedBody is the response body handed to the caller: it reports the
// outcome when the body hits EOF, fails or is closed.
type trackedBody call

func (b *trackedBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	if err != nil {
		(*call)(b).finish(err)
	}
	return n, err
}

func (b *trackedBody) Close() error {
	err := b.body.Close()
	(*call)(b).finish(nil)
	return err
}

// CloseIdleConnections closes the idle connections of every service and of Base.
func (t *Transport) CloseIdleConnections() {
	for _, s := range t.services {
		if ci, ok := s.rt.(interface{ CloseIdleConnections() }); ok {
			ci.CloseIdleConnections()
		}
	}
	if ci, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

// Close stops every service's feed and closes idle connections. Requests in
// flight finish; later requests fail with an error that matches
// balancer.ErrClosed and ErrPermanent.
func (t *Transport) Close() error {
	if t.closed.Swap(true) {
		return nil
	}
	t.stopMetrics()
	for _, s := range t.services {
		if s.engine != nil {
			s.engine.Close()
		}
	}
	t.CloseIdleConnections()
	return nil
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}
