// Command consul shows lodestar following a real Consul agent: it starts a dev
// agent on free loopback ports, three HTTP backends on 127.0.0.1, registers them
// in Consul, and routes requests for http://web/ through lodestar.NewTransport
// with the target consul://127.0.0.1:PORT/web while instances come and go.
//
//	go run ./examples/consul
//
// It needs a consul binary: on PATH, at $LODESTAR_CONSUL, or where
// scripts/consul.sh caches it (so running that script once is enough). Without
// one it prints a one-line hint saying so and exits with status 1.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	_ "github.com/lodestar-go/lodestar/resolver/consul" // registers consul://
)

const consulVersion = "1.21.0"

func main() {
	log.SetFlags(0)
	bin, err := findConsul()
	if err != nil {
		fmt.Fprintln(os.Stderr, "examples/consul:", err)
		os.Exit(1)
	}
	if err := run(bin); err != nil {
		log.Fatal(err)
	}
}

func run(bin string) error {
	agent, httpAddr, err := startAgent(bin)
	if err != nil {
		return err
	}
	defer agent.stop()
	fmt.Printf("consul agent (%s) at %s\n", bin, httpAddr)

	client, err := api.NewClient(&api.Config{Address: httpAddr})
	if err != nil {
		return err
	}

	// Three real backends, each saying who it is.
	var backends []string
	for i := 1; i <= 3; i++ {
		addr, stop, err := backend(fmt.Sprintf("web-%d", i))
		if err != nil {
			return err
		}
		defer stop()
		backends = append(backends, addr)
	}
	register := func(i int, weight int) error {
		host, port, _ := net.SplitHostPort(backends[i-1])
		p, _ := strconv.Atoi(port)
		id := fmt.Sprintf("web-%d", i)
		return client.Agent().ServiceRegister(&api.AgentServiceRegistration{
			ID: id, Name: "web", Address: host, Port: p,
			Tags:    []string{"v1"},
			Meta:    map[string]string{"zone": "zone-" + strconv.Itoa(i)},
			Weights: &api.AgentWeights{Passing: weight, Warning: 1},
			Check:   &api.AgentServiceCheck{CheckID: "ttl:" + id, TTL: "1h", Status: api.HealthPassing},
		})
	}
	if err := register(1, 1); err != nil {
		return err
	}
	if err := register(2, 3); err != nil {
		return err
	}

	// Consul's weights arrive on the endpoints; a weighted algorithm uses them.
	cfg, err := balancer.ParseConfig([]byte(`{"algorithm": "weighted_round_robin"}`))
	if err != nil {
		fmt.Println("(weighted_round_robin unavailable, using round robin:", err, ")")
		cfg = balancer.Config{}
	}
	tr, err := lodestar.NewTransport(lodestar.Options{
		Services: map[string]lodestar.Service{"web": {Target: "consul://" + httpAddr + "/web?tag=v1", Config: cfg}},
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		return err
	}
	defer tr.Close()
	httpClient := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	get := func() (string, error) {
		resp, err := httpClient.Get("http://web/")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return strings.TrimSpace(string(body)), err
	}

	// The first request goes out as soon as NewTransport returns, with no
	// waiting of our own: lodestar holds it until Consul's first answer.
	t0 := time.Now()
	who, err := get()
	if err != nil {
		return fmt.Errorf("the first request: %w", err)
	}
	fmt.Printf("first request, sent as soon as NewTransport returned: answered by %s in %v\n", who, time.Since(t0).Round(time.Millisecond))
	fmt.Printf("  (lodestar held it until Consul's first answer; no waiting in this program)\n")

	failed := 0
	show := func(step string, want int) {
		// A change made in Consul reaches lodestar through its next blocking
		// query: wait (briefly) until the balancer sees the set Consul now
		// holds, so the counts below are the new set's.
		deadline := time.Now().Add(3 * time.Second)
		for len(tr.Engine("web").Eligible()) != want && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		counts := map[string]int{}
		for range 40 {
			who, err := get()
			if err != nil {
				failed++
				counts["error: "+err.Error()]++
				continue
			}
			counts[who]++
		}
		keys := make([]string, 0, len(counts))
		for k := range counts {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		fmt.Printf("\n%s\n", step)
		for _, ep := range tr.Engine("web").Eligible() {
			info := ep.Info()
			fmt.Printf("  endpoint %-16s weight %d zone %s\n", info.Address, info.EffectiveWeight(), info.Metadata["zone"])
		}
		for _, k := range keys {
			fmt.Printf("  %2d of 40 requests -> %s\n", counts[k], k)
		}
	}

	show("web-1 (weight 1) and web-2 (weight 3) registered:", 2)

	if err := register(3, 1); err != nil {
		return err
	}
	show("web-3 registered:", 3)

	if err := client.Agent().UpdateTTL("ttl:web-1", "failing on purpose", api.HealthCritical); err != nil {
		return err
	}
	show("web-1's check turned critical:", 2)

	if err := client.Agent().ServiceDeregister("web-2"); err != nil {
		return err
	}
	show("web-2 deregistered:", 1)

	if err := client.Agent().UpdateTTL("ttl:web-1", "", api.HealthPassing); err != nil {
		return err
	}
	show("web-1 passing again:", 2)
	if failed > 0 {
		return fmt.Errorf("%d requests failed", failed)
	}
	return nil
}

// backend starts an HTTP server on 127.0.0.1 that answers with its name.
func backend(name string) (addr string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, name)
	})}
	go func() { _ = srv.Serve(ln) }()
	return ln.Addr().String(), func() { _ = srv.Close() }, nil
}

