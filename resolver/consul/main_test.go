package consul

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/consul/sdk/testutil"
	"go.uber.org/goleak"
)

// The package's tests share one real Consul dev agent, started by TestMain on
// free loopback ports (TestAgentRestart replaces it with a new one on the same
// HTTP port). Without a consul binary the agent tests skip, unless
// LODESTAR_REQUIRE_CONSUL=1, which makes them fail.

// consulVersion is the version scripts/consul.sh builds and caches.
const consulVersion = "1.21.0"

var shared struct {
	mu      sync.Mutex
	srv     *testutil.TestServer
	client  *api.Client
	skip    string        // why there is no agent
	logs    *lockedBuffer // the agents' output, printed when a test fails
	tb      *mainTB
	stopped bool
}

type testMain struct{ m *testing.M }

func (r testMain) Run() int {
	shared.logs = &lockedBuffer{}
	shared.tb = &mainTB{}
	defer shared.tb.cleanup()
	bin, why := findConsul()
	if bin == "" {
		if os.Getenv("LODESTAR_REQUIRE_CONSUL") == "1" {
			fmt.Fprintf(os.Stderr, "FAIL: LODESTAR_REQUIRE_CONSUL=1 but %s; run scripts/consul.sh first\n", why)
			return 1
		}
		shared.skip = why + "; run scripts/consul.sh to build it (set LODESTAR_REQUIRE_CONSUL=1 to fail instead of skipping)"
	} else {
		start := time.Now()
		srv, client, err := startAgent(0)
		if err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: starting the consul agent %s: %v\n%s", bin, err, shared.logs.String())
			return 1
		}
		fmt.Fprintf(os.Stderr, "consul agent %s ready at %s in %v\n", bin, srv.HTTPAddr, time.Since(start).Round(time.Millisecond))
		shared.srv, shared.client = srv, client
	}
	code := r.m.Run()
	shared.mu.Lock()
	if shared.srv != nil && !shared.stopped {
		_ = shared.srv.Stop()
	}
	shared.mu.Unlock()
	if code != 0 && shared.logs.Len() > 0 {
		fmt.Fprintf(os.Stderr, "--- consul agent output:\n%s", shared.logs.String())
	}
	return code
}

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(testMain{m},
		// testutil reserves the agent's ports with sdk/freeport, whose
		// port-recycling goroutine runs for the life of the process and cannot
		// be stopped from outside the package.
		goleak.IgnoreTopFunction("github.com/hashicorp/consul/sdk/freeport.checkFreedPorts"),
	)
}

// findConsul finds a consul binary: on PATH, at $LODESTAR_CONSUL, or where
// scripts/consul.sh caches it. A binary found off PATH is linked into a
// temporary directory put first on PATH, since testutil runs "consul".
func findConsul() (path, why string) {
	if p, err := exec.LookPath("consul"); err == nil {
		return p, ""
	}
	var candidates []string
	if p := os.Getenv("LODESTAR_CONSUL"); p != "" {
		candidates = append(candidates, p)
	}
	cache := os.Getenv("LODESTAR_CACHE")
	if cache == "" {
		if dir, err := os.UserCacheDir(); err == nil {
			cache = filepath.Join(dir, "lodestar")
		}
	}
	if cache != "" {
		candidates = append(candidates, filepath.Join(cache, "consul-"+consulVersion, "consul"))
	}
	for _, c := range candidates {
		if st, err := os.Stat(c); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			continue
		}
		dir, err := os.MkdirTemp("", "lodestar-consul-bin")
		if err != nil {
			return "", err.Error()
		}
		shared.tb.Cleanup(func() { os.RemoveAll(dir) })
		abs, _ := filepath.Abs(c)
		if err := os.Symlink(abs, filepath.Join(dir, "consul")); err != nil {
			return "", err.Error()
		}
		os.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
		return abs, ""
	}
	return "", fmt.Sprintf("no consul binary (not on PATH, not at $LODESTAR_CONSUL, not at %v)", candidates)
}

