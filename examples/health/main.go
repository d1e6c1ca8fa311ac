// Command health shows lodestar's protections at work through both front
// doors: outlier ejection, circuit breakers and active health checks, with
// one configuration.
//
//	go run ./examples/health
//
// It starts four real HTTP backends and four real gRPC backends (with grpc's
// standard health service) on 127.0.0.1, sends a steady load through a
// lodestar.Transport and through a gRPC channel with the "lodestar" policy,
// and makes one backend of each door misbehave in three ways, one after the
// other:
//
//  1. c answers every request 503 (gRPC: UNAVAILABLE) while its health
//     endpoint still says OK: outlier detection ejects it after 3 gateway
//     errors in a row; it is fixed meanwhile, its ejection ends after
//     baseEjectionTime, and it comes back through slow start.
//  2. d fails every other request with 500 (gRPC: INTERNAL), never twice in
//     a row, so no consecutive-failure detector fires: its circuit breaker's
//     failure ratio opens it; after openTimeout the breaker is half-open and
//     lets exactly one probe through; the probe succeeds and d is back.
//  3. b's health endpoint says it is going down (503 / NOT_SERVING) while
//     its requests still succeed: the active health check marks it unhealthy
//     after two failed checks and healthy after two passed ones.
//
// Each change is printed as the engine reports it (balancer.Engine.Subscribe:
// an Event with the endpoint, its conditions before and after, and why),
// with each backend's share of the traffic before, during and after. The
// two doors run at the same time, each with its own backends, and the
// program finishes in about six seconds.
package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	grpcbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/grpcpolicy"
	_ "github.com/lodestar-go/lodestar/resolver/grpcresolver" // "static:///" for gRPC
)

// config is the one configuration both doors run (HTTP: balancer.ParseConfig;
// gRPC: the policy's loadBalancingConfig). Only CHECK differs, because each
// door asks its backends in its own protocol: the HTTP door GETs /healthz,
// the gRPC door calls grpc.health.v1.Health/Check.
//
//   - Slow start ramps an endpoint that comes back (from an ejection, an open
//     breaker or unhealth) from 10% of its share to all of it over 1s.
//   - Outlier detection ejects an endpoint after 3 gateway errors in a row
//     (HTTP 502/503/504, gRPC UNAVAILABLE) for baseEjectionTime, 1s (2s the
//     second time, and so on); it looks every 100ms for ejections that are
//     over. consecutiveFailures (any failure class) keeps its default, 5.
//   - The breakers judge only the failure ratio: an endpoint with at least half
//     of its outcomes failed over the last 500ms (and at least 10 of them) is
//     cut off for 1s, then gets 1 probe.
//   - Health checks run every 100ms: 2 failed checks in a row mark an
//     endpoint down, 2 passed ones up again. noTrafficInterval (default 60s)
//     is how often an endpoint that carries no traffic is checked; each
//     endpoint's first check runs when it is discovered, before any request,
//     so with the default its second one would come only after a minute.
//     Here idle endpoints are checked as often as busy ones.
const config = `{
  "algorithm": {"round_robin": {"slowStart": {"window": "1s"}}},
  "outlierDetection": {"consecutiveGatewayFailures": 3, "interval": "100ms",
                       "baseEjectionTime": "1s", "maxEjectionPercent": 50},
  "circuitBreaker": {"consecutiveFailures": 0, "failureRatio": 0.5, "minRequests": 10,
                     "window": "500ms", "openTimeout": "1s", "halfOpenRequests": 1},
  "healthCheck": {CHECK, "interval": "100ms", "timeout": "500ms",
                  "noTrafficInterval": "100ms", "unhealthyThreshold": 2, "healthyThreshold": 2}
}`

// The health check of each door, in place of CHECK.
const (
	httpCheck = `"http": {"path": "/healthz"}`
	grpcCheck = `"grpc": {"service": ""}`
)

func configFor(check string) string { return strings.Replace(config, "CHECK", check, 1) }

