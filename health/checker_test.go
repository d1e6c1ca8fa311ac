package health

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// waitTimeout bounds every wait for a callback: generous, since the waits
// are for events that come within milliseconds unless something is broken.
const waitTimeout = 20 * time.Second

// quiet is the tests' logger.
var quiet = slog.New(slog.DiscardHandler)

// ---- backends ----

// backend is a loopback server that can be turned healthy or unhealthy.
type backend interface {
	addr() string
	setHealthy(bool)
	// served counts the healthy (or unhealthy) answers given so far, or is
	// -1 when the server cannot see them (a refused TCP connection).
	served(healthy bool) int64
	close()
}

// httpBackend is a net/http test server answering its current status: 0
// means hang until the request is cancelled.
type httpBackend struct {
	srv      *httptest.Server
	status   atomic.Int32
	mu       sync.Mutex
	counts   map[int]int64 // answers by status; -1 counts hung requests
	lastHost string
	release  chan struct{}
	hanging  chan struct{} // a value for each request that hangs
}

func newHTTPBackend(t *testing.T, tlsOn bool) *httpBackend {
	b := &httpBackend{counts: map[int]int64{}, release: make(chan struct{}), hanging: make(chan struct{}, 1000)}
	b.status.Store(200)
	b.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		status := int(b.status.Load())
		b.mu.Lock()
		b.lastHost = r.Host
		if status == 0 {
			b.counts[-1]++
		} else {
			b.counts[status]++
		}
		b.mu.Unlock()
		if status == 0 {
			select {
			case b.hanging <- struct{}{}:
			default:
			}
			select {
			case <-r.Context().Done():
			case <-b.release:
			}
			return
		}
		w.WriteHeader(status)
		_, _ = w.Write([]byte("ok\n"))
	}))
	if tlsOn {
		b.srv.StartTLS()
	} else {
		b.srv.Start()
	}
	t.Cleanup(b.close)
	return b
}

func (b *httpBackend) addr() string { return b.srv.Listener.Addr().String() }
func (b *httpBackend) setHealthy(ok bool) {
	if ok {
		b.status.Store(200)
	} else {
		b.status.Store(503)
	}
}
func (b *httpBackend) count(status int) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.counts[status]
}
func (b *httpBackend) served(ok bool) int64 {
	if ok {
		return b.count(200)
	}
	return b.count(503)
}
func (b *httpBackend) host() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.lastHost
}
func (b *httpBackend) total() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	var n int64
	for _, c := range b.counts {
		n += c
	}
	return n
}
func (b *httpBackend) close() {
	select {
	case <-b.release:
	default:
		close(b.release)
		b.srv.Close()
	}
}

// countingHealth is grpc's own health server, counting the answers of Check.
type countingHealth struct {
	*grpchealth.Server
	serving, notServing atomic.Int64
}

func (h *countingHealth) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	resp, err := h.Server.Check(ctx, req)
	if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
		h.serving.Add(1)
	} else {
		h.notServing.Add(1)
	}
	return resp, err
}

const grpcService = "lodestar.test.Echo"

// grpcBackend is a real gRPC server with grpc's health service.
type grpcBackend struct {
	lis    net.Listener
	srv    *grpc.Server
	health *countingHealth
	done   chan struct{}
}

