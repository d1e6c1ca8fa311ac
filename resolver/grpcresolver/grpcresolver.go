// Package grpcresolver makes lodestar's discovery feeds usable as gRPC name
// resolvers, and carries lodestar's endpoint attributes (weight, locality,
// priority, metadata) through gRPC's resolver state.
//
// Importing the package registers every lodestar feed scheme that is linked into
// the program with grpc, whatever the order in which the feed packages are
// initialised. The static feed is always there; the others come with their own
// packages, which a program imports for their side effect:
//
//	import (
//		_ "github.com/lodestar-go/lodestar/resolver/grpcresolver" // static
//		_ "github.com/lodestar-go/lodestar/resolver/consul"       // consul
//		_ "github.com/lodestar-go/lodestar/resolver/dns"          // lodestar-dns, srv
//	)
//
//	conn, err := grpc.NewClient("static:///10.0.0.1:8080,10.0.0.2:8080", ...)
//
// The names of lodestar's own feeds ("consul", "srv", "lodestar-dns") are held
// for them with grpc even when their package is not imported, so that a target
// such as "consul://agent/web" does not fall back to grpc's DNS resolver:
// its RPCs fail with UNAVAILABLE and an error that names the package to import.
// For other targets whose scheme grpc does not know, MissingScheme tells what
// happened.
//
// A scheme grpc already owns (its built-in "dns", "passthrough", "unix", ...) is
// never overridden: lodestar's feed is registered under the name "lodestar-"
// followed by the scheme instead, so lodestar's DNS feed (A/AAAA) is
// "lodestar-dns:///api.internal:8080" while "dns:///..." stays grpc's own
// resolver. SchemeFor tells which name a feed scheme got. Schemes without a
// clash ("static", "srv", "consul") keep their name.
//
// For a single channel, pass a builder with grpc.WithResolvers instead:
// NewBuilder serves any registered feed scheme under a name of your choosing,
// and FeedBuilder serves one Feed value (for example a *resolver.Static the
// program updates itself).
//
// A feed that is a resolver.Subscriber (the static feed) delivers synchronously:
// its first set reaches the channel before the resolver's Build returns, and
// each Set reaches the channel's load-balancing policy before Set returns. Other
// feeds are watched on a goroutine of their own.
//
// The resolvers publish both State.Endpoints and State.Addresses, as grpc's own
// DNS resolver does. Each endpoint carries its weight in grpc's
// experimental/balancer/weight attribute and its locality, priority and
// metadata in the attribute set by SetInfo (read it back with InfoFrom, or the
// whole lodestar endpoint with FromGRPC). Feed errors go to
// ClientConn.ReportError while the last good set stays in force. Feeds push
// their changes, so ResolveNow does nothing. Close cancels the feed's Watch and
// waits for it; it never waits on a pending discovery call.
package grpcresolver

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"

	_ "google.golang.org/grpc" // registers grpc's own resolvers first, so they are never overridden
	"google.golang.org/grpc/experimental/balancer/weight"
	grpcresolver "google.golang.org/grpc/resolver"

	"github.com/lodestar-go/lodestar/resolver"
)

// Prefix is put in front of a lodestar feed scheme that grpc already owns, to
// give the gRPC scheme it is registered under ("dns" becomes "lodestar-dns").
const Prefix = "lodestar-"

// grpcOwned lists grpc-go's own resolver schemes. A lodestar feed never takes
// one of these names, even before grpc registered it (the xds resolvers register
// only when their package is imported).
var grpcOwned = map[string]bool{
	"dns": true, "passthrough": true, "unix": true, "unix-abstract": true,
	"xds": true, "google-c2p": true, "vsock": true,
}

// knownFeeds are lodestar's feed schemes that live in packages of their own,
// with the package that registers each.
var knownFeeds = map[string]string{
	"consul": "github.com/lodestar-go/lodestar/resolver/consul",
	"dns":    "github.com/lodestar-go/lodestar/resolver/dns",
	"srv":    "github.com/lodestar-go/lodestar/resolver/dns",
}

