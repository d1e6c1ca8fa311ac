package health

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"google.golang.org/grpc/credentials"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// CheckerOptions are a Checker's run-time collaborators: what is not
// configuration. The zero value is ready to use (a Checker that reports to no
// one is of little use, though: set OnChange).
type CheckerOptions struct {
	// Service is the service's name: the default Host header of HTTP checks,
	// the default TLS server name, and the gRPC check's authority. It also
	// names the service in log lines.
	Service string
	// TLS configures https checks (nil: a default configuration, verifying
	// the server's certificate against the system's roots) and gRPC checks
	// (nil: plaintext; set it for a TLS server). It is cloned, not modified;
	// an empty ServerName becomes the Host header's host (https) or Service
	// (gRPC).
	TLS *tls.Config
	// GRPCCredentials, if set, are the transport credentials of gRPC checks
	// (the gRPC policy passes its channel's, so checks of a TLS server use
	// TLS as its RPCs do); they take precedence over TLS for gRPC checks.
	GRPCCredentials credentials.TransportCredentials
	// Dial connects to an endpoint, for every kind of check. Default: a zero
	// net.Dialer's DialContext (and for gRPC, grpc's own dialer). network is
	// "tcp", or "unix" for a gRPC or TCP check of a "unix:" address.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// OnChange is called when an endpoint crosses a threshold: healthy false
	// after UnhealthyThreshold consecutive failed checks, true after
	// HealthyThreshold consecutive passed ones; why says what happened, as
	// in "3 consecutive checks failed, the last: HTTP status 503, want
	// 200-299". A new endpoint starts healthy and is not reported until it
	// fails (see Checker). It runs on the endpoint's checking goroutine with
	// no lock of the Checker held, never concurrently for one key (calls for
	// different keys may overlap), and no later than the Update that removes
	// the key, or Close, returns.
	OnChange func(key string, healthy bool, why string)
	// OnCheck, if set, is called after every check with its result (why is
	// "passed" or what failed), before OnChange; it runs as OnChange does.
	// Use it to end an outlier ejection on a passed check, or to count checks.
	OnCheck func(key string, passed bool, why string)
	// HasTraffic reports whether the endpoint has carried requests lately
	// (for example since the last call for it). While it says false, a
	// healthy endpoint without failed checks is checked every
	// NoTrafficInterval instead of every Interval. It is called on the
	// endpoint's goroutine after each check of such an endpoint (not for
	// one that is unhealthy or failing, which is checked every Interval
	// regardless), and every Interval while the endpoint waits out a
	// NoTrafficInterval, so that traffic brings the next check forward; it
	// must be safe for concurrent use. nil means every
	// endpoint has traffic.
	HasTraffic func(key string) bool
	// Rand returns uniformly random 64-bit values, concurrently, for the
	// jitter. Default math/rand/v2.Uint64. Tests inject a seeded source.
	Rand func() uint64
	// Logger receives health changes (Warn when an endpoint goes unhealthy,
	// Info when it comes back). Default slog.Default().
	Logger *slog.Logger
}

// Checker runs active health checks on a changing set of endpoints. The
// engine tells it the set with Update; it reports threshold crossings through
// CheckerOptions.OnChange.
//
// Each endpoint has its own goroutine, which sleeps between checks on a timer
// and owns the endpoint's connection for checks (an HTTP transport that keeps
// one connection alive, or a gRPC client connection; a TCP check opens and
// closes one per check). Checks of one endpoint never overlap: the next one is
// scheduled when the previous one ends. One goroutine per endpoint keeps each
// endpoint's state with the code that changes it and lets a slow or hanging
// endpoint delay only itself; a sleeping goroutine costs a few kilobytes.
//
// A new endpoint starts healthy: it is marked unhealthy (and reported) only
// after UnhealthyThreshold consecutive failed checks. (Envoy, by contrast,
// holds a new host back until its first check passes.) That way a newly discovered endpoint takes traffic at
// once (its connection readiness is the gRPC door's business), and a check
// that is wrongly configured (a wrong path, say) turns endpoints away only
// after the thresholds say so, one log line each, rather than making a
// freshly started client fail every request.
//
// All methods are safe for concurrent use. Update and Close wait for the
// goroutines they stop, so they must not be called from OnChange or OnCheck,
// nor while holding a lock that those callbacks take.
type Checker struct {
	cfg  HealthCheck // defaults applied
	opts CheckerOptions
	kind string // "http", "grpc" or "tcp", for logs

	mu      sync.Mutex
	targets map[string]*target
	closed  bool
	wg      sync.WaitGroup
}