func newGRPCBackend(t *testing.T, network, address string, opts ...grpc.ServerOption) *grpcBackend {
	lis, err := net.Listen(network, address)
	if err != nil {
		t.Fatal(err)
	}
	b := &grpcBackend{lis: lis, srv: grpc.NewServer(opts...), health: &countingHealth{Server: grpchealth.NewServer()}, done: make(chan struct{})}
	b.health.SetServingStatus(grpcService, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(b.srv, b.health)
	go func() {
		defer close(b.done)
		_ = b.srv.Serve(lis)
	}()
	t.Cleanup(b.close)
	return b
}

func (b *grpcBackend) addr() string { return b.lis.Addr().String() }
func (b *grpcBackend) setHealthy(ok bool) {
	s := healthpb.HealthCheckResponse_NOT_SERVING
	if ok {
		s = healthpb.HealthCheckResponse_SERVING
	}
	b.health.SetServingStatus(grpcService, s)
}
func (b *grpcBackend) served(ok bool) int64 {
	if ok {
		return b.health.serving.Load()
	}
	return b.health.notServing.Load()
}
func (b *grpcBackend) close() {
	b.srv.Stop()
	<-b.done
}

// tcpBackend accepts (and closes) connections while healthy and refuses
// them, its listener closed, while unhealthy.
type tcpBackend struct {
	t        *testing.T
	address  string
	mu       sync.Mutex
	lis      net.Listener
	accepted atomic.Int64
	wg       sync.WaitGroup
}

func newTCPBackend(t *testing.T) *tcpBackend {
	b := &tcpBackend{t: t, address: "127.0.0.1:0"}
	b.setHealthy(true)
	b.address = b.lis.Addr().String()
	t.Cleanup(b.close)
	return b
}

func (b *tcpBackend) addr() string { return b.address }
func (b *tcpBackend) setHealthy(ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !ok {
		if b.lis != nil {
			_ = b.lis.Close()
			b.lis = nil
		}
		b.wg.Wait()
		return
	}
	if b.lis != nil {
		return
	}
	lis, err := net.Listen("tcp", b.address)
	if err != nil {
		b.t.Errorf("listen again on %s: %v", b.address, err)
		return
	}
	b.lis = lis
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			b.accepted.Add(1)
			_ = c.Close()
		}
	}()
}

// served is -1: a refusal is not seen, and an accepted connection may be
// counted after the client's dial returned.
func (b *tcpBackend) served(bool) int64 { return -1 }
func (b *tcpBackend) close()            { b.setHealthy(false) }

// ---- the callbacks' recorder ----

type changeEvent struct {
	key     string
	healthy bool
	why     string
	run     int   // the length of the key's last run of checks with this result, when reported
	served  int64 // the backend's count of answers of this kind, when reported
}

// recorder keeps every callback of a Checker and lets tests wait on them.
type recorder struct {
	mu       sync.Mutex
	checks   map[string][]bool
	whys     map[string][]string
	changes  []changeEvent
	wake     chan struct{}
	backends map[string]backend // by key, for changeEvent.served
	stopped  map[string]bool    // keys that must not be reported any more
	t        *testing.T
}

func newRecorder(t *testing.T) *recorder {
	return &recorder{checks: map[string][]bool{}, whys: map[string][]string{}, wake: make(chan struct{}),
		backends: map[string]backend{}, stopped: map[string]bool{}, t: t}
}

func (r *recorder) options() CheckerOptions {
	return CheckerOptions{OnCheck: r.onCheck, OnChange: r.onChange, Logger: quiet}
}

func (r *recorder) notify() {
	close(r.wake)
	r.wake = make(chan struct{})
}

func (r *recorder) onCheck(key string, passed bool, why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped[key] {
		r.t.Errorf("check of %s reported after it was removed", key)
	}
	r.checks[key] = append(r.checks[key], passed)
	r.whys[key] = append(r.whys[key], why)
	r.notify()
}

func (r *recorder) onChange(key string, healthy bool, why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped[key] {
		r.t.Errorf("change of %s reported after it was removed", key)
	}
	ev := changeEvent{key: key, healthy: healthy, why: why, served: -1}
	cs := r.checks[key]
	for i := len(cs) - 1; i >= 0 && cs[i] == healthy; i-- {
		ev.run++
	}
	if b := r.backends[key]; b != nil {
		ev.served = b.served(healthy) // the checker waits for us: no check is under way
	}
	r.changes = append(r.changes, ev)
	r.notify()
}

// waitFor waits until cond, called with r.mu held, is true.
func (r *recorder) waitFor(what string, cond func() bool) {
	r.t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		ok, wake := cond(), r.wake
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-wake:
		case <-deadline.C:
			r.t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		}
	}
}

// waitChecks waits until key has had n checks in all, and returns them.
func (r *recorder) waitChecks(key string, n int) []bool {
	r.t.Helper()
	r.waitFor(key+" checked", func() bool { return len(r.checks[key]) >= n })
	return r.checksOf(key)
}

