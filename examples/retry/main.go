// Command retry shows lodestar's retries at work through both front doors,
// with one retry configuration.
//
//	go run ./examples/retry
//
// It starts four real HTTP backends and four real gRPC backends (grpc's
// interop TestService) on 127.0.0.1, a lodestar.Transport over the first and
// a gRPC channel with the "lodestar" policy and lodestar's retry interceptors
// (grpcpolicy.NewRetries) over the others, and makes backends fail in four
// ways, one after the other:
//
//  1. a is hard down (HTTP: its listener is closed, so connections are
//     refused; gRPC: it answers UNAVAILABLE to everything). Idempotent
//     requests (HTTP GET; gRPC EmptyCall, listed in IdempotentMethods) all
//     succeed: each one a receives is retried on another backend. The same
//     load through a Transport (a channel) without the retry section fails
//     a quarter of the time over gRPC; over HTTP, 5 fail, and then failure
//     accrual (on by default: 5 refused connections in a row) ejects a.
//  2. c reads each request, then drops the connection. A write (HTTP POST;
//     gRPC UnaryCall) may have been processed, so it is sent once and
//     fails: a non-idempotent request is never sent twice. The same write
//     marked with lodestar.WithIdempotent (retry.WithIdempotent) is retried
//     elsewhere and succeeds.
//  3. d answers 429 with Retry-After: 1 (gRPC: RESOURCE_EXHAUSTED with the
//     trailer grpc-retry-pushback-ms: 1000). The request is retried on
//     another backend, and d is paused: it gets no request for a second,
//     although it is fixed at once, then traffic returns to it.
//  4. A retry storm: every backend fails. The retry budget keeps the
//     attempts within (1+ratio)·N + minPerSecond·(seconds + window) for N
//     requests, where a client with no budget would send maxAttempts·N.
//
// Each phase prints a table of what the caller saw (requests sent and
// failed), what the client sent (attempts, retries included), what each
// backend received, and what the retry budget granted and refused. The two
// doors run at the same time, each with its own backends, and the program
// finishes in about two seconds.
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
	"google.golang.org/grpc/peer"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/grpcpolicy"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	_ "github.com/lodestar-go/lodestar/resolver/grpcresolver" // "static:///" for gRPC
	"github.com/lodestar-go/lodestar/retry"
)

// retrySection is the one retry configuration, the "retry" section of both
// doors' configuration: up to 3 attempts; retry on connection errors,
// connections dropped before an answer, 502/503/504 (UNAVAILABLE) and 429
// (RESOURCE_EXHAUSTED); a full-jitter backoff from 5ms, which also caps how
// long a retry waits for a server's Retry-After (the pause of the endpoint
// that sent it is not capped by it); and Finagle's retry budget: retries
// within 20% of the requests of the last 10s, plus 10 a second.
const retrySection = `{"maxAttempts": 3,
   "retryOn": ["connect_error", "reset", "gateway_error", "overloaded"],
   "backoff": {"base": "5ms", "max": "50ms"},
   "budget": {"ratio": 0.2, "minPerSecond": 10, "window": "10s"}}`

// algorithm is ring hash, so that a request with an affinity key (a user)
// goes to the key's backend; requests without one go round robin.
const algorithm = `{"ring_hash": {"fallback": "round_robin"}}`

// config returns the doors' configuration, with or without the retry section.
func config(withRetry bool) string {
	if !withRetry {
		return `{"algorithm": ` + algorithm + `}`
	}
	return `{"algorithm": ` + algorithm + `,
 "retry": ` + retrySection + `}`
}

// Load sizes.
const (
	phase1Requests = 200                  // sent one at a time
	pace           = 5 * time.Millisecond // between the requests of phase 3
	stormRequests  = 400
	stormWorkers   = 8
)

// quiet drops the library's log lines.
var quiet = slog.New(slog.DiscardHandler)

// engines hands each gRPC channel's engine to the code waiting for it, by the
// channel's target endpoint.
var engines sync.Map // target endpoint → chan *balancer.Engine

