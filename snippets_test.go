package lodestar_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	grpcstatus "google.golang.org/grpc/status"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/grpcpolicy"
)

// The README's gRPC imports, as written there.
import (
	_ "github.com/lodestar-go/lodestar/balancer/grpcpolicy"   // policy "lodestar"
	_ "github.com/lodestar-go/lodestar/resolver/consul"       // scheme consul://
	_ "github.com/lodestar-go/lodestar/resolver/dns"          // schemes srv:///, lodestar-dns:///
	_ "github.com/lodestar-go/lodestar/resolver/grpcresolver" // scheme static:///, and the above
)

// The snippets in README.md and doc.go name fixed loopback ports, so that a
// user can copy them as they are: these tests serve those ports (below the
// ephemeral range, so no test's own :0 listener takes them).

// listenFixed listens on addr or fails the test saying which port is taken.
func listenFixed(t *testing.T, addr string) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("the README's snippets use %s, which is taken on this machine: %v", addr, err)
	}
	return l
}

// serveHTTPFixed serves an HTTP backend named by its address on each addr.
func serveHTTPFixed(t *testing.T, addrs ...string) {
	t.Helper()
	for _, a := range addrs {
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s %s %s", a, r.Host, r.URL.Path)
		})}
		l := listenFixed(t, a)
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
	}
}

type snippetGRPCServer struct {
	testgrpc.UnimplementedTestServiceServer
	addr string
}

func (s *snippetGRPCServer) UnaryCall(context.Context, *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	return &testgrpc.SimpleResponse{Hostname: s.addr}, nil
}

// serveGRPCFixed serves a gRPC test service with the standard health service
// (SERVING) on each addr.
func serveGRPCFixed(t *testing.T, addrs ...string) {
	t.Helper()
	for _, a := range addrs {
		srv := grpc.NewServer()
		testgrpc.RegisterTestServiceServer(srv, &snippetGRPCServer{addr: a})
		healthpb.RegisterHealthServer(srv, health.NewServer())
		l := listenFixed(t, a)
		go srv.Serve(l)
		t.Cleanup(srv.Stop)
	}
}