func (r *recorder) checksOf(key string) []bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]bool(nil), r.checks[key]...)
}

// waitChange waits for the change number i (counting from 0) of key.
func (r *recorder) waitChange(key string, i int) changeEvent {
	r.t.Helper()
	var ev changeEvent
	r.waitFor("change of "+key, func() bool {
		n := 0
		for _, c := range r.changes {
			if c.key == key {
				if n == i {
					ev = c
					return true
				}
				n++
			}
		}
		return false
	})
	return ev
}

func (r *recorder) changesOf(key string) []changeEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []changeEvent
	for _, c := range r.changes {
		if c.key == key {
			out = append(out, c)
		}
	}
	return out
}

func (r *recorder) stop(key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped[key] = true
}

func newTestChecker(t *testing.T, cfg HealthCheck, opts CheckerOptions) *Checker {
	t.Helper()
	c, err := NewChecker(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// fast is cfg checking every 5ms (a generous timeout, so that a loaded
// machine fails no check of a healthy server).
func fast(cfg HealthCheck) HealthCheck {
	cfg.Interval = 5 * time.Millisecond
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	return cfg
}

// ---- tests ----

// An endpoint is marked down after exactly unhealthyThreshold failed checks
// and up after exactly healthyThreshold passed ones, for each kind of check;
// the server's own count of the answers it gave says so too.
func TestCheckerThresholds(t *testing.T) {
	for _, tc := range []struct {
		name                string
		cfg                 HealthCheck
		backend             func(t *testing.T) backend
		unhealthy, healthy  int
		unhealthyWhyContain string
	}{
		{"http defaults", HealthCheck{HTTP: &HTTPCheck{Path: "/healthz"}}, func(t *testing.T) backend { return newHTTPBackend(t, false) }, 3, 2, "HTTP status 503, want 200-299"},
		{"http 5 and 4", HealthCheck{HTTP: &HTTPCheck{}, UnhealthyThreshold: 5, HealthyThreshold: 4}, func(t *testing.T) backend { return newHTTPBackend(t, false) }, 5, 4, "HTTP status 503"},
		{"grpc", HealthCheck{GRPC: &GRPCCheck{Service: grpcService}, UnhealthyThreshold: 4, HealthyThreshold: 3}, func(t *testing.T) backend { return newGRPCBackend(t, "tcp", "127.0.0.1:0") }, 4, 3, "gRPC health status NOT_SERVING"},
		{"tcp", HealthCheck{TCP: &TCPCheck{}, UnhealthyThreshold: 2, HealthyThreshold: 1}, func(t *testing.T) backend { return newTCPBackend(t) }, 2, 1, "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.backend(t)
			rec := newRecorder(t)
			key := b.addr()
			rec.backends[key] = b
			c := newTestChecker(t, fast(tc.cfg), rec.options())
			c.Update(map[string]string{key: key})

			rec.waitChecks(key, 3)
			if h, known := c.Healthy(key); !h || !known {
				t.Fatalf("Healthy: %v, %v; want healthy", h, known)
			}
			if ch := rec.changesOf(key); len(ch) != 0 {
				t.Fatalf("changes while healthy: %+v", ch)
			}

			b.setHealthy(false)
			down := rec.waitChange(key, 0)
			if down.healthy || down.run != tc.unhealthy {
				t.Fatalf("down: %+v; want unhealthy after a run of exactly %d failed checks", down, tc.unhealthy)
			}
			if down.served != -1 && down.served != int64(tc.unhealthy) {
				t.Fatalf("down after the server gave %d unhealthy answers, want %d", down.served, tc.unhealthy)
			}
			if !strings.Contains(down.why, tc.unhealthyWhyContain) || !strings.Contains(down.why, "consecutive") {
				t.Fatalf("down's why: %q, want it to contain %q", down.why, tc.unhealthyWhyContain)
			}
			if h, _ := c.Healthy(key); h {
				t.Fatal("Healthy after going down")
			}

			before := b.served(true)
			b.setHealthy(true)
			up := rec.waitChange(key, 1)
			if !up.healthy || up.run != tc.healthy {
				t.Fatalf("up: %+v; want healthy after a run of exactly %d passed checks", up, tc.healthy)
			}
			if up.served != -1 && up.served-before != int64(tc.healthy) {
				t.Fatalf("up after the server gave %d healthy answers, want %d", up.served-before, tc.healthy)
			}
			if h, _ := c.Healthy(key); !h {
				t.Fatal("not Healthy after coming back")
			}
		})
	}
}

// ExpectedStatuses decides which statuses pass; other statuses fail, naming
// the status and the ranges; redirects are not followed.
func TestHTTPExpectedStatuses(t *testing.T) {
	b := newHTTPBackend(t, false)
	c := newTestChecker(t, HealthCheck{HTTP: &HTTPCheck{ExpectedStatuses: []StatusRange{{200, 204}, {418, 418}}}}, CheckerOptions{Logger: quiet})
	p := c.newHTTPProber(b.addr())
	defer p.close()
	for _, tc := range []struct {
		status int
		pass   bool
	}{{200, true}, {204, true}, {205, false}, {302, false}, {404, false}, {418, true}, {419, false}, {500, false}, {503, false}} {
		b.status.Store(int32(tc.status))
		err := c.checkOnce(context.Background(), p)
		if (err == nil) != tc.pass {
			t.Errorf("status %d: %v, want pass %v", tc.status, err, tc.pass)
		}
		if err != nil && err.Error() != "HTTP status "+strconv.Itoa(tc.status)+", want 200-204 or 418" {
			t.Errorf("status %d: error %q", tc.status, err)
		}
	}
}

// The Host header is HTTPCheck.Host, else the service's name, else the
// endpoint's address; the path is HTTPCheck.Path.
func TestHTTPHostHeaderAndPath(t *testing.T) {
	var gotPath atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotPath.Store(r.URL.RequestURI() + " " + r.Host + " " + r.Header.Get("User-Agent"))
	}))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	for _, tc := range []struct {
		host, service, want string
	}{
		{"", "users", "users"},
		{"users.internal:8080", "users", "users.internal:8080"},
		{"", "", addr},
	} {
		c := newTestChecker(t, HealthCheck{HTTP: &HTTPCheck{Path: "/healthz?deep=1", Host: tc.host}}, CheckerOptions{Service: tc.service, Logger: quiet})
		p := c.newHTTPProber(addr)
		if err := c.checkOnce(context.Background(), p); err != nil {
			t.Fatal(err)
		}
		p.close()
		if got, want := gotPath.Load(), "/healthz?deep=1 "+tc.want+" lodestar-health-check"; got != want {
			t.Errorf("host %q, service %q: the server saw %q, want %q", tc.host, tc.service, got, want)
		}
	}
}