// workers is how many clients send requests on each door, one at a time
// each, pausing pace between requests.
const (
	workers = 4
	pace    = 2 * time.Millisecond
)

// quiet drops the library's log lines: every change they report is printed
// here from the engine's events instead.
var quiet = slog.New(slog.DiscardHandler)

// channels maps a gRPC channel's target to the function that takes its
// engine (a channel's lodestar policy makes one engine).
var channels sync.Map // target endpoint → func(*balancer.Engine)

func init() {
	// The "lodestar" policy, registered again with a hook that hands each
	// channel's engine to the code that watches it. It replaces the one
	// grpcpolicy registers, in this program only.
	grpcbalancer.Register(grpcpolicy.NewBuilder(grpcpolicy.Options{
		Name:   grpcpolicy.Name,
		Logger: quiet,
		OnEngine: func(target string, e *balancer.Engine) {
			if f, ok := channels.Load(target); ok {
				f.(func(*balancer.Engine))(e)
			}
		},
	}))
}

func main() {
	if err := run(os.Stdout); err != nil {
		log.Fatal(err)
	}
}

func run(out io.Writer) error {
	fmt.Fprintf(out, "One configuration for both doors (CHECK is %s for HTTP, %s for gRPC):\n%s\n\n",
		httpCheck, grpcCheck, config)
	fmt.Fprintf(out, "Each door: 4 backends a-d on 127.0.0.1, %d clients sending requests back to back (round robin).\n", workers)
	fmt.Fprintf(out, "Both doors run at the same time, each with its own backends; times are since the door's start.\n\n")

	doors := []func(io.Writer) error{runHTTP, runGRPC}
	outs := make([]bytes.Buffer, len(doors))
	errs := make([]error, len(doors))
	var wg sync.WaitGroup
	for i, f := range doors {
		wg.Go(func() { errs[i] = f(&outs[i]) })
	}
	wg.Wait()
	for i := range doors {
		out.Write(outs[i].Bytes())
		if errs[i] != nil {
			return errs[i]
		}
	}
	fmt.Fprintf(out, `What it shows:
  - A backend that answers errors is ejected on the very next pick after the third one in a row; the
    failed requests are those 3 plus any that were already on their way. It gets nothing while ejected,
    and when the ejection ends it ramps back up through slow start instead of taking a full share at once.
  - A backend that fails intermittently never fails 3 times in a row, so the consecutive detectors miss it;
    the breaker's failure ratio over its window does not. Open, it gets nothing; half-open, only its probe.
  - A health check needs no traffic to fail: it takes an endpoint out when the endpoint says it is going
    down, even though its requests still succeed, and puts it back after two passed checks.
  - No request went unanswered: lodestar only ever took one endpoint of four out at a time, so it never
    needed panic mode (below 50%% usable endpoints it would spread over all of them).
`)
	return nil
}

// runHTTP runs the scenario through a lodestar.Transport.
func runHTTP(out io.Writer) error {
	var bs []*backend
	var addrs []string
	for _, name := range []string{"a", "b", "c", "d"} {
		b := startHTTP(name)
		defer b.stop()
		bs = append(bs, b)
		addrs = append(addrs, b.addr)
	}
	cfg, err := balancer.ParseConfig([]byte(configFor(httpCheck)))
	if err != nil {
		return err
	}
	base := http.DefaultTransport.(*http.Transport).Clone()
	base.MaxIdleConnsPerHost = workers
	tr, err := lodestar.NewTransport(lodestar.Options{
		Base:   base,
		Logger: quiet,
		Services: map[string]lodestar.Service{
			"api": {Target: "static:///" + strings.Join(addrs, ","), Config: cfg},
		},
	})
	if err != nil {
		return err
	}
	defer tr.Close()
	d := newDoor("HTTP", `lodestar.Transport, service "api"`, bs)
	defer tr.Engine("api").Subscribe(d.w.add)()

	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	d.send = func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, "GET", "http://api/work", nil)
		if err != nil {
			return err
		}
		req.Header.Set("X-Sent", stamp())
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK && !strings.Contains(string(body), simulated) {
			return fmt.Errorf("status %s: %s", resp.Status, body)
		}
		return err
	}
	return d.scenario(out, "503")
}