// startAgent starts a dev agent on free loopback ports (its HTTP API on
// httpPort when not 0) and waits until it has a leader and its node is healthy.
func startAgent(httpPort int) (*testutil.TestServer, *api.Client, error) {
	var srv *testutil.TestServer
	err := shared.tb.try(func() error {
		var err error
		srv, err = testutil.NewTestServerConfigT(shared.tb, func(c *testutil.TestServerConfig) {
			c.LogLevel = "warn"
			c.Stdout, c.Stderr = shared.logs, shared.logs
			c.Connect = nil
			c.Peering = nil
			if httpPort != 0 {
				c.Ports.HTTP = httpPort
			}
		})
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	cfg := &api.Config{Address: srv.HTTPAddr}
	client, err := api.NewClient(cfg)
	if err != nil {
		_ = srv.Stop()
		return nil, nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err = agentReady(client, srv.Config.NodeName)
		if err == nil {
			shared.tb.Cleanup(cfg.HttpClient.CloseIdleConnections)
			return srv, client, nil
		}
		if time.Now().After(deadline) {
			_ = srv.Stop()
			return nil, nil, fmt.Errorf("agent not ready after 30s: %w", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func agentReady(c *api.Client, node string) error {
	leader, err := c.Status().Leader()
	if err != nil {
		return err
	}
	if leader == "" {
		return errors.New("no leader yet")
	}
	checks, _, err := c.Health().Node(node, nil)
	if err != nil {
		return err
	}
	for _, ch := range checks {
		if ch.CheckID == "serfHealth" && ch.Status == api.HealthPassing {
			return nil
		}
	}
	return errors.New("node not healthy yet")
}

// needAgent returns the shared agent's client and HTTP address, or skips.
func needAgent(t *testing.T) (*api.Client, string) {
	t.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.skip != "" {
		t.Skip(shared.skip)
	}
	if shared.srv == nil || shared.stopped {
		t.Fatal("the shared consul agent is gone (an earlier test failed to restart it)")
	}
	return shared.client, shared.srv.HTTPAddr
}

// mainTB is the testutil.TestingTB that TestMain hands to testutil, which
// wants one to reserve ports and create directories.
type mainTB struct {
	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

type tbFatal struct{ msg string }

func (tb *mainTB) try(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if f, ok := r.(tbFatal); ok {
				err = errors.New(f.msg)
				return
			}
			panic(r)
		}
	}()
	return f()
}

func (tb *mainTB) cleanup() {
	tb.mu.Lock()
	cs := tb.cleanups
	tb.cleanups = nil
	tb.mu.Unlock()
	for _, f := range slices.Backward(cs) {
		f()
	}
}

func (tb *mainTB) Cleanup(f func()) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.cleanups = append(tb.cleanups, f)
}
func (tb *mainTB) Error(args ...any)                 { tb.Log(args...); tb.Fail() }
func (tb *mainTB) Errorf(format string, args ...any) { tb.Logf(format, args...); tb.Fail() }
func (tb *mainTB) Fail()                             { tb.mu.Lock(); tb.failed = true; tb.mu.Unlock() }
func (tb *mainTB) FailNow()                          { tb.Fail(); panic(tbFatal{"FailNow"}) }
func (tb *mainTB) Failed() bool                      { tb.mu.Lock(); defer tb.mu.Unlock(); return tb.failed }
func (tb *mainTB) Fatal(args ...any)                 { tb.Fail(); panic(tbFatal{fmt.Sprint(args...)}) }
func (tb *mainTB) Fatalf(format string, args ...any) {
	tb.Fail()
	panic(tbFatal{fmt.Sprintf(format, args...)})
}
func (tb *mainTB) Helper()                         {}
func (tb *mainTB) Log(args ...any)                 { fmt.Fprintln(shared.logs, args...) }
func (tb *mainTB) Logf(format string, args ...any) { fmt.Fprintf(shared.logs, format+"\n", args...) }
func (tb *mainTB) Name() string                    { return "TestMain" }
func (tb *mainTB) Setenv(key, value string)        { os.Setenv(key, value) }
func (tb *mainTB) TempDir() string {
	d, err := os.MkdirTemp("", "lodestar-consul")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(d) })
	return d
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string { b.mu.Lock(); defer b.mu.Unlock(); return b.buf.String() }
func (b *lockedBuffer) Len() int       { b.mu.Lock(); defer b.mu.Unlock(); return b.buf.Len() }

// ---- a recording Sink and a running feed ----

func errorsContain(errs []error, sub string) bool {
	for _, err := range errs {
		if strings.Contains(err.Error(), sub) {
			return true
		}
	}
	return false
}