// A check that gets no answer within the timeout fails, and the endpoint
// goes down after unhealthyThreshold of them.
func TestHTTPTimeoutIsFailure(t *testing.T) {
	b := newHTTPBackend(t, false)
	b.status.Store(0) // hang
	rec := newRecorder(t)
	key := b.addr()
	c := newTestChecker(t, HealthCheck{HTTP: &HTTPCheck{}, Interval: 5 * time.Millisecond, Timeout: 50 * time.Millisecond, UnhealthyThreshold: 2}, rec.options())
	c.Update(map[string]string{key: key})
	down := rec.waitChange(key, 0)
	if down.healthy || down.run != 2 {
		t.Fatalf("down: %+v, want after 2 failed checks", down)
	}
	if !strings.Contains(down.why, "no answer within the timeout, 50ms") {
		t.Fatalf("why: %q", down.why)
	}
	if n := b.count(-1); n < 2 {
		t.Fatalf("the server saw %d hanging checks, want at least 2", n)
	}
}

// https checks verify the server's certificate against the TLS server name:
// the service's name by default.
func TestHTTPSCheck(t *testing.T) {
	b := newHTTPBackend(t, true)
	pool := x509.NewCertPool()
	pool.AddCert(b.srv.Certificate())
	cfg := HealthCheck{HTTP: &HTTPCheck{Scheme: "https"}}
	for _, tc := range []struct {
		service, serverName string
		ok                  bool
	}{
		{"example.com", "", true}, // httptest's certificate is for example.com
		{"users", "", false},
		{"users", "example.com", true},
	} {
		c := newTestChecker(t, cfg, CheckerOptions{Service: tc.service, TLS: &tls.Config{RootCAs: pool, ServerName: tc.serverName}, Logger: quiet})
		p := c.newHTTPProber(b.addr())
		err := c.checkOnce(context.Background(), p)
		p.close()
		if (err == nil) != tc.ok {
			t.Errorf("service %q, server name %q: %v, want ok %v", tc.service, tc.serverName, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "certificate") {
			t.Errorf("service %q: error %q does not name the certificate", tc.service, err)
		}
	}
}

// gRPC checks: SERVING passes; NOT_SERVING, an unknown service, a server
// without the health service and a stopped server fail.
func TestGRPCCheck(t *testing.T) {
	b := newGRPCBackend(t, "tcp", "127.0.0.1:0")
	probe := func(service string, addr string) error {
		c := newTestChecker(t, HealthCheck{GRPC: &GRPCCheck{Service: service}, Timeout: 5 * time.Second}, CheckerOptions{Logger: quiet})
		p := c.newProber(addr)
		defer p.close()
		return c.checkOnce(context.Background(), p)
	}
	if err := probe(grpcService, b.addr()); err != nil {
		t.Fatalf("SERVING: %v", err)
	}
	if err := probe("", b.addr()); err != nil {
		t.Fatalf(`service "": %v`, err) // grpc's health server serves "" by default
	}
	b.setHealthy(false)
	if err := probe(grpcService, b.addr()); err == nil || !strings.Contains(err.Error(), "NOT_SERVING") {
		t.Fatalf("NOT_SERVING: %v", err)
	}
	if err := probe("no.such.Service", b.addr()); err == nil || !strings.Contains(err.Error(), "NotFound") {
		t.Fatalf("unknown service: %v", err)
	}

	bare := grpc.NewServer()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = bare.Serve(lis) }()
	if err := probe("", lis.Addr().String()); err == nil || !strings.Contains(err.Error(), "Unimplemented") {
		t.Fatalf("no health service: %v", err)
	}
	bare.Stop()
	<-done
	if err := probe("", lis.Addr().String()); err == nil || !strings.Contains(err.Error(), "Unavailable") {
		t.Fatalf("stopped server: %v", err)
	}
}