var (
	regMu sync.Mutex
	ours  = map[string]string{} // feed scheme -> grpc scheme we registered
	held  = map[string]string{} // feed scheme -> grpc scheme held for a known feed not (yet) registered
)

func init() {
	holdKnownSchemes()
	resolver.OnRegister(registerScheme)
}

// grpcName returns the gRPC scheme for a lodestar feed scheme: its own name,
// or Prefix+scheme when grpc (or someone else's resolver) owns the name. It
// reports false when someone else's resolver holds even the prefixed name.
func grpcName(feedScheme string) (string, bool) {
	name := feedScheme
	if b := grpcresolver.Get(name); grpcOwned[name] || b != nil && !isOurs(b) {
		name = Prefix + feedScheme
	}
	if b := grpcresolver.Get(name); b != nil && !isOurs(b) {
		return "", false
	}
	return name, true
}

// isOurs reports whether b is one of this package's builders.
func isOurs(b grpcresolver.Builder) bool {
	_, ok := b.(*Builder)
	return ok
}

// holdKnownSchemes registers a builder for each of lodestar's own feeds under
// its gRPC name, unless someone else's resolver has the name: a target naming
// a feed whose package is not imported then fails with an error that says so,
// instead of falling back to grpc's DNS resolver. registerScheme replaces the
// builder when the feed registers.
func holdKnownSchemes() {
	regMu.Lock()
	defer regMu.Unlock()
	for feed := range knownFeeds {
		if name, ok := grpcName(feed); ok && grpcresolver.Get(name) == nil {
			held[feed] = name
			grpcresolver.Register(NewBuilder(name, feed))
		}
	}
}

// registerScheme registers the lodestar feed scheme with grpc under its own name,
// or under Prefix+scheme when grpc (or someone else) owns the name.
func registerScheme(feedScheme string) {
	regMu.Lock()
	defer regMu.Unlock()
	if _, done := ours[feedScheme]; done {
		return // re-registration of the feed: our builder looks it up at Build time
	}
	name, ok := held[feedScheme]
	if b := grpcresolver.Get(name); ok && b != nil && !isOurs(b) {
		ok = false // someone else's resolver replaced the one holding the name
	}
	delete(held, feedScheme)
	if !ok {
		if name, ok = grpcName(feedScheme); !ok {
			return // someone else's resolver holds even the prefixed name
		}
	}
	ours[feedScheme] = name
	grpcresolver.Register(NewBuilder(name, feedScheme))
}

// SchemeFor returns the gRPC scheme under which the lodestar feed scheme is
// registered globally ("static" for "static", "lodestar-dns" for "dns"), and
// whether it is.
func SchemeFor(feedScheme string) (string, bool) {
	regMu.Lock()
	defer regMu.Unlock()
	s, ok := ours[feedScheme]
	return s, ok
}

// Builder is a gRPC resolver.Builder over lodestar feeds.
type Builder struct {
	scheme     string
	feedScheme string
	feed       resolver.Feed
}

// NewBuilder returns a gRPC resolver builder for the gRPC scheme grpcScheme that
// resolves targets with the lodestar feed scheme feedScheme: the target
// "grpcScheme://authority/path" is handed to resolver.Parse as
// "feedScheme://authority/path". The feed scheme is looked up when a channel
// builds its resolver, so its package may be imported later. Use it with
// grpc.WithResolvers to choose the name per channel.
func NewBuilder(grpcScheme, feedScheme string) *Builder {
	return &Builder{scheme: grpcScheme, feedScheme: feedScheme}
}

// FeedBuilder returns a gRPC resolver builder for the scheme grpcScheme that
// serves feed for every target, ignoring the target's path. Each channel watches
// the feed on its own. Use it with grpc.WithResolvers.
func FeedBuilder(grpcScheme string, feed resolver.Feed) *Builder {
	return &Builder{scheme: grpcScheme, feed: feed}
}

