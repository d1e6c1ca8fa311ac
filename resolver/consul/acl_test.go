package consul

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/consul/sdk/testutil"

	"github.com/lodestar-go/lodestar/internal/backoff"
	"github.com/lodestar-go/lodestar/resolver"
)

// mgmtToken is the initial management token of the ACL agent.
const mgmtToken = "6a1f0c3e-0000-4000-8000-00000000a11c"

// startACLAgent starts a dev agent of the test's own with ACLs enabled, a
// default-deny policy and mgmtToken as its initial management and agent
// token, stopped when the test ends. It returns the agent's HTTP address and a
// client holding the management token.
func startACLAgent(t *testing.T) (string, *api.Client) {
	t.Helper()
	shared.mu.Lock()
	skip := shared.skip
	shared.mu.Unlock()
	if skip != "" {
		t.Skip(skip)
	}
	start := time.Now()
	srv, err := testutil.NewTestServerConfigT(t, func(c *testutil.TestServerConfig) {
		c.LogLevel = "warn"
		c.Stdout, c.Stderr = shared.logs, shared.logs
		c.Connect = nil
		c.Peering = nil
		c.ACL.Enabled = true
		c.ACL.DefaultPolicy = "deny"
		c.ACL.Tokens.InitialManagement = mgmtToken
		c.ACL.Tokens.Agent = mgmtToken
	})
	if err != nil {
		t.Fatalf("starting a consul agent with ACLs: %v", err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	cfg := &api.Config{Address: srv.HTTPAddr, Token: mgmtToken}
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cfg.HttpClient.CloseIdleConnections)
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := agentReady(client, srv.Config.NodeName)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ACL agent not ready after 30s: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("consul agent with ACLs (default deny) ready at %s in %v", srv.HTTPAddr, time.Since(start).Round(time.Millisecond))
	return srv.HTTPAddr, client
}

// aclToken creates a policy of rules and a token holding it, and returns the
// token's secret.
func aclToken(t *testing.T, c *api.Client, name, rules string) string {
	t.Helper()
	p, _, err := c.ACL().PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, nil)
	if err != nil {
		t.Fatalf("policy %s: %v", name, err)
	}
	tok, _, err := c.ACL().TokenCreate(&api.ACLToken{Description: name, Policies: []*api.ACLTokenPolicyLink{{ID: p.ID}}}, nil)
	if err != nil {
		t.Fatalf("token %s: %v", name, err)
	}
	return tok.SecretID
}

// TestAgentACLFilteredAnswerIsAnError runs the feed against a real agent with
// ACLs enabled and a default-deny policy. A token that may read the service
// gets its instance; a token without service:read, and no token at all, get
// an error saying permissions (ACLs) filtered the answer, and nothing is
// published; a token Consul does not know gets Consul's refusal. No error
// holds a token.
func TestAgentACLFilteredAnswerIsAnError(t *testing.T) {
	addr, admin := startACLAgent(t)
	t.Setenv("CONSUL_HTTP_TOKEN", "") // "no token" must mean none
	t.Setenv("CONSUL_HTTP_TOKEN_FILE", "")
	const svc = "acl-web"
	instance(t, admin, svc, "acl-web-1", 27001, api.HealthPassing, nil)
	nodesOnly := aclToken(t, admin, "nodes-only", `node_prefix "" { policy = "read" }`)
	reader := aclToken(t, admin, "reader", `node_prefix "" { policy = "read" }
service_prefix "" { policy = "read" }`)
	const unknown = "0badc0de-0000-4000-8000-000000000000"
	fast := backoff.Config{Base: 5 * time.Millisecond, Max: 20 * time.Millisecond}

	// The instance is there, for a token that may read it.
	s := watch(t, newFeed(t, Options{Service: svc, Address: addr, Token: reader, WaitTime: 30 * time.Second}))
	s.WaitUpdate(t, 0, 10*time.Second, "the instance, for a token with service:read", hasAddrs("127.0.0.1:27001"))
	if _, errs, _ := s.Snapshot(); len(errs) != 0 {
		t.Errorf("errors for a token that may read the service: %v", errs)
	}

	fromTarget, err := resolver.Parse(fmt.Sprintf("consul://%s/%s?t%%6Fken=%s&wait=30s", addr, svc, nodesOnly))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		feed     resolver.Feed
		filtered bool   // want ErrFilteredByACLs
		want     string // in the error
		secret   string // never in any error
	}{
		{"a token without service:read", newFeed(t, Options{Service: svc, Address: addr, Token: nodesOnly, Backoff: fast}),
			true, `Consul removed instances of service "acl-web" the token may not read`, nodesOnly},
		{"the same token, in the target", fromTarget,
			true, `Consul removed instances of service "acl-web"`, nodesOnly},
		{"no token", newFeed(t, Options{Service: svc, Address: addr, Backoff: fast}),
			true, "no ACL token was sent, the agent's default ACL policy is deny", ""},
		{"a token Consul does not know", newFeed(t, Options{Service: svc, Address: addr, Token: unknown, Backoff: fast}),
			false, "ACL not found", unknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := watch(t, tc.feed)
			errs := s.WaitErrors(t, 2, 10*time.Second)
			t.Logf("reported: %v", errs[0])
			for _, err := range errs {
				if tc.filtered && (!errors.Is(err, ErrFilteredByACLs) || !strings.Contains(err.Error(), "permissions (ACLs) filtered the answer")) {
					t.Errorf("error %v, want ErrFilteredByACLs saying permissions (ACLs) filtered the answer", err)
				}
				if !strings.Contains(err.Error(), tc.want) {
					t.Errorf("error %v, want one with %q", err, tc.want)
				}
				if tc.secret != "" && strings.Contains(err.Error(), tc.secret) {
					t.Errorf("error holds the token: %v", err)
				}
				if strings.Contains(err.Error(), mgmtToken) || strings.Contains(err.Error(), reader) {
					t.Errorf("error holds another token: %v", err)
				}
			}
			if ups, _, _ := s.Snapshot(); len(ups) != 0 {
				t.Errorf("published %d set(s) from answers ACLs filtered: %v", len(ups), ups)
			}
		})
	}
}