// gRPC checks reach endpoints whose key is not their address (a unix
// socket), through grpc's dialer or CheckerOptions.Dial, and use TLS when
// CheckerOptions.TLS is set.
func TestGRPCUnixAndTLS(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "h.sock")
	newGRPCBackend(t, "unix", sock)
	key, addr := "[unix://"+sock+"]:1", "unix://"+sock
	var dialed atomic.Value
	for _, custom := range []bool{false, true} {
		rec := newRecorder(t)
		opts := rec.options()
		if custom {
			opts.Dial = func(ctx context.Context, network, a string) (net.Conn, error) {
				dialed.Store(network + " " + a)
				var d net.Dialer
				return d.DialContext(ctx, network, a)
			}
		}
		c := newTestChecker(t, fast(HealthCheck{GRPC: &GRPCCheck{Service: grpcService}}), opts)
		c.Update(map[string]string{key: addr})
		if cs := rec.waitChecks(key, 2); !cs[0] || !cs[1] {
			t.Fatalf("custom dial %v: checks %v, whys %v", custom, cs, rec.whys[key])
		}
		c.Close()
	}
	if got := dialed.Load(); got != "unix "+sock {
		t.Fatalf("Dial got %q, want %q", got, "unix "+sock)
	}

	// TLS, with httptest's certificate (for example.com).
	ts := httptest.NewUnstartedServer(nil)
	ts.StartTLS()
	cert, pool := ts.TLS.Certificates[0], x509.NewCertPool()
	pool.AddCert(ts.Certificate())
	ts.Close()
	tb := newGRPCBackend(t, "tcp", "127.0.0.1:0", grpc.Creds(credentials.NewServerTLSFromCert(&cert)))
	for _, tc := range []struct {
		service string
		ok      bool
	}{{"example.com", true}, {"users", false}} {
		c := newTestChecker(t, HealthCheck{GRPC: &GRPCCheck{Service: grpcService}, Timeout: 5 * time.Second},
			CheckerOptions{Service: tc.service, TLS: &tls.Config{RootCAs: pool}, Logger: quiet})
		p := c.newProber(tb.addr())
		err := c.checkOnce(context.Background(), p)
		p.close()
		if (err == nil) != tc.ok {
			t.Errorf("TLS, service %q: %v, want ok %v", tc.service, err, tc.ok)
		}
	}
	// Plaintext against a TLS server fails.
	c := newTestChecker(t, HealthCheck{GRPC: &GRPCCheck{Service: grpcService}, Timeout: 5 * time.Second}, CheckerOptions{Logger: quiet})
	p := c.newProber(tb.addr())
	defer p.close()
	if err := c.checkOnce(context.Background(), p); err == nil {
		t.Error("plaintext check of a TLS server passed")
	}
}

