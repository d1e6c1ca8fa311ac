package lodestar_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/resolver"
	_ "github.com/lodestar-go/lodestar/resolver/consul" // scheme consul://
)

// syncBuffer is a log sink for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The default logging does not spam the application's log, and never writes
// a secret. A Transport at the default level (Info) serves 2,000 requests
// carrying an Authorization header over four backends, one answering 503
// (ejected for 50ms at a time, again and again, and its breaker trips), while
// another service's Consul agent is not there (its discovery fails again and
// again) and its target carries a Consul ACL token. The log must have no line per request: at most one line per state
// change (ejection and its end, breaker open and closed), and one discovery
// error line for the run however many errors there were (the first; the next
// would come a minute later). No line holds the token or the header.
func TestLogsAreBoundedAndSecretFree(t *testing.T) {
	const token = "tok-3f9a1c77e2"
	const auth = "Bearer sekr1t-b34rer"
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))

	fs, eps := flakyFleet(t, 4)
	fs[2].status.Store(503)
	cfg, err := balancer.ParseConfig([]byte(`{
		"outlierDetection": {"consecutiveFailures": 0, "consecutiveGatewayFailures": 3, "baseEjectionTime": "50ms",
		                     "maxEjectionTime": "50ms", "interval": "20ms", "maxEjectionPercent": 50},
		"circuitBreaker": {"consecutiveFailures": 3, "openTimeout": "30ms"},
		"retry": {"maxAttempts": 2, "retryOn": ["gateway_error"], "backoff": {"base": "1ms", "max": "1ms"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	feed, err := resolver.NewStatic(eps...)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := lodestar.NewTransport(lodestar.Options{
		Services: map[string]lodestar.Service{
			"api": {Feed: feed, Config: cfg},
			"orders": {Target: "consul://127.0.0.1:1/orders?token=" + token,
				Config: balancer.Config{InitialDiscoveryTimeout: 50 * time.Millisecond}},
		},
		Logger: logger,
		Rand:   seeded(5),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()

	var changes, discoveryErrs atomic.Int64
	for _, svc := range []string{"api", "orders"} {
		defer tr.Engine(svc).Subscribe(func(ev balancer.Event) {
			switch ev.Kind {
			case balancer.ConditionChanged, balancer.BreakerChanged:
				changes.Add(1)
			case balancer.DiscoveryError:
				discoveryErrs.Add(1)
			}
		})()
	}

	var next atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= 2000 {
				req, _ := http.NewRequestWithContext(context.Background(), "GET", "http://api/orders?user=1", nil)
				req.Header.Set("Authorization", auth)
				resp, err := tr.RoundTrip(req)
				if err != nil {
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	// Requests to the service whose discovery fails: each fails, none logs.
	for range 20 {
		req, _ := http.NewRequest("GET", "http://orders/", nil)
		req.Header.Set("Authorization", auth)
		if resp, err := tr.RoundTrip(req); err == nil {
			resp.Body.Close()
			t.Fatal("a request to a service without endpoints succeeded")
		}
	}
	wg.Wait()
	deadline := time.Now().Add(20 * time.Second)
	for discoveryErrs.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d discovery errors from an agent that is not there", discoveryErrs.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}

	out := logs.String()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	stateLines, discoveryLines := 0, 0
	for _, l := range lines {
		switch {
		case strings.Contains(l, "discovery error"):
			discoveryLines++
		case strings.Contains(l, "ejected") || strings.Contains(l, "ejection ended") || strings.Contains(l, "circuit breaker") ||
			strings.Contains(l, "panic mode") || strings.Contains(l, "paused"):
			stateLines++
		default:
			t.Errorf("an unexpected log line: %s", l)
		}
	}
	t.Logf("%d log lines for 2,020 requests: %d state changes (of %d events), %d discovery error lines (of %d errors)",
		len(lines), stateLines, changes.Load(), discoveryLines, discoveryErrs.Load())
	if stateLines == 0 {
		t.Error("no state change was logged: the test did not exercise what it means to")
	}
	if int64(stateLines) > changes.Load() {
		t.Errorf("%d state-change lines for %d state changes", stateLines, changes.Load())
	}
	if discoveryLines != 1 {
		t.Errorf("%d discovery error lines for %d errors in well under a minute, want 1", discoveryLines, discoveryErrs.Load())
	}
	if len(lines) >= 2000/10 {
		t.Errorf("%d log lines for 2,000 requests", len(lines))
	}
	for _, secret := range []string{token, auth, "sekr1t"} {
		if strings.Contains(out, secret) {
			t.Errorf("the log holds %q", secret)
		}
	}
}