// runGRPC runs the scenario through a gRPC channel with the lodestar policy.
func runGRPC(out io.Writer) error {
	var bs []*backend
	var addrs []string
	for _, name := range []string{"a", "b", "c", "d"} {
		b, err := startGRPC(name)
		if err != nil {
			return err
		}
		defer b.stop()
		bs = append(bs, b)
		addrs = append(addrs, b.addr)
	}
	d := newDoor("gRPC", `a channel with the "lodestar" policy`, bs)
	// The channel's engine is made when grpc first hands the policy its
	// config; subscribe then, before any endpoint is added.
	endpoint := strings.Join(addrs, ",")
	var cancel func()
	subscribed := make(chan struct{})
	channels.Store(endpoint, func(e *balancer.Engine) {
		cancel = e.Subscribe(d.w.add)
		close(subscribed)
	})
	defer channels.Delete(endpoint)

	sc := fmt.Sprintf(`{"loadBalancingConfig": [{"lodestar": %s}]}`, configFor(grpcCheck))
	conn, err := grpc.NewClient("static:///"+endpoint,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(sc))
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.Connect()
	select {
	case <-subscribed:
		defer cancel()
	case <-time.After(10 * time.Second):
		return fmt.Errorf("gRPC: the channel made no lodestar engine within 10s")
	}
	client := testgrpc.NewTestServiceClient(conn)
	d.send = func(ctx context.Context) error {
		// Wait for ready: the channel connects to the backends in the
		// background, and the first RPCs wait for a connection.
		ctx = metadata.AppendToOutgoingContext(ctx, "x-sent", stamp())
		_, err := client.EmptyCall(ctx, &testgrpc.Empty{}, grpc.WaitForReady(true))
		if err != nil && strings.Contains(status.Convert(err).Message(), simulated) {
			return nil // the backend's own error answer
		}
		return err
	}
	return d.scenario(out, "UNAVAILABLE")
}

// door is one front door under load, with the events of its engine.
type door struct {
	name, what string
	bs         []*backend // a, b, c, d
	send       func(context.Context) error
	w          *watcher
	t0         time.Time

	unanswered atomic.Int64
	errMu      sync.Mutex
	firstErr   error
}

func newDoor(name, what string, bs []*backend) *door {
	return &door{name: name, what: what, bs: bs, w: &watcher{wake: make(chan struct{}, 1)}}
}

// load sends requests from workers clients until the returned stop is called.
func (d *door) load() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
				err := d.send(rctx)
				rcancel()
				if err != nil && ctx.Err() == nil {
					d.unanswered.Add(1)
					d.errMu.Lock()
					if d.firstErr == nil {
						d.firstErr = err
					}
					d.errMu.Unlock()
				}
				time.Sleep(pace)
			}
		})
	}
	return func() { cancel(); wg.Wait() }
}

// since formats t as the time since the door started.
func (d *door) since(t time.Time) string { return fmt.Sprintf("+%.2fs", t.Sub(d.t0).Seconds()) }

// shares formats each backend's share of the requests that reached one in
// [from, to).
func (d *door) shares(from, to time.Time) string {
	counts := make([]int, len(d.bs))
	total := 0
	for i, b := range d.bs {
		counts[i] = b.count(from, to)
		total += counts[i]
	}
	var s strings.Builder
	for i, b := range d.bs {
		fmt.Fprintf(&s, "%s %3.0f%%  ", b.name, percent(counts[i], total))
	}
	fmt.Fprintf(&s, "(%d requests in %.1fs)", total, to.Sub(from).Seconds())
	return s.String()
}

func percent(n, total int) float64 {
	if total == 0 {
		return 0
	}
	return 100 * float64(n) / float64(total)
}