// A healthy endpoint without traffic is checked every noTrafficInterval; one
// that fails a check is checked every interval again, traffic or not, so it
// goes down (and comes back) as fast as a busy one.
func TestNoTrafficInterval(t *testing.T) {
	busy, idle := newHTTPBackend(t, false), newHTTPBackend(t, false)
	var idleHasTraffic atomic.Bool
	rec := newRecorder(t)
	rec.backends[idle.addr()] = idle
	opts := rec.options()
	opts.HasTraffic = func(key string) bool { return key == busy.addr() || idleHasTraffic.Load() }
	c := newTestChecker(t, HealthCheck{HTTP: &HTTPCheck{}, Interval: 2 * time.Millisecond, Timeout: 10 * time.Second, NoTrafficInterval: time.Hour}, opts)
	c.Update(map[string]string{busy.addr(): busy.addr(), idle.addr(): idle.addr()})

	rec.waitChecks(busy.addr(), 20)
	if n := len(rec.checksOf(idle.addr())); n > 1 {
		t.Fatalf("the idle endpoint was checked %d times while the busy one was checked 20 times, want once", n)
	}
	if n := idle.total(); n > 1 {
		t.Fatalf("the idle server saw %d checks, want at most 1", n)
	}

	// A failed check (asked for now) puts the idle endpoint on the interval.
	rec.waitChecks(idle.addr(), 1)
	idle.setHealthy(false)
	c.CheckNow(idle.addr())
	down := rec.waitChange(idle.addr(), 0)
	if down.healthy || down.run != 3 || down.served != 3 {
		t.Fatalf("idle endpoint down: %+v, want after 3 failed checks", down)
	}
	idle.setHealthy(true)
	if up := rec.waitChange(idle.addr(), 1); !up.healthy || up.run != 2 {
		t.Fatalf("idle endpoint up: %+v, want after 2 passed checks", up)
	}
	// Healthy and idle again: back on the slow interval. With traffic (and a
	// nudge out of the hour's wait) it is on the interval.
	n := len(rec.checksOf(idle.addr()))
	rec.waitChecks(busy.addr(), len(rec.checksOf(busy.addr()))+20)
	if m := len(rec.checksOf(idle.addr())); m != n {
		t.Fatalf("the idle healthy endpoint was checked %d more times while the busy one was checked 20 times", m-n)
	}
	idleHasTraffic.Store(true)
	c.CheckNow(idle.addr())
	rec.waitChecks(idle.addr(), n+10)
}