// README.md's HTTP snippet, as written, with no waiting of its own.
func TestReadmeHTTPSnippet(t *testing.T) {
	serveHTTPFixed(t, "127.0.0.1:8081", "127.0.0.1:8082")

	tr, err := lodestar.NewTransport(lodestar.Options{
		Services: map[string]lodestar.Service{
			"users": {
				Target: "static:///127.0.0.1:8081,127.0.0.1:8082",
				Config: balancer.Config{Algorithm: &balancer.LeastRequest{}},
			},
		},
	})
	if err != nil {
		log.Fatal(err) // bad configuration: the error names the field
	}
	defer tr.Close()
	client := &http.Client{Transport: tr}
	resp, err := client.Get("http://users/v1/profile") // → one of the endpoints

	if err != nil {
		t.Fatalf("the README's first request: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.HasSuffix(string(body), " users /v1/profile") {
		t.Fatalf("backend saw %q; want Host users and path /v1/profile", body)
	}
}

// doc.go's snippet, as written, with no waiting of its own.
func TestDocSnippet(t *testing.T) {
	serveHTTPFixed(t, "127.0.0.1:8081", "127.0.0.1:8082")

	tr, err := lodestar.NewTransport(lodestar.Options{
		Services: map[string]lodestar.Service{
			"users": {Target: "static:///127.0.0.1:8081,127.0.0.1:8082"},
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()
	client := &http.Client{Transport: tr}
	resp, err := client.Get("http://users/v1/profile")

	if err != nil {
		t.Fatalf("doc.go's first request: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

// README.md's gRPC snippet, as written: the first RPC works, and a user's RPCs
// stick to one backend (ring_hash on the x-user-id metadata).
func TestReadmeGRPCSnippet(t *testing.T) {
	serveGRPCFixed(t, "127.0.0.1:9091", "127.0.0.1:9092")

	conn, err := grpc.NewClient("static:///127.0.0.1:9091,127.0.0.1:9092",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(`{
	  "loadBalancingConfig": [{"lodestar": {"algorithm": "ring_hash",
	                                        "affinity": {"metadata": "x-user-id"}}}],
	  "healthCheckConfig": {"serviceName": ""}}`))

	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := testgrpc.NewTestServiceClient(conn)
	call := func(user string) string {
		t.Helper()
		ctx := metadata.AppendToOutgoingContext(context.Background(), "x-user-id", user)
		resp, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{})
		if err != nil {
			t.Fatalf("RPC for %s: %v", user, err)
		}
		return resp.Hostname
	}
	call("alice") // the first RPC works
	// The ring spans the endpoints whose connection is ready, so a key may
	// move while the second connects (README, gRPC): wait until both serve.
	seen := map[string]bool{}
	for i := 0; len(seen) < 2; i++ {
		if i == 1000 {
			t.Fatalf("after %d users, only %v served", i, seen)
		}
		seen[call(fmt.Sprintf("user-%d", i))] = true
	}
	first := call("alice")
	for i := range 20 {
		if got := call("alice"); got != first {
			t.Fatalf("alice's RPC %d went to %s, the first to %s: ring_hash must stick", i, got, first)
		}
	}
}

// README.md's gRPC retry snippet, as written: with one of the two servers
// answering UNAVAILABLE, every call succeeds on the other.
func TestReadmeGRPCRetrySnippet(t *testing.T) {
	serveGRPCFixed(t, "127.0.0.1:9091")
	lis, err := net.Listen("tcp", "127.0.0.1:9092")
	if err != nil {
		t.Fatalf("the README's snippets use 127.0.0.1:9092, which is taken on this machine: %v", err)
	}
	down := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(down, unavailableServer{})
	go down.Serve(lis)
	defer down.Stop()

	retries, err := grpcpolicy.NewRetries(grpcpolicy.RetryOptions{
		// Safe to send twice: every method of this service.
		IdempotentMethods: []string{"/grpc.testing.TestService/"},
	})
	if err != nil {
		log.Fatal(err)
	}
	conn, err := grpc.NewClient("static:///127.0.0.1:9091,127.0.0.1:9092",
		append(retries.DialOptions(),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultServiceConfig(`{"loadBalancingConfig": [{"lodestar": {
		  "retry": {"maxAttempts": 3, "backoff": {"base": "25ms", "max": "1s"}}}}]}`))...)

	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := testgrpc.NewTestServiceClient(conn)
	for i := range 20 {
		resp, err := client.UnaryCall(context.Background(), &testgrpc.SimpleRequest{}, grpc.WaitForReady(true))
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if resp.Hostname != "127.0.0.1:9091" {
			t.Fatalf("call %d answered by %q", i, resp.Hostname)
		}
	}
}

// unavailableServer answers every call UNAVAILABLE.
type unavailableServer struct {
	testgrpc.UnimplementedTestServiceServer
}

func (unavailableServer) UnaryCall(context.Context, *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	return nil, grpcstatus.Error(codes.Unavailable, "down")
}

// Every Go snippet of README.md and doc.go appears, as written, in this file,
// where a test runs it: a snippet edited in the docs and not here fails.
func TestSnippetsAreTested(t *testing.T) {
	self := normalize(readFile(t, "snippets_test.go"))
	var snippets []string
	for _, m := range regexp.MustCompile("(?s)```go\n(.*?)```").FindAllStringSubmatch(readFile(t, "README.md"), -1) {
		snippets = append(snippets, m[1])
	}
	var doc, block []string
	for _, line := range strings.Split(readFile(t, "doc.go"), "\n") {
		if code, ok := strings.CutPrefix(line, "//\t"); ok {
			block = append(block, code)
			continue
		}
		if len(block) > 0 {
			doc = append(doc, strings.Join(block, "\n"))
			block = nil
		}
	}
	snippets = append(snippets, doc...)
	if len(snippets) < 4 {
		t.Fatalf("found %d snippets; want README's HTTP, gRPC imports and client, and doc.go's", len(snippets))
	}
	for _, s := range snippets {
		if !strings.Contains(self, normalize(s)) {
			t.Errorf("this snippet is not run by any test in snippets_test.go:\n%s", s)
		}
	}
}

// normalize drops indentation, blank lines and runs of spaces, which gofmt and
// the docs lay out differently.
func normalize(s string) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			out = append(out, strings.Join(f, " "))
		}
	}
	return "\n" + strings.Join(out, "\n") + "\n"
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Every JSON configuration in README.md is valid, as written.
func TestReadmeJSONConfigsParse(t *testing.T) {
	blocks := regexp.MustCompile("(?s)```json\n(.*?)```").FindAllStringSubmatch(readFile(t, "README.md"), -1)
	if len(blocks) < 2 {
		t.Fatalf("found %d JSON blocks in README.md; want the configuration and health examples", len(blocks))
	}
	for _, b := range blocks {
		if _, err := balancer.ParseConfig([]byte(b[1])); err != nil {
			t.Errorf("README.md JSON does not parse: %v\n%s", err, b[1])
		}
	}
}