// event prints an engine event: when, what kind, which backend, and what
// changed: its conditions before and after and why, or the breaker's
// transition.
func (d *door) event(out io.Writer, ev balancer.Event) {
	name := ev.Address
	for _, b := range d.bs {
		if b.addr == ev.Address {
			name = b.name
		}
	}
	if ev.Kind == balancer.BreakerChanged {
		fmt.Fprintf(out, "  %s %-17s  %s: %s\n", d.since(ev.At), ev.Kind, name, ev.Why)
		return
	}
	fmt.Fprintf(out, "  %s %-17s  %s: %v → %v  (%s)\n", d.since(ev.At), ev.Kind, name, ev.Old, ev.New, ev.Why)
}

// sleepUntil sleeps until t.
func sleepUntil(t time.Time) { time.Sleep(time.Until(t)) }

// scenario runs the three acts on d, printing as it goes. fail names the
// error c answers with.
func (d *door) scenario(out io.Writer, fail string) error {
	a, b, c, dd := d.bs[0], d.bs[1], d.bs[2], d.bs[3]
	fmt.Fprintf(out, "== %s: %s\n   backends:", d.name, d.what)
	for _, x := range d.bs {
		fmt.Fprintf(out, " %s=%s", x.name, x.addr)
	}
	fmt.Fprintln(out)

	stop := d.load()
	defer stop()
	// Until every backend has answered (gRPC connects in the background),
	// and a little longer: all four ramp through slow start from their start
	// (or, gRPC, their connection), so their shares even out quickly.
	deadline := time.Now().Add(10 * time.Second)
	for a.count(time.Time{}, time.Now()) == 0 || b.count(time.Time{}, time.Now()) == 0 ||
		c.count(time.Time{}, time.Now()) == 0 || dd.count(time.Time{}, time.Now()) == 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not every backend answered within 10s", d.name)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	mark := d.w.len() // the events from here on are the scenario's
	d.t0 = time.Now()
	sleepUntil(d.t0.Add(400 * time.Millisecond))
	fmt.Fprintf(out, "  all healthy                %s\n", d.shares(d.t0, time.Now()))

	// Act 1: c fails hard, is ejected, is fixed, comes back through slow start.
	fmt.Fprintf(out, "\n1. %s: c answers every request %s; its health endpoint still says OK\n", d.name, fail)
	failAt := time.Now()
	c.setMode(modeUnavailable)
	cur := mark
	ev, err := d.w.await(&cur, 5*time.Second, "ejection of c", func(ev balancer.Event) bool {
		return ev.Address == c.addr && turnedOn(ev, balancer.Ejected)
	})
	if err != nil {
		return fmt.Errorf("%s: %w", d.name, err)
	}
	d.event(out, ev)
	ejected := ev.At
	fixAt := ejected.Add(400 * time.Millisecond)
	sleepUntil(fixAt)
	_, n := c.arrivedIn(failAt, fixAt)
	fmt.Fprintf(out, "  c answered %d requests with %s: 3 in a row ejected it; %d more had been sent to c before that\n",
		n, fail, max(n-3, 0))
	c.setMode(modeOK)
	fmt.Fprintf(out, "  %s c is fixed; its ejection runs its course\n", d.since(time.Now()))
	ev, err = d.w.await(&cur, 5*time.Second, "end of c's ejection", func(ev balancer.Event) bool {
		return ev.Address == c.addr && turnedOff(ev, balancer.Ejected)
	})
	if err != nil {
		return fmt.Errorf("%s: %w", d.name, err)
	}
	back := ev.At
	fmt.Fprintf(out, "  while c is ejected         %s\n", d.shares(ejected, back))
	d.event(out, ev)
	var ramp []string
	for i := range 4 {
		from := back.Add(time.Duration(i) * 250 * time.Millisecond)
		to := from.Add(250 * time.Millisecond)
		sleepUntil(to)
		ramp = append(ramp, fmt.Sprintf("%.0f%%", percent(c.count(from, to), total(d.bs, from, to))))
	}
	fmt.Fprintf(out, "  c's share in slow start, per 250ms: %s (a full share is 25%%)\n", strings.Join(ramp, " "))

	// Act 2: d fails intermittently; its breaker opens, probes, closes.
	fmt.Fprintf(out, "\n2. %s: d fails every other request (never twice in a row, so no consecutive detector fires)\n", d.name)
	flakyAt := time.Now()
	dd.setMode(modeFlaky)
	breaker := func(change string) func(balancer.Event) bool {
		return func(ev balancer.Event) bool {
			return ev.Kind == balancer.BreakerChanged && ev.Address == dd.addr && strings.HasSuffix(ev.Why, change)
		}
	}
	ev, err = d.w.await(&cur, 5*time.Second, "d's breaker opening", breaker("closed → open"))
	if err != nil {
		return fmt.Errorf("%s: %w", d.name, err)
	}
	d.event(out, ev)
	// The open breaker takes d out of the rotation: the BreakerOpen condition.
	ev, err = d.w.await(&cur, 5*time.Second, "d's BreakerOpen condition", func(ev balancer.Event) bool {
		return ev.Address == dd.addr && turnedOn(ev, balancer.BreakerOpen)
	})
	if err != nil {
		return fmt.Errorf("%s: %w", d.name, err)
	}
	d.event(out, ev)
	opened := ev.At
	n, failed := dd.arrivedIn(flakyAt, opened)
	fmt.Fprintf(out, "  d had failed %d of its %d requests since it turned flaky\n", failed, n)
	sleepUntil(opened.Add(100 * time.Millisecond)) // requests already sent to d are done
	dd.setMode(modeCold)
	fmt.Fprintf(out, "  %s d is fixed (its first request will take %v: a cold cache)\n", d.since(time.Now()), coldStart)
	ev, err = d.w.await(&cur, 5*time.Second, "d's breaker half-opening", breaker("open → half-open"))
	if err != nil {
		return fmt.Errorf("%s: %w", d.name, err)
	}
	halfOpen := ev.At // before d is back in the rotation for its probe
	fmt.Fprintf(out, "  while d's breaker is open  %s\n", d.shares(opened, halfOpen))
	d.event(out, ev)
	ev, err = d.w.await(&cur, 5*time.Second, "d's BreakerOpen condition clearing", func(ev balancer.Event) bool {
		return ev.Address == dd.addr && turnedOff(ev, balancer.BreakerOpen)
	})
	if err != nil {
		return fmt.Errorf("%s: %w", d.name, err)
	}
	d.event(out, ev)
	ev, err = d.w.await(&cur, 5*time.Second, "d's breaker closing", breaker("half-open → closed"))
	if err != nil {
		return fmt.Errorf("%s: %w", d.name, err)
	}
	closed := ev.At
	// The probe's outcome closed the breaker, so every request that reached
	// d between the two events was a probe (any sent to d before it opened
	// arrived a second earlier).
	probes, _ := dd.arrivedIn(halfOpen, closed)
	fmt.Fprintf(out, "  half-open: %d probe request reached d; the other %d requests sent meanwhile went to a, b and c\n",
		probes, total(d.bs, halfOpen, closed)-dd.count(halfOpen, closed))
	d.event(out, ev)
	sleepUntil(closed.Add(400 * time.Millisecond))
	fmt.Fprintf(out, "  after the probe            %s (d ramps up)\n", d.shares(closed, time.Now()))

	// Act 3: b's health endpoint says it is going down.
	fmt.Fprintf(out, "\n3. %s: b's health endpoint says it is going down; its requests still succeed\n", d.name)
	b.setHealthy(false)
	ev, err = d.w.await(&cur, 5*time.Second, "b going unhealthy", func(ev balancer.Event) bool {
		return ev.Address == b.addr && turnedOn(ev, balancer.Unhealthy)
	})
	if err != nil {
		return fmt.Errorf("%s: %w", d.name, err)
	}
	d.event(out, ev)
	down := ev.At
	sleepUntil(down.Add(300 * time.Millisecond))
	b.setHealthy(true)
	fmt.Fprintf(out, "  %s b's health endpoint says OK again\n", d.since(time.Now()))
	ev, err = d.w.await(&cur, 5*time.Second, "b coming back", func(ev balancer.Event) bool {
		return ev.Address == b.addr && turnedOff(ev, balancer.Unhealthy)
	})
	if err != nil {
		return fmt.Errorf("%s: %w", d.name, err)
	}
	fmt.Fprintf(out, "  while b is unhealthy       %s\n", d.shares(down, ev.At))
	d.event(out, ev)
	stop()

	// Everything the engine reported since the scenario began.
	evs := d.w.since(mark)
	var conds, breakers, other []string
	panics := 0
	for _, ev := range evs {
		switch ev.Kind {
		case balancer.ConditionChanged:
			conds = append(conds, conditionChange(ev))
		case balancer.BreakerChanged:
			breakers = append(breakers, strings.TrimPrefix(ev.Why, "circuit breaker "))
		case balancer.PanicStarted:
			panics++
			fallthrough
		default:
			other = append(other, ev.Kind.String())
		}
	}
	fmt.Fprintf(out, "\n  %s summary: %d events: %d condition changes (%s), %d breaker changes (%s)",
		d.name, len(evs), len(conds), strings.Join(conds, ", "), len(breakers), strings.Join(breakers, ", "))
	if len(other) > 0 {
		fmt.Fprintf(out, ", %d others (%s)", len(other), strings.Join(other, ", "))
	}
	fmt.Fprintf(out, ";\n  panic mode: %s; %d requests without an answer\n\n",
		map[bool]string{true: "entered", false: "never"}[panics > 0], d.unanswered.Load())
	if n := d.unanswered.Load(); n > 0 {
		return fmt.Errorf("%s: %d requests got no answer; the first: %w", d.name, n, d.firstErr)
	}
	return nil
}