// TestAgentInstancesWithBadAddresses registers, on a real agent, instances
// whose address is not a host (the service's, or the node's it falls back on):
// they are left out, counted and named by service ID in one error, while the
// rest of the set is served.
func TestAgentInstancesWithBadAddresses(t *testing.T) {
	c, addr := needAgent(t)
	const svc = "badaddr"
	instance(t, c, svc, "badaddr-ok", 26000, api.HealthPassing, nil)
	instance(t, c, svc, "badaddr-hostport", 26001, api.HealthPassing, func(r *api.AgentServiceRegistration) { r.Address = "10.0.0.1:8080" })
	instance(t, c, svc, "badaddr-space", 26002, api.HealthPassing, func(r *api.AgentServiceRegistration) { r.Address = "web internal" })
	// A node of its own whose address is not a host, its instance without one.
	if _, err := c.Catalog().Register(&api.CatalogRegistration{
		Node: "badaddr-node", Address: "rack 7 host",
		Service: &api.AgentService{ID: "badaddr-on-node", Service: svc, Port: 26003},
	}, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = c.Catalog().Deregister(&api.CatalogDeregistration{Node: "badaddr-node"}, nil) })

	s := watch(t, newFeed(t, Options{Service: svc, Address: addr, WaitTime: 30 * time.Second}))
	_, i := s.WaitUpdate(t, 0, 10*time.Second, "the one instance with a host address", hasAddrs("127.0.0.1:26000"))
	// Registrations reach the catalog on their own time: wait for the answer
	// that holds all three.
	msg := waitError(t, s, "left out 3 instance(s)").Error()
	t.Logf("reported: %v", msg)
	for _, want := range []string{
		"left out 3 instance(s)", "3 whose address is not a host name or IP address",
		`badaddr-hostport (service address "10.0.0.1:8080")`, `badaddr-space (service address "web internal")`,
		`badaddr-on-node (node address "rack 7 host")`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not say %q", msg, want)
		}
	}

	// One more such instance changes no set, and is reported all the same.
	instance(t, c, svc, "badaddr-url", 26004, api.HealthPassing, func(r *api.AgentServiceRegistration) { r.Address = "http://10.0.0.5" })
	if err := waitError(t, s, "left out 4 instance(s)"); !strings.Contains(err.Error(), `badaddr-url (service address "http://10.0.0.5")`) {
		t.Errorf("error %v, want badaddr-url among the four instances left out", err)
	}
	// A good one is served next to them.
	instance(t, c, svc, "badaddr-ok2", 26005, api.HealthPassing, nil)
	s.WaitUpdate(t, i+1, 5*time.Second, "both good instances", hasAddrs("127.0.0.1:26000", "127.0.0.1:26005"))
	checkNoRepeats(t, s)
}

// waitError waits up to 10s for an error holding sub, and returns it.
func waitError(t *testing.T, s *recSink, sub string) error {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		_, errs, changed := s.Snapshot()
		for _, err := range errs {
			if strings.Contains(err.Error(), sub) {
				return err
			}
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("no error with %q within 10s: %v", sub, errs)
		}
	}
}