func init() {
	// The "lodestar" policy, registered again with a hook that hands each
	// channel's engine over. It replaces the one grpcpolicy registers, in
	// this program only.
	grpcbalancer.Register(grpcpolicy.NewBuilder(grpcpolicy.Options{
		Name:   grpcpolicy.Name,
		Logger: quiet,
		OnEngine: func(target string, e *balancer.Engine) {
			if ch, ok := engines.Load(target); ok {
				select {
				case ch.(chan *balancer.Engine) <- e:
				default:
				}
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
	cfg, err := balancer.ParseConfig([]byte(config(true)))
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "One configuration for both doors (HTTP: a Transport service's Config; gRPC: the lodestar policy's loadBalancingConfig):\n%s\n\n", config(true))
	fmt.Fprintf(out, `Each door: 4 backends a-d on 127.0.0.1. In the tables:
  sent, failed   requests the caller made, and those that failed (an error, or a status other than 200)
  attempts       what the client sent, retries included (counted under lodestar: a RoundTripper, a gRPC interceptor)
  a b c d        requests that reached each backend
  withdrawn      retries the budget granted; refused: retries it refused ("-": no retry section)

`)
	doors := []func(io.Writer, balancer.Config) error{runHTTP, runGRPC}
	outs := make([]bytes.Buffer, len(doors))
	errs := make([]error, len(doors))
	var wg sync.WaitGroup
	for i, f := range doors {
		wg.Go(func() { errs[i] = f(&outs[i], cfg) })
	}
	wg.Wait()
	for i := range doors {
		out.Write(outs[i].Bytes())
		if errs[i] != nil {
			return errs[i]
		}
	}
	fmt.Fprint(out, `What it shows:
  - A backend that is down costs an idempotent request one extra attempt, not a failure: the retry goes to
    another backend (a retry never goes back to one the request tried while another is eligible).
  - A request that may have been processed is sent again only if it is marked idempotent: by its method
    (GET, PUT, ...; gRPC: IdempotentMethods), an Idempotency-Key header, or WithIdempotent.
  - A backend that asks for a pause gets it: no request for the time it asked, the others serve meanwhile.
    The retry itself waits at most backoff.max, as it goes elsewhere.
  - When everything fails, retries add at most the budget's ratio to the load (plus minPerSecond), instead
    of multiplying it by maxAttempts: retrying does not turn an outage into an overload.
`)
	return nil
}

// client is one of a door's three clients.
type client int

const (
	withRetries    client = iota // the configuration with the retry section
	withoutRetries               // the same without it
	storm                        // the configuration with the retry section, a budget of its own
)

// counts is what a client sent and what the backends received, as of a
// moment; a row of a table is the difference of two.
type counts struct {
	sent, failed       int
	attempts           int64
	recv               [4]int
	withdrawn, refused int64
	noBudget           bool
}

func (c counts) minus(o counts) counts {
	c.attempts -= o.attempts
	for i := range c.recv {
		c.recv[i] -= o.recv[i]
	}
	c.withdrawn -= o.withdrawn
	c.refused -= o.refused
	return c
}

// door is one front door: its backends and its three clients.
type door struct {
	name string     // "HTTP", "gRPC"
	bs   []*backend // a, b, c, d
	eng  *balancer.Engine
	// The words of the door.
	read, write, mark, down, reset, overloaded, fail string

	// send sends one request through cl: an idempotent read, or a write
	// (idempotent only if ctx is marked). It returns the name of the backend
	// that answered.
	send func(ctx context.Context, cl client, write bool) (who string, err error)
	// idempotent marks ctx (lodestar.WithIdempotent, retry.WithIdempotent).
	idempotent func(context.Context) context.Context
	// snapshot returns cl's attempts and budget so far.
	snapshot func(cl client) counts
	// reconnected, called before a backend drops a connection, returns a
	// function that waits for the retrying client to be connected to it
	// again (gRPC: the channel makes a new connection; HTTP: nothing to wait
	// for, a request dials when it needs to).
	reconnected func(addr string) (wait func() error)
}

// take returns cl's counts now, with what the backends received.
func (d *door) take(cl client) counts {
	c := d.snapshot(cl)
	for i, b := range d.bs {
		c.recv[i] = b.count()
	}
	return c
}

// measure runs f, which sends requests through cl and says how many it sent
// and how many failed, and returns its row.
func (d *door) measure(cl client, f func() (sent, failed int)) counts {
	before := d.take(cl)
	sent, failed := f()
	row := d.take(cl).minus(before)
	row.sent, row.failed = sent, failed
	return row
}

// sequence sends n reads through cl, one at a time, with ctx.
func (d *door) sequence(ctx context.Context, cl client, n int) (sent, failed int) {
	for range n {
		if _, err := d.send(ctx, cl, false); err != nil {
			failed++
		}
	}
	return n, failed
}

const rowFormat = "     %-36s %5s %6s %8s %5s %4s %4s %4s %9s %7s\n"

func header(out io.Writer) {
	fmt.Fprintf(out, rowFormat, "", "sent", "failed", "attempts", "a", "b", "c", "d", "withdrawn", "refused")
}

func printRow(out io.Writer, label string, c counts) {
	w, r := fmt.Sprint(c.withdrawn), fmt.Sprint(c.refused)
	if c.noBudget {
		w, r = "-", "-"
	}
	fmt.Fprintf(out, rowFormat, label, fmt.Sprint(c.sent), fmt.Sprint(c.failed), fmt.Sprint(c.attempts),
		fmt.Sprint(c.recv[0]), fmt.Sprint(c.recv[1]), fmt.Sprint(c.recv[2]), fmt.Sprint(c.recv[3]), w, r)
}

// keyFor returns an affinity key (a user) that the engine's ring maps to
// addr. Each trial pick is reported back as never sent.
func keyFor(eng *balancer.Engine, addr string) (string, error) {
	for i := range 10000 {
		k := fmt.Sprintf("user-%d", i)
		ep, err := eng.Pick(balancer.PickInfo{Hash: balancer.HashKey(k), HasHash: true})
		if err != nil {
			return "", err
		}
		eng.Done(ep, outcome.Outcome{Class: outcome.NotSent})
		if ep.Address() == addr {
			return k, nil
		}
	}
	return "", fmt.Errorf("no key maps to %s", addr)
}

// waitEligible polls until every one of addrs is eligible in eng.
func waitEligible(eng *balancer.Engine, addrs []string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := 0
		for _, a := range addrs {
			if ep := eng.Endpoint(a); ep != nil && ep.Conditions() == 0 {
				n++
			}
		}
		if n == len(addrs) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d endpoints eligible after 10s", n, len(addrs))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// scenario runs the four phases on d, printing as it goes.
func (d *door) scenario(out io.Writer, cfg balancer.Config) error {
	a, c, dd := d.bs[0], d.bs[2], d.bs[3]
	keyC, err := keyFor(d.eng, c.addr)
	if err != nil {
		return err
	}
	keyD, err := keyFor(d.eng, dd.addr)
	if err != nil {
		return err
	}
	bg := context.Background()

	// 1. A hard-down backend among four.
	a.down()
	fmt.Fprintf(out, "\n1. a is hard down (%s).\n   %d %ss, one at a time, round robin (no affinity key):\n", d.down, phase1Requests, d.read)
	header(out)
	with := d.measure(withRetries, func() (int, int) { return d.sequence(bg, withRetries, phase1Requests) })
	printRow(out, "with retries", with)
	without := d.measure(withoutRetries, func() (int, int) { return d.sequence(bg, withoutRetries, phase1Requests) })
	printRow(out, "without retries (no retry section)", without)
	if without.failed < phase1Requests/4 {
		fmt.Fprintf(out, "   without retries, %d failed before failure accrual (on by default) ejected a for its refused connections\n", without.failed)
	}

	// 2. Safety: a backend that drops the connection after reading a write.
	c.setMode(modeReset)
	fmt.Fprintf(out, "\n2. c reads each request, then drops the connection (%s).\n   One %s for %s, whose key maps to c; then the same %s marked with %s:\n",
		d.reset, d.write, keyC, d.write, d.mark)
	ctxC := balancer.WithAffinityKey(bg, keyC)
	var writeErr error
	wait := d.reconnected(c.addr)
	plain := d.measure(withRetries, func() (int, int) {
		_, writeErr = d.send(ctxC, withRetries, true)
		return 1, failures(writeErr)
	})
	if err := wait(); err != nil {
		return err
	}
	var who string
	var markedErr error
	wait = d.reconnected(c.addr)
	marked := d.measure(withRetries, func() (int, int) {
		who, markedErr = d.send(d.idempotent(ctxC), withRetries, true)
		return 1, failures(markedErr)
	})
	c.setMode(modeOK)
	if err := wait(); err != nil {
		return err
	}
	header(out)
	printRow(out, d.write, plain)
	printRow(out, d.write+" + "+d.mark, marked)
	fmt.Fprintf(out, "   the %s: %v\n", d.write, errText(writeErr))
	fmt.Fprintf(out, "   the marked %s: %s\n", d.write, answered(who, marked.attempts, markedErr))

	// 3. Overload: a backend that asks for a pause.
	if err := d.overload(out, keyD); err != nil {
		return err
	}

	// 4. A retry storm.
	for _, b := range d.bs[1:] {
		b.setMode(modeUnavailable)
	}
	fmt.Fprintf(out, "\n4. Retry storm: every backend fails (a is still down; b, c and d answer %s).\n", d.fail)
	fmt.Fprintf(out, "   %d %ss, %d at a time, through a client of its own (the same configuration: a fresh budget):\n",
		stormRequests, d.read, stormWorkers)
	start := time.Now()
	row := d.measure(storm, func() (int, int) {
		var failed atomic.Int64
		var wg sync.WaitGroup
		for w := range stormWorkers {
			wg.Go(func() {
				for i := w; i < stormRequests; i += stormWorkers {
					if _, err := d.send(bg, storm, false); err != nil {
						failed.Add(1)
					}
				}
			})
		}
		wg.Wait()
		return stormRequests, int(failed.Load())
	})
	secs := time.Since(start).Seconds()
	header(out)
	printRow(out, "storm", row)
	rc := cfg.Retry
	ratio, perSecond, window := *rc.Budget.Ratio, *rc.Budget.MinPerSecond, rc.Budget.Window.Seconds()
	bound := int64((1+ratio)*stormRequests + float64(perSecond)*(secs+window))
	fmt.Fprintf(out, "   attempts %d ≤ bound %d = (1+%.1f)·%d + %d·(%.2fs + %.0fs) [ratio, minPerSecond, window]: %v\n   a client without a budget would have sent maxAttempts·%d = %d\n",
		row.attempts, bound, ratio, stormRequests, perSecond, secs, window, row.attempts <= bound,
		stormRequests, rc.MaxAttempts*stormRequests)
	return nil
}

// overload is phase 3: d asks for a pause of a second.
func (d *door) overload(out io.Writer, keyD string) error {
	dd := d.bs[3]
	fmt.Fprintf(out, "\n3. d answers %s.\n   One %s for %s, whose key maps to d; d is fixed as soon as it has answered:\n", d.overloaded, d.read, keyD)

	// d's pause and its end, as the engine reports them.
	pauses := make(chan balancer.Event, 8)
	defer d.eng.Subscribe(func(ev balancer.Event) {
		if ev.Kind == balancer.ConditionChanged && ev.Address == dd.addr && (ev.Old^ev.New)&balancer.Paused != 0 {
			select {
			case pauses <- ev:
			default:
			}
		}
	})()
	await := func(what string, on bool) (balancer.Event, error) {
		t := time.NewTimer(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case ev := <-pauses:
				if (ev.New&balancer.Paused != 0) == on {
					return ev, nil
				}
			case <-t.C:
				return balancer.Event{}, fmt.Errorf("%s: no %s within 5s", d.name, what)
			}
		}
	}

	dd.setMode(modeOverloaded)
	var who string
	var err error
	first := d.measure(withRetries, func() (int, int) {
		who, err = d.send(balancer.WithAffinityKey(context.Background(), keyD), withRetries, false)
		return 1, failures(err)
	})
	dd.setMode(modeOK)
	on, perr := await("pause of d", true)
	if perr != nil {
		return perr
	}
	fmt.Fprintf(out, "   the %s: %s; d: %s → %s (%s)\n", d.read, answered(who, first.attempts, err), on.Old, on.New, on.Why)

	// Requests every pace, round robin, until stop.
	fmt.Fprintf(out, "   Then one %s every %v, round robin. What each backend has received since the phase began:\n", d.read, pace)
	ctx, cancel := context.WithCancel(context.Background())
	var sent, failed atomic.Int64
	done := make(chan struct{})
	before := d.take(withRetries)
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			if _, err := d.send(context.Background(), withRetries, false); err != nil {
				failed.Add(1)
			}
			sent.Add(1)
			select {
			case <-ctx.Done():
			case <-time.After(pace):
			}
		}
	}()
	stopLoad := func() {
		cancel()
		<-done
	}
	defer stopLoad()

	var phaseStart [4]int // the counts as the phase began
	for i := range phaseStart {
		phaseStart[i] = before.recv[i] - first.recv[i]
	}
	since := func(t time.Time) string { return fmt.Sprintf("+%.2fs", t.Sub(on.At).Seconds()) }
	sample := func(label string, now counts) {
		fmt.Fprintf(out, "     %-22s", label)
		for i, name := range []string{"a", "b", "c", "d"} {
			fmt.Fprintf(out, "  %s %4d", name, now.recv[i]-phaseStart[i])
		}
		fmt.Fprintln(out)
	}
	for _, at := range []time.Duration{250, 500, 750} {
		time.Sleep(time.Until(on.At.Add(at * time.Millisecond)))
		// Counts taken while d is paused, as it still is once they are
		// taken (a slow machine may have slept past the pause).
		t, now := time.Now(), d.take(withRetries)
		if d.eng.Endpoint(dd.addr).Conditions()&balancer.Paused == 0 {
			break
		}
		sample(since(t)+" (paused)", now)
	}
	off, perr := await("end of d's pause", false)
	if perr != nil {
		return perr
	}
	fmt.Fprintf(out, "     %-22s  d: %s → %s (%s)\n", since(off.At), off.Old, off.New, off.Why)
	// Traffic returns: wait for d's first request since, at least 250ms.
	time.Sleep(time.Until(off.At.Add(250 * time.Millisecond)))
	deadline := time.Now().Add(3 * time.Second)
	for dd.arrivedIn(off.At, time.Now().Add(time.Hour)) == 0 && time.Now().Before(deadline) {
		time.Sleep(pace)
	}
	sample(since(time.Now()), d.take(withRetries))
	stopLoad()
	load := d.take(withRetries).minus(before)
	load.sent, load.failed = int(sent.Load()), int(failed.Load())

	during := dd.arrivedIn(on.At, off.At)
	after := dd.arrivedIn(off.At, time.Now().Add(time.Hour))
	fmt.Fprintf(out, "   d received %d requests during its %.2fs pause, %d after it\n", during, off.At.Sub(on.At).Seconds(), after)
	header(out)
	printRow(out, "one "+d.read+" for d's user", first)
	printRow(out, d.read+"s every "+pace.String(), load)
	return nil
}

func failures(err error) int {
	if err != nil {
		return 1
	}
	return 0
}

func errText(err error) string {
	if err == nil {
		return "succeeded"
	}
	return "failed: " + err.Error()
}

// answered says who answered a request, after how many attempts.
func answered(who string, attempts int64, err error) string {
	if err != nil {
		return fmt.Sprintf("failed after %d attempts: %v", attempts, err)
	}
	if attempts == 1 {
		return fmt.Sprintf("answered by %s at the first attempt", who)
	}
	return fmt.Sprintf("answered by %s after %d attempts", who, attempts)
}

// runHTTP runs the scenario through lodestar.Transports.
func runHTTP(out io.Writer, cfg balancer.Config) error {
	var bs []*backend
	var addrs []string
	for _, name := range []string{"a", "b", "c", "d"} {
		b, err := startHTTP(name)
		if err != nil {
			return err
		}
		defer b.stop()
		bs = append(bs, b)
		addrs = append(addrs, b.addr)
	}
	plainCfg, err := balancer.ParseConfig([]byte(config(false)))
	if err != nil {
		return err
	}
	target := "static:///" + strings.Join(addrs, ",")

	// Two services with the retry configuration: "api" for phases 1-3 and
	// "storm" for phase 4, each with its budget. The Base under them counts
	// every attempt, by service (the attempt's Host header).
	base := &countingRT{base: http.DefaultTransport.(*http.Transport).Clone(),
		attempts: map[string]*atomic.Int64{"api": new(atomic.Int64), "storm": new(atomic.Int64)}}
	tr, err := lodestar.NewTransport(lodestar.Options{
		Base:   base,
		Logger: quiet,
		Services: map[string]lodestar.Service{
			"api":   {Target: target, Config: cfg},
			"storm": {Target: target, Config: cfg},
		},
	})
	if err != nil {
		return err
	}
	defer tr.Close()
	// The same service without the retry section.
	plainBase := &countingRT{base: http.DefaultTransport.(*http.Transport).Clone(),
		attempts: map[string]*atomic.Int64{"api": new(atomic.Int64)}}
	plain, err := lodestar.NewTransport(lodestar.Options{
		Base:     plainBase,
		Logger:   quiet,
		Services: map[string]lodestar.Service{"api": {Target: target, Config: plainCfg}},
	})
	if err != nil {
		return err
	}
	defer plain.Close()
	for _, t := range []*lodestar.Transport{tr, plain} {
		if err := waitEligible(t.Engine("api"), addrs); err != nil {
			return fmt.Errorf("HTTP: %w", err)
		}
	}

	clients := map[client]*http.Client{withRetries: {Transport: tr}, withoutRetries: {Transport: plain}, storm: {Transport: tr}}
	hosts := map[client]string{withRetries: "api", withoutRetries: "api", storm: "storm"}
	d := &door{
		name: "HTTP", bs: bs, eng: tr.Engine("api"),
		read: "GET", write: "POST", mark: "lodestar.WithIdempotent",
		down:       "its listener is closed: connections to it are refused, so it receives nothing",
		reset:      "the handler hijacks the connection and closes it",
		overloaded: "429 with Retry-After: 1",
		fail:       "503",
		send: func(ctx context.Context, cl client, write bool) (string, error) {
			method, path, body := "GET", "/items", io.Reader(nil)
			if write {
				method, path, body = "POST", "/orders", strings.NewReader(`{"item": 42}`)
			}
			req, err := http.NewRequestWithContext(ctx, method, "http://"+hosts[cl]+path, body)
			if err != nil {
				return "", err
			}
			resp, err := clients[cl].Do(req)
			if err != nil {
				return "", err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				return "", err
			}
			if resp.StatusCode != http.StatusOK {
				return "", fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
			}
			return string(b), nil
		},
		idempotent: lodestar.WithIdempotent,
		snapshot: func(cl client) counts {
			switch cl {
			case withoutRetries:
				return counts{attempts: plainBase.attempts["api"].Load(), noBudget: true}
			default:
				budget := tr.RetryBudget(hosts[cl])
				return counts{attempts: base.attempts[hosts[cl]].Load(),
					withdrawn: int64(budget.Withdrawn()), refused: int64(budget.Refused())}
			}
		},
		reconnected: func(string) func() error { return func() error { return nil } },
	}
	fmt.Fprintf(out, "== HTTP: a lodestar.Transport, service \"api\"; backends:")
	for _, b := range bs {
		fmt.Fprintf(out, " %s=%s", b.name, b.addr)
	}
	fmt.Fprintln(out)
	if err := d.scenario(out, cfg); err != nil {
		return fmt.Errorf("HTTP: %w", err)
	}
	fmt.Fprintf(out, "   budgets (Transport.RetryBudget): \"api\" withdrawn %d, refused %d; \"storm\" withdrawn %d, refused %d\n\n",
		tr.RetryBudget("api").Withdrawn(), tr.RetryBudget("api").Refused(),
		tr.RetryBudget("storm").Withdrawn(), tr.RetryBudget("storm").Refused())
	return nil
}

// countingRT is the Base of a Transport: it counts the attempts of each
// service (by Host header) and sends them with base.
type countingRT struct {
	base     *http.Transport
	attempts map[string]*atomic.Int64 // read-only after construction
}

func (c *countingRT) RoundTrip(req *http.Request) (*http.Response, error) {
	if n, ok := c.attempts[req.Host]; ok {
		n.Add(1)
	}
	return c.base.RoundTrip(req)
}

// CloseIdleConnections closes base's idle connections (Transport.Close
// calls it).
func (c *countingRT) CloseIdleConnections() { c.base.CloseIdleConnections() }

// grpcCounts counts one channel's calls and attempts, by two interceptors:
// one outside lodestar's retry interceptor (calls), one inside it (attempts).
type grpcCounts struct {
	calls, attempts atomic.Int64
	// refused counts the idempotent calls that failed before their last
	// attempt. The channel's budget is not exported, so this program
	// counts its refusals: in this program, every failure of an idempotent
	// call is retryable, so only the budget stops one short.
	refused     atomic.Int64
	maxAttempts int
}

type attemptsKey struct{}

const (
	emptyCall = "/grpc.testing.TestService/EmptyCall" // the idempotent read
)

func (g *grpcCounts) outer(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	g.calls.Add(1)
	n := new(atomic.Int64)
	err := invoker(context.WithValue(ctx, attemptsKey{}, n), method, req, reply, cc, opts...)
	if err != nil && n.Load() < int64(g.maxAttempts) && (method == emptyCall || retry.IsIdempotent(ctx)) {
		g.refused.Add(1)
	}
	return err
}

func (g *grpcCounts) inner(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	g.attempts.Add(1)
	if n, ok := ctx.Value(attemptsKey{}).(*atomic.Int64); ok {
		n.Add(1)
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// runGRPC runs the scenario through gRPC channels with the lodestar policy.
func runGRPC(out io.Writer, cfg balancer.Config) error {
	var bs []*backend
	names := map[string]string{} // address → name
	for _, name := range []string{"a", "b", "c", "d"} {
		b, err := startGRPC(name)
		if err != nil {
			return err
		}
		defer b.stop()
		bs = append(bs, b)
		names[b.addr] = name
	}
	retries, err := grpcpolicy.NewRetries(grpcpolicy.RetryOptions{IdempotentMethods: []string{emptyCall}})
	if err != nil {
		return err
	}

	// Three channels: with the retry section, without it, and with it again
	// for the storm (a channel has a budget of its own). Each channel's
	// target lists the backends in its own order, to tell their engines
	// apart.
	counters := map[client]*grpcCounts{}
	conns := map[client]testgrpc.TestServiceClient{}
	var eng *balancer.Engine
	for _, ch := range []struct {
		cl    client
		order []int
		retry bool
	}{{withRetries, []int{0, 1, 2, 3}, true}, {withoutRetries, []int{1, 2, 3, 0}, false}, {storm, []int{2, 3, 0, 1}, true}} {
		var addrs []string
		for _, i := range ch.order {
			addrs = append(addrs, bs[i].addr)
		}
		endpoint := strings.Join(addrs, ",")
		got := make(chan *balancer.Engine, 1)
		engines.Store(endpoint, got)
		defer engines.Delete(endpoint)

		g := &grpcCounts{maxAttempts: cfg.Retry.MaxAttempts}
		counters[ch.cl] = g
		opts := []grpc.DialOption{
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultServiceConfig(fmt.Sprintf(`{"loadBalancingConfig": [{"lodestar": %s}]}`, config(ch.retry))),
			grpc.WithChainUnaryInterceptor(g.outer),
		}
		opts = append(opts, retries.DialOptions()...)
		opts = append(opts, grpc.WithChainUnaryInterceptor(g.inner))
		conn, err := grpc.NewClient("static:///"+endpoint, opts...)
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.Connect()
		var e *balancer.Engine
		select {
		case e = <-got:
		case <-time.After(10 * time.Second):
			return fmt.Errorf("gRPC: the channel made no lodestar engine within 10s")
		}
		if err := waitEligible(e, addrs); err != nil {
			return fmt.Errorf("gRPC: %w", err)
		}
		if ch.cl == withRetries {
			eng = e
		}
		conns[ch.cl] = testgrpc.NewTestServiceClient(conn)
	}

	var allAddrs []string
	for _, b := range bs {
		allAddrs = append(allAddrs, b.addr)
	}
	d := &door{
		name: "gRPC", bs: bs, eng: eng,
		read: "EmptyCall", write: "UnaryCall", mark: "retry.WithIdempotent",
		down:       "it answers UNAVAILABLE to everything",
		reset:      "the server closes the call's connection",
		overloaded: "RESOURCE_EXHAUSTED with the trailer grpc-retry-pushback-ms: 1000",
		fail:       "UNAVAILABLE",
		send: func(ctx context.Context, cl client, write bool) (string, error) {
			var p peer.Peer
			var err error
			if write {
				_, err = conns[cl].UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: []byte(`{"item": 42}`)}}, grpc.Peer(&p))
			} else {
				_, err = conns[cl].EmptyCall(ctx, &testgrpc.Empty{}, grpc.Peer(&p))
			}
			if err != nil {
				return "", err
			}
			if p.Addr == nil {
				return "?", nil
			}
			return names[p.Addr.String()], nil
		},
		idempotent: retry.WithIdempotent,
		snapshot: func(cl client) counts {
			g := counters[cl]
			c := counts{attempts: g.attempts.Load()}
			if cl == withoutRetries {
				c.noBudget = true
			} else {
				c.withdrawn, c.refused = g.attempts.Load()-g.calls.Load(), g.refused.Load()
			}
			return c
		},
		reconnected: func(addr string) func() error {
			// The connection is dropped, the channel sees it (the endpoint
			// is not connected) and connects again: wait for that, as the
			// engine reports it.
			evs := make(chan balancer.Event, 16)
			cancel := eng.Subscribe(func(ev balancer.Event) {
				if ev.Kind == balancer.ConditionChanged && ev.Address == addr && (ev.Old^ev.New)&balancer.NotConnected != 0 {
					select {
					case evs <- ev:
					default:
					}
				}
			})
			return func() error {
				defer cancel()
				t := time.NewTimer(10 * time.Second)
				defer t.Stop()
				for {
					select {
					case ev := <-evs:
						if ev.New&balancer.NotConnected == 0 {
							return waitEligible(eng, allAddrs)
						}
					case <-t.C:
						return fmt.Errorf("the channel did not connect to %s again within 10s", addr)
					}
				}
			}
		},
	}
	fmt.Fprintf(out, "== gRPC: a channel with the \"lodestar\" policy and grpcpolicy.NewRetries' interceptors; backends:")
	for _, b := range bs {
		fmt.Fprintf(out, " %s=%s", b.name, b.addr)
	}
	fmt.Fprintf(out, "\n   (withdrawn and refused are counted by interceptors around lodestar's: the channel's budget is internal)\n")
	if err := d.scenario(out, cfg); err != nil {
		return fmt.Errorf("gRPC: %w", err)
	}
	fmt.Fprintln(out)
	return nil
}