// Update starts checks for new keys and stops them for removed ones: when it
// returns, no check or callback of a removed key runs any more.
func TestUpdateStartsAndStops(t *testing.T) {
	a, b := newHTTPBackend(t, false), newHTTPBackend(t, false)
	rec := newRecorder(t)
	c := newTestChecker(t, fast(HealthCheck{HTTP: &HTTPCheck{}}), rec.options())
	c.Update(map[string]string{a.addr(): a.addr(), b.addr(): b.addr()})
	rec.waitChecks(a.addr(), 2)
	rec.waitChecks(b.addr(), 2)

	c.Update(map[string]string{a.addr(): a.addr()})
	rec.stop(b.addr()) // a callback for b from now on fails the test
	seen := b.total()
	if _, known := c.Healthy(b.addr()); known {
		t.Fatal("removed key still known")
	}
	if c.CheckNow(b.addr()) {
		t.Fatal("CheckNow of a removed key")
	}
	rec.waitChecks(a.addr(), len(rec.checksOf(a.addr()))+20)
	if n := b.total(); n != seen {
		t.Fatalf("the removed endpoint's server saw %d more checks", n-seen)
	}

	// An address that leaves and comes back is checked again, from scratch.
	c.Update(nil)
	rec.mu.Lock()
	rec.stopped = map[string]bool{}
	rec.checks = map[string][]bool{}
	rec.mu.Unlock()
	c.Update(map[string]string{b.addr(): b.addr()})
	rec.waitChecks(b.addr(), 3)
	if cs := rec.checksOf(a.addr()); len(cs) != 0 {
		t.Fatalf("removed endpoint a checked %d times", len(cs))
	}
}

// A key whose dial address changes is checked at the new address and keeps
// its health state: an unhealthy endpoint stays unhealthy (no new report)
// until the new address passes healthyThreshold checks.
func TestUpdateNewAddressKeepsHealth(t *testing.T) {
	a, b := newHTTPBackend(t, false), newHTTPBackend(t, false)
	a.setHealthy(false)
	b.setHealthy(false)
	rec := newRecorder(t)
	const key = "[unix:///nowhere]:1"
	c := newTestChecker(t, fast(HealthCheck{HTTP: &HTTPCheck{}}), rec.options())
	c.Update(map[string]string{key: a.addr()})
	if down := rec.waitChange(key, 0); down.healthy {
		t.Fatalf("first change %+v", down)
	}
	c.Update(map[string]string{key: b.addr()})
	seenA := a.total()
	n := len(rec.checksOf(key))
	rec.waitChecks(key, n+10)
	if h, known := c.Healthy(key); h || !known {
		t.Fatalf("after the move: Healthy %v, known %v; want unhealthy", h, known)
	}
	if ch := rec.changesOf(key); len(ch) != 1 {
		t.Fatalf("changes %+v, want only the first", ch)
	}
	if a.total() != seenA {
		t.Fatal("the old address is still checked")
	}
	if b.count(503) < 10 {
		t.Fatalf("the new address saw %d checks", b.count(503))
	}
	before := b.count(200)
	b.setHealthy(true)
	if up := rec.waitChange(key, 1); !up.healthy || up.run != 2 || b.count(200)-before < 2 {
		t.Fatalf("up: %+v", up)
	}
}

// CheckNow starts a check at once. (And an empty dial address means the key.)
func TestCheckNow(t *testing.T) {
	b := newHTTPBackend(t, false)
	rec := newRecorder(t)
	c := newTestChecker(t, HealthCheck{HTTP: &HTTPCheck{}, Interval: time.Hour}, rec.options())
	c.Update(map[string]string{b.addr(): ""})
	rec.waitChecks(b.addr(), 1) // the first check is at once (no jitter)
	for i := 2; i <= 4; i++ {
		if !c.CheckNow(b.addr()) {
			t.Fatal("CheckNow: unknown key")
		}
		rec.waitChecks(b.addr(), i)
	}
	for i, ok := range rec.checksOf(b.addr()) {
		if !ok {
			t.Fatalf("check %d failed: %s", i, rec.whys[b.addr()][i])
		}
	}
	if c.CheckNow("127.0.0.1:1") {
		t.Fatal("CheckNow of an unknown key reported true")
	}
}