// findConsul looks for the binary on PATH, at $LODESTAR_CONSUL, then in the
// scripts/consul.sh cache ($LODESTAR_CACHE, else the user cache directory's
// lodestar folder, as the script does). Without one, its error is a one-line
// hint: where it looked and what to run.
func findConsul() (string, error) {
	if p, err := exec.LookPath("consul"); err == nil {
		return p, nil
	}
	looked := []string{"not on PATH"}
	var candidates []string
	if env := os.Getenv("LODESTAR_CONSUL"); env != "" {
		candidates = append(candidates, env)
		looked = append(looked, "$LODESTAR_CONSUL="+env+" is not an executable file")
	}
	cache := os.Getenv("LODESTAR_CACHE")
	if cache == "" {
		if dir, err := os.UserCacheDir(); err == nil {
			cache = filepath.Join(dir, "lodestar")
		}
	}
	if cache != "" {
		c := filepath.Join(cache, "consul-"+consulVersion, "consul")
		candidates = append(candidates, c)
		looked = append(looked, "not at "+c)
	}
	for _, c := range candidates {
		if st, err := os.Stat(c); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return c, nil
		}
	}
	return "", fmt.Errorf("no consul binary (%s): run scripts/consul.sh once (10-25 min; this program finds the consul %s it caches), then run this again",
		strings.Join(looked, ", "), consulVersion)
}

type agent struct {
	cmd *exec.Cmd
	dir string
}

func (a *agent) stop() {
	_ = a.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = a.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = a.cmd.Process.Kill()
		<-done
	}
	os.RemoveAll(a.dir)
}

// startAgent starts "consul agent -dev" on free loopback ports and waits for
// it to elect itself leader.
func startAgent(bin string) (*agent, string, error) {
	ports, err := freePorts(4)
	if err != nil {
		return nil, "", err
	}
	dir, err := os.MkdirTemp("", "lodestar-consul-example")
	if err != nil {
		return nil, "", err
	}
	cmd := exec.Command(bin, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-http-port", strconv.Itoa(ports[0]), "-serf-lan-port", strconv.Itoa(ports[1]),
		"-serf-wan-port", strconv.Itoa(ports[2]), "-server-port", strconv.Itoa(ports[3]),
		"-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1", "-https-port", "-1",
		"-log-level", "error", "-data-dir", dir)
	logf, err := os.Create(filepath.Join(dir, "agent.log"))
	if err != nil {
		return nil, "", err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, "", err
	}
	a := &agent{cmd: cmd, dir: dir}
	httpAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	client, err := api.NewClient(&api.Config{Address: httpAddr})
	if err != nil {
		a.stop()
		return nil, "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		if leader, err := client.Status().Leader(); err == nil && leader != "" {
			return a, httpAddr, nil
		}
		select {
		case <-ctx.Done():
			a.stop()
			return nil, "", errors.New("the consul agent did not elect a leader within 30s")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// freePorts finds n free TCP ports on 127.0.0.1 (the agent also binds UDP for
// serf; a clash is unlikely on loopback).
func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