// target is one endpoint being checked, and its goroutine.
type target struct {
	key, addr string
	ctx       context.Context
	cancel    context.CancelFunc
	done      chan struct{} // closed when the goroutine returns
	kick      chan struct{} // CheckNow; capacity 1
	prev      *target       // the target this one replaces (same key, other address)
	healthy   atomic.Bool
}

// NewChecker validates cfg and returns a Checker with no endpoints; Update
// gives it some. Close it when done.
func NewChecker(cfg HealthCheck, opts CheckerOptions) (*Checker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Rand == nil {
		opts.Rand = rand.Uint64
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	c := &Checker{cfg: cfg.effective(), opts: opts, targets: map[string]*target{}}
	switch {
	case cfg.HTTP != nil:
		c.kind = "http"
	case cfg.GRPC != nil:
		c.kind = "grpc"
	default:
		c.kind = "tcp"
	}
	return c, nil
}

// Update sets the endpoints to check: a map from each endpoint's key (the
// engine's endpoint address, used in callbacks) to the address to dial, which
// is the key itself for HTTP and TCP endpoints and may differ for gRPC (a key
// "[unix:///run/x.sock]:1" dials "unix:///run/x.sock"); an empty address
// means the key. Checks start for new keys and stop for keys left out. A key
// whose address changed is checked at the new address and keeps its health
// state (but not its run of passed or failed checks). A key that is removed
// and later added again starts over, healthy: an engine that keeps an
// endpoint's conditions across such a return should clear its Unhealthy
// condition then.
//
// When Update returns, no check of a removed key (or of a changed key's old
// address) is running and no callback for it is running or will start. After
// Close, Update does nothing.
func (c *Checker) Update(endpoints map[string]string) {
	var stopped []*target
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	addrOf := func(key string) (string, bool) {
		addr, ok := endpoints[key]
		if addr == "" {
			addr = key
		}
		return addr, ok
	}
	for key, t := range c.targets {
		if addr, ok := addrOf(key); !ok || addr != t.addr {
			t.cancel()
			delete(c.targets, key)
			stopped = append(stopped, t)
		}
	}
	for _, old := range stopped {
		if addr, ok := addrOf(old.key); ok {
			c.start(old.key, addr, old)
		}
	}
	for key := range endpoints {
		if c.targets[key] == nil {
			addr, _ := addrOf(key)
			c.start(key, addr, nil)
		}
	}
	c.mu.Unlock()
	for _, t := range stopped {
		<-t.done
	}
}

// start starts checking key at addr, succeeding prev if it is not nil.
// c.mu is held.
func (c *Checker) start(key, addr string, prev *target) {
	ctx, cancel := context.WithCancel(context.Background())
	t := &target{key: key, addr: addr, ctx: ctx, cancel: cancel, done: make(chan struct{}), kick: make(chan struct{}, 1), prev: prev}
	t.healthy.Store(prev == nil || prev.healthy.Load())
	c.targets[key] = t
	c.wg.Add(1)
	go c.run(t)
}

// CheckNow makes key's next check start now (if one is running, the next
// starts when it ends) and reports whether key is being checked. It does not
// wait for the check; OnCheck and OnChange report it as usual.
func (c *Checker) CheckNow(key string) bool {
	c.mu.Lock()
	t := c.targets[key]
	c.mu.Unlock()
	if t == nil {
		return false
	}
	select {
	case t.kick <- struct{}{}:
	default: // a check is already due
	}
	return true
}

// Healthy reports key's health as the checks see it, and whether key is
// being checked at all.
func (c *Checker) Healthy(key string) (healthy, known bool) {
	c.mu.Lock()
	t := c.targets[key]
	c.mu.Unlock()
	if t == nil {
		return false, false
	}
	return t.healthy.Load(), true
}

// Close stops every check and waits for every goroutine of the Checker to
// return: no callback runs after Close returns. Later calls do nothing.
func (c *Checker) Close() {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		for _, t := range c.targets {
			t.cancel()
		}
		c.targets = nil
	}
	c.mu.Unlock()
	c.wg.Wait()
}