// total is the number of requests that reached any of bs in [from, to).
func total(bs []*backend, from, to time.Time) int {
	n := 0
	for _, b := range bs {
		n += b.count(from, to)
	}
	return n
}

// conditionChange names the condition a ConditionChanged event set or
// cleared.
func conditionChange(ev balancer.Event) string {
	if on := ev.New &^ ev.Old; on != 0 {
		return "+" + on.String()
	}
	return "-" + (ev.Old &^ ev.New).String()
}

func turnedOn(ev balancer.Event, c balancer.Condition) bool {
	return ev.Kind == balancer.ConditionChanged && ev.Old&c == 0 && ev.New&c != 0
}

func turnedOff(ev balancer.Event, c balancer.Condition) bool {
	return ev.Kind == balancer.ConditionChanged && ev.Old&c != 0 && ev.New&c == 0
}

// waitFor polls cond every 5ms for up to d.
func waitFor(d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", d)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

// watcher keeps an engine's events, from Engine.Subscribe.
type watcher struct {
	mu     sync.Mutex
	events []balancer.Event
	wake   chan struct{} // one waiter
}

func (w *watcher) add(ev balancer.Event) {
	w.mu.Lock()
	w.events = append(w.events, ev)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *watcher) len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.events)
}

func (w *watcher) since(i int) []balancer.Event {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]balancer.Event(nil), w.events[i:]...)
}

// find returns the first event from index i on that matches, or nil.
func (w *watcher) find(i int, match func(balancer.Event) bool) *balancer.Event {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, ev := range w.events[i:] {
		if match(ev) {
			return &ev
		}
	}
	return nil
}

// await waits up to timeout for an event from index *cur on that matches,
// returns it and moves *cur past it.
func (w *watcher) await(cur *int, timeout time.Duration, what string, match func(balancer.Event) bool) (balancer.Event, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		w.mu.Lock()
		for i := *cur; i < len(w.events); i++ {
			if match(w.events[i]) {
				ev := w.events[i]
				*cur = i + 1
				w.mu.Unlock()
				return ev, nil
			}
		}
		w.mu.Unlock()
		select {
		case <-w.wake:
		case <-t.C:
			return balancer.Event{}, fmt.Errorf("no %s within %v", what, timeout)
		}
	}
}