// Scheme returns the gRPC scheme the builder serves.
func (b *Builder) Scheme() string { return b.scheme }

// Build starts watching the target's feed for the channel cc. A target the feed
// scheme rejects is an error naming what is wrong, and so is a target naming
// one of lodestar's feeds whose package the program does not import; as
// grpc.NewClient builds its resolver lazily, the channel's RPCs fail with
// UNAVAILABLE and that error. A resolver.Subscriber feed has delivered its set
// to cc when Build returns.
func (b *Builder) Build(target grpcresolver.Target, cc grpcresolver.ClientConn, _ grpcresolver.BuildOptions) (grpcresolver.Resolver, error) {
	feed := b.feed
	if feed == nil {
		u := target.URL // a copy
		u.Scheme = b.feedScheme
		if pkg, known := knownFeeds[b.feedScheme]; known && !slices.Contains(resolver.Schemes(), b.feedScheme) {
			what := fmt.Sprintf("scheme %q", b.scheme)
			if b.scheme != b.feedScheme {
				what += fmt.Sprintf(" (lodestar's %q feed)", b.feedScheme)
			}
			return nil, fmt.Errorf("lodestar: target %q: %s is not registered: import _ %q",
				resolver.Redact(target.URL.String()), what, pkg)
		}
		f, err := resolver.Parse(u.String())
		if err != nil {
			return nil, err // names the target and what is wrong with it
		}
		feed = f
	}
	if sub, ok := feed.(resolver.Subscriber); ok {
		return &subResolver{cancel: sub.Subscribe(sink{cc})}, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &feedResolver{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		resolver.Run(ctx, feed, sink{cc}, resolver.RunOptions{})
	}()
	return r, nil
}

// feedResolver runs one feed for one channel.
type feedResolver struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// ResolveNow does nothing: feeds push every change as they learn it and retry
// on their own.
func (*feedResolver) ResolveNow(grpcresolver.ResolveNowOptions) {}

// Close cancels the feed's Watch and waits for its goroutine to return.
func (r *feedResolver) Close() {
	r.cancel()
	<-r.done
}

// subResolver is one channel's subscription to a resolver.Subscriber feed.
type subResolver struct{ cancel func() }

// ResolveNow does nothing: the feed delivers every change as it is made.
func (*subResolver) ResolveNow(grpcresolver.ResolveNowOptions) {}

// Close ends the subscription: once it returns, the feed delivers nothing more
// to the channel.
func (r *subResolver) Close() { r.cancel() }

// MissingScheme explains a target that grpc could not resolve by its scheme.
// When no resolver is registered for a target's scheme, grpc resolves the whole
// target string with its default resolver instead: "cnsul://agent/web" becomes
// "dns:///cnsul://agent/web", whose DNS lookup fails or, worse, finds a host
// "cnsul". For such a target (its scheme grpc's "dns" or "passthrough", or the
// default scheme, and its endpoint a "scheme://..." string whose scheme no
// global grpc resolver serves) MissingScheme returns an error naming the
// scheme; it returns nil for any other target. The lodestar policy fails the
// channel's RPCs with it.
func MissingScheme(target grpcresolver.Target) error {
	switch target.URL.Scheme {
	case "dns", "passthrough", grpcresolver.GetDefaultScheme():
	default:
		return nil
	}
	ep := target.Endpoint()
	scheme, _, ok := strings.Cut(ep, "://")
	if !ok || !validScheme(scheme) || grpcresolver.Get(strings.ToLower(scheme)) != nil {
		return nil
	}
	regMu.Lock()
	var names []string
	for _, m := range []map[string]string{ours, held} {
		for _, n := range m {
			names = append(names, n)
		}
	}
	regMu.Unlock()
	sort.Strings(names)
	return fmt.Errorf("lodestar: target %q: scheme %q is not registered with grpc, which resolved the whole target with its %q resolver instead (lodestar's gRPC schemes: %s)",
		resolver.Redact(ep), scheme, target.URL.Scheme, strings.Join(names, ", "))
}

// validScheme reports whether s is a URI scheme: a letter, then letters,
// digits, '+', '-' or '.'.
func validScheme(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case i > 0 && ('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return true
}

// sink turns a feed's sets into gRPC resolver states.
type sink struct{ cc grpcresolver.ClientConn }

// Update publishes eps as the channel's endpoints and addresses.
func (s sink) Update(eps []resolver.Endpoint) {
	st := grpcresolver.State{
		Endpoints: make([]grpcresolver.Endpoint, len(eps)),
		Addresses: make([]grpcresolver.Address, len(eps)),
	}
	for i, ep := range eps {
		st.Endpoints[i] = ToGRPC(ep)
		st.Addresses[i] = grpcresolver.Address{Addr: ep.Address}
	}
	// An error means the policy rejected the state; grpc then asks for a
	// re-resolution, which a feed does on its own.
	_ = s.cc.UpdateState(st)
}

// ReportError hands a feed error to grpc.
func (s sink) ReportError(err error) { s.cc.ReportError(err) }

// Info is what a lodestar endpoint carries besides its address and weight.
type Info struct {
	Locality resolver.Locality
	Priority int
	Metadata map[string]string
}

// Equal reports whether o is an Info equal to i (grpc compares attributes
// with it).
func (i Info) Equal(o any) bool {
	oi, ok := o.(Info)
	return ok && i.Locality == oi.Locality && i.Priority == oi.Priority && maps.Equal(i.Metadata, oi.Metadata)
}

// infoKey is the attribute key of Info in resolver.Endpoint.Attributes.
type infoKey struct{}

// SetInfo returns a copy of ep with info in its attributes. A gRPC resolver of
// your own uses it to give lodestar's policy the endpoint's locality, priority
// and metadata; set the weight with grpc's weight.Set.
func SetInfo(ep grpcresolver.Endpoint, info Info) grpcresolver.Endpoint {
	ep.Attributes = ep.Attributes.WithValue(infoKey{}, info)
	return ep
}

// InfoFrom returns the Info SetInfo stored in ep, and whether there is one.
func InfoFrom(ep grpcresolver.Endpoint) (Info, bool) {
	info, ok := ep.Attributes.Value(infoKey{}).(Info)
	return info, ok
}

// ToGRPC converts a lodestar endpoint to a gRPC one: one address, the weight in
// grpc's weight attribute (when not the default) and the rest in Info.
func ToGRPC(ep resolver.Endpoint) grpcresolver.Endpoint {
	g := grpcresolver.Endpoint{Addresses: []grpcresolver.Address{{Addr: ep.Address}}}
	if ep.Weight != 0 {
		g = weight.Set(g, weight.EndpointInfo{Weight: ep.Weight})
	}
	if ep.Locality != (resolver.Locality{}) || ep.Priority != 0 || len(ep.Metadata) > 0 {
		g = SetInfo(g, Info{Locality: ep.Locality, Priority: ep.Priority, Metadata: ep.Metadata})
	}
	return g
}

// FromGRPC converts a gRPC endpoint to a lodestar one: the address is the
// endpoint's first address, the weight comes from grpc's weight attribute and
// the locality, priority and metadata from Info. It reports false for an
// endpoint without addresses.
func FromGRPC(g grpcresolver.Endpoint) (resolver.Endpoint, bool) {
	if len(g.Addresses) == 0 {
		return resolver.Endpoint{}, false
	}
	ep := resolver.Endpoint{Address: g.Addresses[0].Addr, Weight: weight.FromEndpoint(g).Weight}
	if info, ok := InfoFrom(g); ok {
		ep.Locality, ep.Priority, ep.Metadata = info.Locality, info.Priority, info.Metadata
	}
	return ep, true
}