// run checks one endpoint until its context ends.
func (c *Checker) run(t *target) {
	defer c.wg.Done()
	defer close(t.done)
	if t.prev != nil {
		<-t.prev.done // cancelled, so it ends soon; its last state stands
		t.healthy.Store(t.prev.healthy.Load())
		t.prev = nil
	}
	p := c.newProber(t.addr)
	defer p.close()
	timer := time.NewTimer(c.jitter())
	defer timer.Stop()
	var fails, passes int   // the current run of failed (healthy) or passed (unhealthy) checks
	var idleUntil time.Time // while idle, the next check is due then, or sooner once traffic comes
	for {
		select {
		case <-t.ctx.Done():
			return
		case <-timer.C:
			if !idleUntil.IsZero() && time.Now().Before(idleUntil) && !c.opts.HasTraffic(t.key) {
				timer.Reset(min(c.cfg.Interval, time.Until(idleUntil)))
				continue // still idle: look again for traffic in an interval
			}
		case <-t.kick:
		}
		idleUntil = time.Time{}
		err := c.checkOnce(t.ctx, p)
		if t.ctx.Err() != nil {
			return
		}
		why := "passed"
		if err != nil {
			why = err.Error()
		}
		if c.opts.OnCheck != nil {
			c.opts.OnCheck(t.key, err == nil, why)
		}
		switch healthy := t.healthy.Load(); {
		case healthy && err == nil:
			fails = 0
		case healthy:
			if fails++; fails >= c.cfg.UnhealthyThreshold {
				fails = 0
				c.change(t, false, fmt.Sprintf("%d consecutive %s checks failed, the last: %s", c.cfg.UnhealthyThreshold, c.kind, why))
			}
		case err != nil:
			passes = 0
		default:
			if passes++; passes >= c.cfg.HealthyThreshold {
				passes = 0
				c.change(t, true, fmt.Sprintf("%d consecutive %s checks passed", c.cfg.HealthyThreshold, c.kind))
			}
		}
		if fails == 0 && t.healthy.Load() && c.opts.HasTraffic != nil && !c.opts.HasTraffic(t.key) {
			// No traffic: the next check is due in NoTrafficInterval, but as
			// soon as traffic arrives (looked for every Interval) the normal
			// interval resumes, so a fresh client's endpoints are not left
			// unchecked for a minute.
			idleUntil = time.Now().Add(c.cfg.NoTrafficInterval)
		}
		timer.Reset(c.cfg.Interval + c.jitter())
	}
}

// change records and reports t's new health.
func (c *Checker) change(t *target, healthy bool, why string) {
	t.healthy.Store(healthy)
	if healthy {
		c.opts.Logger.Info("lodestar health: endpoint healthy again", "service", c.opts.Service, "endpoint", t.key, "why", why)
	} else {
		c.opts.Logger.Warn("lodestar health: endpoint unhealthy", "service", c.opts.Service, "endpoint", t.key, "why", why)
	}
	if c.opts.OnChange != nil {
		c.opts.OnChange(t.key, healthy, why)
	}
}

// checkOnce runs one check bounded by the timeout; nil means it passed.
func (c *Checker) checkOnce(ctx context.Context, p prober) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	err := p.probe(ctx)
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("no answer within the timeout, %v", c.cfg.Timeout)
	}
	return err
}

// jitter returns a random duration in [0, Jitter].
func (c *Checker) jitter() time.Duration {
	if c.cfg.Jitter <= 0 {
		return 0
	}
	return time.Duration(c.opts.Rand() % uint64(c.cfg.Jitter+1))
}
