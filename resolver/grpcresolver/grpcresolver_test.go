package grpcresolver_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/experimental/balancer/weight"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	gresolver "google.golang.org/grpc/resolver"
	"google.golang.org/grpc/status"

	"github.com/lodestar-go/lodestar/resolver"
	"github.com/lodestar-go/lodestar/resolver/grpcresolver"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeCC records what a resolver tells grpc.
type fakeCC struct {
	gresolver.ClientConn // unused methods
	states               chan gresolver.State
	errs                 chan error
}

func newFakeCC() *fakeCC {
	return &fakeCC{states: make(chan gresolver.State, 16), errs: make(chan error, 16)}
}

func (c *fakeCC) UpdateState(s gresolver.State) error { c.states <- s; return nil }
func (c *fakeCC) ReportError(err error)               { c.errs <- err }

func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatal("timed out waiting for the resolver")
		panic("unreachable")
	}
}

func target(t *testing.T, s string) gresolver.Target {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return gresolver.Target{URL: *u}
}

func TestStaticSchemeRegisteredGlobally(t *testing.T) {
	if s, ok := grpcresolver.SchemeFor("static"); !ok || s != "static" {
		t.Fatalf("SchemeFor(static) = %q, %v", s, ok)
	}
	b := gresolver.Get("static")
	if b == nil {
		t.Fatal("no grpc resolver for static")
	}
	cc := newFakeCC()
	r, err := b.Build(target(t, "static:///127.0.0.1:1,127.0.0.1:2"), cc, gresolver.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	st := recv(t, cc.states)
	if len(st.Endpoints) != 2 || len(st.Addresses) != 2 ||
		st.Endpoints[1].Addresses[0].Addr != "127.0.0.1:2" || st.Addresses[0].Addr != "127.0.0.1:1" {
		t.Fatalf("state = %+v", st)
	}
	r.ResolveNow(gresolver.ResolveNowOptions{}) // a no-op; must not block

	if _, err := b.Build(target(t, "static:///nonsense"), newFakeCC(), gresolver.BuildOptions{}); err == nil ||
		!strings.Contains(err.Error(), "want host:port") {
		t.Errorf("bad target: %v", err)
	}
}

func TestGRPCOwnedSchemesAreNotOverridden(t *testing.T) {
	// A lodestar feed package registering "dns" (whatever the init order) gets
	// "lodestar-dns"; grpc's own dns resolver stays.
	grpcDNS := gresolver.Get("dns")
	resolver.Register("dns", func(u *url.URL) (resolver.Feed, error) {
		return resolver.NewStaticAddrs(strings.TrimPrefix(u.Path, "/"))
	})
	if b := gresolver.Get("dns"); b != grpcDNS {
		t.Fatalf("grpc's dns resolver was replaced by %T", b)
	}
	if s, ok := grpcresolver.SchemeFor("dns"); !ok || s != "lodestar-dns" {
		t.Fatalf("SchemeFor(dns) = %q, %v; want lodestar-dns", s, ok)
	}
	b := gresolver.Get("lodestar-dns")
	if b == nil {
		t.Fatal("lodestar-dns not registered")
	}
	cc := newFakeCC()
	r, err := b.Build(target(t, "lodestar-dns:///127.0.0.1:53"), cc, gresolver.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if st := recv(t, cc.states); len(st.Endpoints) != 1 || st.Endpoints[0].Addresses[0].Addr != "127.0.0.1:53" {
		t.Fatalf("state = %+v", st)
	}

	// A scheme grpc does not own keeps its name, even registered after init.
	resolver.Register("lodestartest", func(*url.URL) (resolver.Feed, error) { return resolver.NewStaticAddrs("127.0.0.1:9") })
	if s, _ := grpcresolver.SchemeFor("lodestartest"); s != "lodestartest" || gresolver.Get("lodestartest") == nil {
		t.Fatalf("SchemeFor(lodestartest) = %q", s)
	}
}

// blockingFeed never answers: its Watch waits for its context, like a
// discovery call that hangs.
type blockingFeed struct{ started chan struct{} }

func (f blockingFeed) Watch(ctx context.Context, _ resolver.Sink) error {
	close(f.started)
	<-ctx.Done()
	return ctx.Err()
}

func TestCloseDoesNotWaitForPendingDiscovery(t *testing.T) {
	f := blockingFeed{started: make(chan struct{})}
	r, err := grpcresolver.FeedBuilder("blocking", f).Build(target(t, "blocking:///x"), newFakeCC(), gresolver.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	recv(t, f.started)
	closed := make(chan struct{})
	go func() { r.Close(); close(closed) }()
	recv(t, closed)
}

// failingFeed reports an error, then a set, then waits.
type failingFeed struct{}

func (failingFeed) Watch(ctx context.Context, s resolver.Sink) error {
	s.ReportError(errors.New("consul: connection refused"))
	s.Update([]resolver.Endpoint{{Address: "127.0.0.1:7"}})
	<-ctx.Done()
	return ctx.Err()
}

func TestFeedErrorsGoToReportError(t *testing.T) {
	cc := newFakeCC()
	r, err := grpcresolver.FeedBuilder("failing", failingFeed{}).Build(target(t, "failing:///x"), cc, gresolver.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := recv(t, cc.errs); !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("ReportError(%v)", err)
	}
	recv(t, cc.states)
}

func TestNewBuilderPerChannel(t *testing.T) {
	b := grpcresolver.NewBuilder("mystatic", "static")
	if b.Scheme() != "mystatic" {
		t.Fatal(b.Scheme())
	}
	cc := newFakeCC()
	r, err := b.Build(target(t, "mystatic:///127.0.0.1:5"), cc, gresolver.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if st := recv(t, cc.states); len(st.Endpoints) != 1 {
		t.Fatalf("state = %+v", st)
	}
	if _, err := grpcresolver.NewBuilder("x", "nosuch").Build(target(t, "x:///a:1"), cc, gresolver.BuildOptions{}); err == nil ||
		!strings.Contains(err.Error(), `unknown scheme "nosuch"`) {
		t.Errorf("unknown feed scheme: %v", err)
	}
}

func TestAttributesRoundTrip(t *testing.T) {
	le := resolver.Endpoint{
		Address:  "10.0.0.1:80",
		Weight:   7,
		Locality: resolver.Locality{Region: "eu", Zone: "eu-1a"},
		Priority: 2,
		Metadata: map[string]string{"version": "v2"},
	}
	g := grpcresolver.ToGRPC(le)
	if w := weight.FromEndpoint(g).Weight; w != 7 {
		t.Errorf("grpc weight attribute = %d, want 7", w)
	}
	back, ok := grpcresolver.FromGRPC(g)
	if !ok || !back.Equal(le) {
		t.Errorf("round trip: %+v, want %+v", back, le)
	}
	if !g.Attributes.Equal(grpcresolver.ToGRPC(le).Attributes) {
		t.Error("equal endpoints have unequal attributes")
	}
	plain, _ := grpcresolver.FromGRPC(gresolver.Endpoint{Addresses: []gresolver.Address{{Addr: "a:1"}}})
	if !plain.Equal(resolver.Endpoint{Address: "a:1"}) {
		t.Errorf("plain endpoint: %+v", plain)
	}
	if _, ok := grpcresolver.FromGRPC(gresolver.Endpoint{}); ok {
		t.Error("endpoint without addresses converted")
	}
	info, ok := grpcresolver.InfoFrom(grpcresolver.SetInfo(gresolver.Endpoint{}, grpcresolver.Info{Priority: 1}))
	if !ok || info.Priority != 1 {
		t.Errorf("SetInfo/InfoFrom: %+v %v", info, ok)
	}
}

func TestBadTargetFailsRPCsWithTheReason(t *testing.T) {
	cc, err := grpc.NewClient("static:///nonsense", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	_, err = testgrpc.NewTestServiceClient(cc).EmptyCall(context.Background(), &testgrpc.Empty{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), `endpoint address "nonsense": want host:port`) {
		t.Fatalf("RPC on a bad static target: %v", err)
	}
}

// A static feed is a resolver.Subscriber: the channel has its set when Build
// returns, and each Set's set when Set returns; nothing after Close.
func TestSubscriberFeedDeliversSynchronously(t *testing.T) {
	feed, err := resolver.NewStaticAddrs("127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	cc := newFakeCC()
	r, err := grpcresolver.FeedBuilder("sync", feed).Build(target(t, "sync:///x"), cc, gresolver.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case st := <-cc.states:
		if len(st.Endpoints) != 1 || st.Endpoints[0].Addresses[0].Addr != "127.0.0.1:1" {
			t.Fatalf("state = %+v", st)
		}
	default:
		t.Fatal("Build returned before the channel had the static set")
	}
	if err := feed.Set(resolver.Endpoint{Address: "127.0.0.1:2"}); err != nil {
		t.Fatal(err)
	}
	select {
	case st := <-cc.states:
		if len(st.Endpoints) != 1 || st.Endpoints[0].Addresses[0].Addr != "127.0.0.1:2" {
			t.Fatalf("state after Set = %+v", st)
		}
	default:
		t.Fatal("Set returned before the channel had the new set")
	}
	r.Close()
	if err := feed.Set(resolver.Endpoint{Address: "127.0.0.1:3"}); err != nil {
		t.Fatal(err)
	}
	select {
	case st := <-cc.states:
		t.Fatalf("closed resolver got %+v", st)
	default:
	}
}

// Issue 9: importing grpcresolver does not register the consul feed (its
// package does), but a consul target does not fall back to grpc's DNS
// resolver either: its RPCs fail saying what to import. Once the feed
// registers, the scheme works. This test binary does not import
// resolver/consul.
// registeredConsul is set once TestUnregisteredLodestarFeedSaysWhatToImport
// has registered a consul feed in this process.
var registeredConsul bool

func TestUnregisteredLodestarFeedSaysWhatToImport(t *testing.T) {
	if registeredConsul {
		t.Skip("an earlier run of this test (-count > 1) registered the consul feed, and feeds cannot be unregistered")
	}
	if _, ok := grpcresolver.SchemeFor("consul"); ok {
		t.Fatal("SchemeFor(consul) reports the consul feed registered, but this test binary does not import it")
	}
	if _, ours := gresolver.Get("consul").(*grpcresolver.Builder); !ours {
		t.Fatalf("grpc's consul scheme is %T, want lodestar's", gresolver.Get("consul"))
	}
	cc, err := grpc.NewClient("consul://127.0.0.1:8500/web?token=s3cret", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	_, err = testgrpc.NewTestServiceClient(cc).EmptyCall(context.Background(), &testgrpc.Empty{})
	want := `scheme "consul" is not registered: import _ "github.com/lodestar-go/lodestar/resolver/consul"`
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), want) {
		t.Fatalf("RPC on a consul target without the consul feed: %v, want UNAVAILABLE saying %s", err, want)
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error shows the token: %v", err)
	}

	// The same under a per-channel name.
	_, err = grpcresolver.NewBuilder("myconsul", "consul").Build(target(t, "myconsul:///web"), newFakeCC(), gresolver.BuildOptions{})
	want = `scheme "myconsul" (lodestar's "consul" feed) is not registered: import _ "github.com/lodestar-go/lodestar/resolver/consul"`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("per-channel Build: %v, want an error saying %s", err, want)
	}

	// The feed registers (as resolver/consul's init would): the held scheme is its.
	registeredConsul = true
	resolver.Register("consul", func(u *url.URL) (resolver.Feed, error) {
		return resolver.NewStaticAddrs(strings.TrimPrefix(u.Path, "/"))
	})
	if s, ok := grpcresolver.SchemeFor("consul"); !ok || s != "consul" {
		t.Fatalf("SchemeFor(consul) = %q, %v after the feed registered", s, ok)
	}
	fcc := newFakeCC()
	r, err := gresolver.Get("consul").Build(target(t, "consul:///127.0.0.1:8500"), fcc, gresolver.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if st := recv(t, fcc.states); len(st.Endpoints) != 1 || st.Endpoints[0].Addresses[0].Addr != "127.0.0.1:8500" {
		t.Fatalf("state = %+v", st)
	}
}

func TestMissingScheme(t *testing.T) {
	for _, tc := range []struct {
		target string
		want   string // "" for no error
	}{
		{"dns:///cnsul://agent/web?token=s3cret", `target "cnsul://agent/web": scheme "cnsul" is not registered with grpc, which resolved the whole target with its "dns" resolver instead`},
		{"passthrough:///etcd://host/key", `scheme "etcd" is not registered with grpc`},
		{"dns:///api.internal:8080", ""},
		{"dns:///static://127.0.0.1:1", ""}, // registered: grpc would not have fallen back
		{"dns:///1x://host", ""},            // not a scheme
		{"static:///cnsul://x", ""},         // not grpc's fallback
	} {
		err := grpcresolver.MissingScheme(target(t, tc.target))
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v, want nil", tc.target, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error saying %s", tc.target, err, tc.want)
		case err != nil && (strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "static")):
			t.Errorf("%s: %v shows the token or does not list lodestar's schemes", tc.target, err)
		}
	}
}