// Close stops every check, hanging ones included, and waits for every
// goroutine; nothing is reported after it and Update does nothing.
func TestCloseStopsEverything(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	hung, ok := newHTTPBackend(t, false), newHTTPBackend(t, false)
	hung.status.Store(0)
	g := newGRPCBackend(t, "tcp", "127.0.0.1:0")
	tb := newTCPBackend(t)

	rec := newRecorder(t)
	httpC, err := NewChecker(HealthCheck{HTTP: &HTTPCheck{}, Interval: time.Millisecond, Timeout: time.Hour}, rec.options())
	if err != nil {
		t.Fatal(err)
	}
	grpcC, _ := NewChecker(fast(HealthCheck{GRPC: &GRPCCheck{}}), rec.options())
	tcpC, _ := NewChecker(fast(HealthCheck{TCP: &TCPCheck{}}), rec.options())
	httpC.Update(map[string]string{hung.addr(): hung.addr(), ok.addr(): ok.addr()})
	grpcC.Update(map[string]string{g.addr(): g.addr()})
	tcpC.Update(map[string]string{tb.addr(): tb.addr()})

	// Wait until the hanging server holds a check and the others answered.
	select {
	case <-hung.hanging:
	case <-time.After(waitTimeout):
		t.Fatal("timed out waiting for the hanging check")
	}
	for _, key := range []string{ok.addr(), g.addr(), tb.addr()} {
		rec.waitChecks(key, 2)
	}

	done := make(chan struct{})
	go func() {
		httpC.Close()
		grpcC.Close()
		tcpC.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(waitTimeout):
		t.Fatal("Close did not return (a hanging check was not cancelled)")
	}
	for _, key := range []string{hung.addr(), ok.addr(), g.addr(), tb.addr()} {
		rec.stop(key) // a callback from now on fails the test
	}
	httpC.Update(map[string]string{ok.addr(): ok.addr()})
	httpC.Close()
	if _, known := httpC.Healthy(ok.addr()); known {
		t.Fatal("Update after Close started a check")
	}
	hung.close()
	ok.close()
	g.close()
	tb.close()
}

// A callback may read the checker (Healthy, CheckNow) without deadlock, and
// checks errors that are not timeouts keep their text.
func TestCallbacksMayReadChecker(t *testing.T) {
	tb := newTCPBackend(t)
	tb.setHealthy(false)
	var c *Checker
	changed := make(chan string, 1)
	c = newTestChecker(t, fast(HealthCheck{TCP: &TCPCheck{}, UnhealthyThreshold: 1}), CheckerOptions{
		Logger: quiet,
		OnChange: func(key string, healthy bool, why string) {
			h, known := c.Healthy(key)
			c.CheckNow(key)
			if h != healthy || !known {
				t.Errorf("in OnChange: Healthy %v, %v", h, known)
			}
			select {
			case changed <- why:
			default:
			}
		},
	})
	c.Update(map[string]string{tb.addr(): tb.addr()})
	select {
	case why := <-changed:
		if !strings.Contains(why, "1 consecutive tcp checks failed, the last: dial tcp") {
			t.Fatalf("why %q", why)
		}
	case <-time.After(waitTimeout):
		t.Fatal("no change")
	}
}

// An idle endpoint waits NoTrafficInterval for its next check, but traffic
// brings the check forward to the next Interval: a fresh client's endpoints
// are not left unchecked for a minute once requests flow.
func TestTrafficEndsTheIdleWait(t *testing.T) {
	var checks atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { checks.Add(1) }))
	defer srv.Close()
	var traffic atomic.Bool
	c, err := NewChecker(HealthCheck{HTTP: &HTTPCheck{}, Interval: 10 * time.Millisecond, NoTrafficInterval: time.Hour},
		CheckerOptions{HasTraffic: func(string) bool { return traffic.Load() }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	key := srv.Listener.Addr().String()
	c.Update(map[string]string{key: ""})
	deadline := time.Now().Add(5 * time.Second)
	for checks.Load() < 1 {
		if time.Now().After(deadline) {
			t.Fatal("no first check")
		}
		time.Sleep(time.Millisecond)
	}
	traffic.Store(true)
	for checks.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("%d checks: traffic did not bring the idle endpoint's next check forward", checks.Load())
		}
		time.Sleep(time.Millisecond)
	}
}
