// Package grpcpolicy is lodestar's gRPC front door: a grpc-go load-balancing
// policy, registered as "lodestar", that balances RPCs with lodestar's engine,
// the same engine, algorithms and configuration as the HTTP transport.
//
// A blank import registers it; a service config selects and configures it. The
// policy's configuration is balancer.Config's JSON, exactly what the HTTP side
// reads:
//
//	import _ "github.com/lodestar-go/lodestar/balancer/grpcpolicy"
//
//	conn, err := grpc.NewClient("static:///10.0.0.1:8080,10.0.0.2:8080",
//		grpc.WithTransportCredentials(insecure.NewCredentials()),
//		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"lodestar":{"algorithm":"least_request"}}]}`))
//
// An invalid configuration is rejected by grpc.NewClient (default service
// config) or fails the channel's RPCs (service config from the resolver) with
// lodestar's error, which names the field.
//
// # How it is built
//
// The policy follows grpc-go's recommended shape (see its leastrequest policy):
// an endpointsharding balancer with one pick_first child per endpoint, the
// health listener enabled (so client-side health checking, when the service
// config turns it on, takes unhealthy endpoints out), and a picker of its own.
// The resolver's endpoints become the engine's endpoint set; the weight comes
// from grpc's experimental/balancer/weight attribute, locality, priority and
// metadata from grpcresolver.Info. An endpoint whose child is not READY
// carries the engine's NotConnected condition.
//
// An endpoint is the same endpoint as long as its set of addresses is the same,
// in any order (as endpointsharding tells its children apart): reordering
// [a b] to [b a] keeps its connection and its statistics. The engine knows it
// by one of its addresses, the lowest that no other endpoint uses. Addresses
// grpc dials but that are not host:port (unix:///path and unix-abstract:name
// sockets, a passthrough name that a custom dialer resolves) are accepted: the
// engine knows such an endpoint as "[address]:1".
//
// Each pick asks the engine for an endpoint and then asks that endpoint's
// pick_first child for its connection. The outcome comes back through
// PickResult.Done, without a closure allocated per RPC: latency from pick to
// end of call, the status code, and the class a Classifier gives it. An RPC that
// grpc reports done with no error and no bytes sent was never attempted (grpc
// re-picks when a transport was not ready) and counts as outcome.NotSent,
// neither success nor failure.
//
// # Waiting and failing fast
//
// While no endpoint is eligible but one is on its way (its child IDLE or
// CONNECTING: a fresh channel, a replaced endpoint set, a reconnect), RPCs
// wait for it, as with grpc's own policies: routine resolver changes fail no
// RPC. This holds for pickers published before the change too: the engine's
// membership changes before the children's states reach a new picker, and
// the picker asks the policy, not its own snapshot, whether something is
// connecting.
//
// With nothing on its way (no endpoint discovered, or every one in
// TRANSIENT_FAILURE, unhealthy or ejected), an RPC fails at once with
// UNAVAILABLE and the engine's *balancer.NoEndpointsError text, which says why,
// plus the last connection error if there is one; a wait-for-ready RPC waits
// for an endpoint instead (grpc's picker contract). Config.WaitForEndpoints, as
// on the HTTP side, makes picks wait up to that long (never past the RPC's
// deadline) for an endpoint instead of failing.
//
// An empty resolver update (or one whose every endpoint is invalid) is taken
// for a discovery fault unless Config.AllowEmpty: the endpoints in force stay,
// also when the update carries a new config. A config change keeps the
// endpoint set, the endpoints' connectivity and their statistics (outcome
// counters, requests in flight, latency): the engine takes the new config in
// place (balancer.Engine.Reconfigure).
//
// A target whose scheme grpc does not know is resolved by grpc's DNS resolver
// as a whole ("cnsul://agent/web" as "dns:///cnsul://agent/web"); the policy
// fails such a channel's RPCs, wait-for-ready ones included, with UNAVAILABLE
// and an error naming the scheme (see grpcresolver.MissingScheme).
//
// # Affinity
//
// The hashing algorithms (ring_hash, maglev, bounded_load) get the RPC's
// affinity key as Config.Affinity says, in this order: a key the caller put in
// the RPC's context with balancer.WithAffinityKey; the first value of the
// outgoing metadata key Affinity.Metadata; with Affinity.ClientIP, the IP of the
// peer of the incoming call whose context the RPC was made with (a proxy's
// client). The key is hashed with balancer.HashKey, as on the HTTP side, so a
// key lands on the same endpoint over HTTP and gRPC:
//
//	{"loadBalancingConfig":[{"lodestar":{"algorithm":"ring_hash","affinity":{"metadata":"x-user-id"}}}]}
package grpcpolicy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	grpcbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/base"
	"google.golang.org/grpc/balancer/endpointsharding"
	"google.golang.org/grpc/balancer/pickfirst"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	gresolver "google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"
	"google.golang.org/grpc/status"

	"go.opentelemetry.io/otel/metric"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/internal/monotime"
	"github.com/lodestar-go/lodestar/resolver"
	"github.com/lodestar-go/lodestar/resolver/grpcresolver"
)

// Name is the name the policy is registered under with grpc, for service
// configs: {"loadBalancingConfig":[{"lodestar":{...}}]}.
const Name = "lodestar"

func init() { grpcbalancer.Register(NewBuilder(Options{})) }

// Options are the policy's Go-side settings, those a JSON service config cannot
// carry. Register a policy with other options under another name:
//
//	grpcbalancer.Register(grpcpolicy.NewBuilder(grpcpolicy.Options{
//		Name:       "lodestar_strict",
//		Classifier: grpcpolicy.ClassifyCodes(map[codes.Code]outcome.Class{codes.NotFound: outcome.ServerError}),
//	}))
type Options struct {
	// Name is the policy's name in service configs. Default Name ("lodestar").
	Name string
	// Classifier sorts RPC outcomes. nil means DefaultClassifier.
	Classifier Classifier
	// Logger receives membership changes and discovery errors. nil means
	// slog.Default().
	Logger *slog.Logger
	// Rand is the engine's random source (see balancer.Options.Rand). nil means
	// math/rand/v2.
	Rand func() uint64
	// OnEngine, if set, is called with every engine the policy creates: one
	// per channel (a config change reconfigures it in place). target is the channel's target
	// endpoint (grpc's Target.Endpoint()). Use it to inspect endpoints' states
	// and outcomes (metrics, debug pages, tests). It runs on grpc's balancer
	// goroutine and must not block.
	OnEngine func(target string, e *balancer.Engine)
	// MeterProvider makes the engines' OpenTelemetry instruments (see
	// balancer.MetricAttempts and the others; lodestar.door is "grpc").
	// nil means otel.GetMeterProvider(), a no-op unless the application
	// set one.
	MeterProvider metric.MeterProvider
	// MetricsOmitEndpoint leaves endpoint addresses out of metric
	// attributes, for channels with many endpoints.
	MetricsOmitEndpoint bool
}

// NewBuilder returns a grpc balancer builder for the lodestar policy with opts.
// The package registers NewBuilder(Options{}) as "lodestar" in its init.
func NewBuilder(opts Options) grpcbalancer.Builder {
	if opts.Name == "" {
		opts.Name = Name
	}
	if opts.Classifier == nil {
		opts.Classifier = DefaultClassifier
	}
	return &builder{opts: opts}
}

type builder struct{ opts Options }

func (b *builder) Name() string { return b.opts.Name }

// lbConfig is the parsed service config of the policy.
type lbConfig struct {
	serviceconfig.LoadBalancingConfig
	cfg balancer.Config
	key string // canonical JSON, to tell whether a new config differs
}

// ParseConfig parses the policy's JSON with balancer.ParseConfig.
func (b *builder) ParseConfig(js json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	cfg, err := balancer.ParseConfig(js)
	if err != nil {
		return nil, err
	}
	key, err := json.Marshal(cfg)
	if err != nil {
		key = js
	}
	return &lbConfig{cfg: cfg, key: string(key)}, nil
}

func (b *builder) Build(cc grpcbalancer.ClientConn, bOpts grpcbalancer.BuildOptions) grpcbalancer.Balancer {
	p := &policy{
		ClientConn: cc,
		opts:       b.opts,
		service:    bOpts.Target.Endpoint(),
		target:     resolver.Redact(bOpts.Target.String()),
		states:     gresolver.NewEndpointMap[*endpointState](),
		byKey:      map[string]*endpointState{},
		gate:       new(gate),
		creds:      bOpts.DialCreds,
		kick:       make(chan struct{}, 1),
	}
	if err := grpcresolver.MissingScheme(bOpts.Target); err != nil {
		// A status error: it ends even wait-for-ready RPCs, as no resolver
		// answer will ever make this target work.
		p.targetErr = status.Error(codes.Unavailable, err.Error())
	}
	p.child = endpointsharding.NewBalancer(p, bOpts, grpcbalancer.Get(pickfirst.Name).Build, endpointsharding.Options{})
	return p
}

// endpointState is the policy's per-endpoint record, attached to the engine's
// Endpoint: the endpoint's engine address and its pick_first child's current
// picker and state.
type endpointState struct {
	key    string // the engine's address for the endpoint, see engineKey
	picker atomic.Pointer[childPicker]
	state  connectivity.State // under policy.mu
	valid  bool               // the engine took the endpoint (see resolver.Endpoint.Validate)
	// outside: not a subset candidate, so endpointsharding does not have it
	// (subset.go). Under policy.mu.
	outside bool
}

type childPicker struct{ grpcbalancer.Picker }

// gate is what a picker reads, beyond the engine, when the engine has no
// endpoint to give: the number of the engine's endpoints whose connection is
// on its way (child IDLE or CONNECTING). While there is one, an RPC waits for
// it (ErrNoSubConnAvailable) instead of failing.
//
// The policy raises the count before any engine change that can take
// endpoints out and lowers it only after the engine changes that go with it,
// so a pick that sees the engine's new state sees a count that covers it. A
// pick that finds no endpoint reads the count once: above 0 it waits; at 0 it
// reads the engine again, since the count may have dropped because an
// endpoint became READY after the pick's first read (and failing the RPC on
// that first read was a first-request failure, 1 in ~1,000 fresh channels
// on a loaded machine).
type gate struct{ waiting atomic.Int64 }

// raise stores n if it is above the current count.
func (g *gate) raise(n int64) {
	if n > g.waiting.Load() {
		g.waiting.Store(n)
	}
}

// policy is the balancer grpc builds per channel. It embeds the channel's
// ClientConn to intercept endpointsharding's UpdateState.
type policy struct {
	grpcbalancer.ClientConn
	child     grpcbalancer.Balancer
	opts      Options
	service   string
	target    string // the channel's target, redacted: for debug pages
	gate      *gate
	targetErr error                            // the target cannot work (a scheme grpc does not know): every RPC fails with it
	creds     credentials.TransportCredentials // the channel's, for lodestar's gRPC health checks

	mu     sync.Mutex
	eng    *balancer.Engine
	cfg    balancer.Config
	cfgKey string
	// states holds a record per resolver endpoint, by identity: the set of
	// its addresses, whatever their order (as endpointsharding tells its
	// children apart). byKey holds the same records by engine address.
	states *gresolver.EndpointMap[*endpointState]
	byKey  map[string]*endpointState
	closed bool
	retry  *channelRetry // the config's retry section, compiled; nil without one
	// retryMetrics are the channel's retry instruments, registered with
	// its engine.
	retryMetrics retryMetrics
	// unretried is set once the policy has warned that a call came without
	// the retry interceptor while the config has a retry section.
	unretried atomic.Bool
	// testHookNoEndpoint, when a test sets it (before its picks), runs in
	// Pick between the engine's answer of no endpoint and the read of the gate.
	testHookNoEndpoint func()

	// Subsetting (subset.go). childMu serializes the calls into child;
	// resolverState is the last resolver state (health listener enabled),
	// which endpointsharding gets narrowed to the subset's candidates.
	childMu                sync.Mutex
	resolverState          *gresolver.State
	kick                   chan struct{} // wakes the subset goroutine (capacity 1)
	subsetStop, subsetDone chan struct{} // the subset goroutine's, nil until it starts
}

// UpdateClientConnState takes a new resolver state and config: it applies the
// config to the engine, mirrors the endpoints into it and hands them to
// endpointsharding.
func (p *policy) UpdateClientConnState(ccs grpcbalancer.ClientConnState) error {
	cfg, _ := ccs.BalancerConfig.(*lbConfig)
	if cfg == nil {
		cfg = &lbConfig{key: "{}"}
	}
	p.childMu.Lock() // before mu: see subset.go
	defer p.childMu.Unlock()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	if p.targetErr != nil {
		p.ClientConn.UpdateState(grpcbalancer.State{ConnectivityState: connectivity.TransientFailure, Picker: base.NewErrPicker(p.targetErr)})
		p.mu.Unlock()
		return nil
	}
	if err := p.configureLocked(cfg); err != nil { // ParseConfig validated it; kept for safety
		p.mu.Unlock()
		return err
	}
	eps, states, byKey, valid := p.membership(ccs.ResolverState.Endpoints)
	if valid == 0 && !p.cfg.AllowEmpty && len(p.eng.Endpoints()) > 0 {
		// An empty (or wholly invalid) answer is a discovery fault: the
		// engine reports it and keeps its set, judged by the config in force
		// now, and the children stay too; grpc asks the resolver to try again.
		p.eng.Update(eps)
		p.publishLocked(nil)
		p.mu.Unlock()
		return grpcbalancer.ErrBadResolverState
	}
	// New endpoints start NotConnected; while they connect and nothing else is
	// eligible, RPCs wait: raise the gate before the engine sees them.
	waiting := countWaiting(states)
	p.gate.raise(waiting)
	p.states, p.byKey = states, byKey
	p.eng.Update(eps)
	// With subsetting, endpointsharding gets only the candidates (subset.go).
	full := pickfirst.EnableHealthListener(ccs.ResolverState)
	p.resolverState = &full
	rs, _ := p.childStateLocked()
	p.syncEngineLocked()
	p.mu.Unlock()

	// endpointsharding reports the children's states synchronously at the end,
	// which publishes a picker through UpdateState.
	return p.child.UpdateClientConnState(grpcbalancer.ClientConnState{ResolverState: rs})
}

// configureLocked makes the engine run cfg: the first config builds the
// engine; a change reconfigures it in place (Engine.Reconfigure), so the
// endpoint set, conditions and statistics stay.
func (p *policy) configureLocked(cfg *lbConfig) error {
	if cfg.key != p.cfgKey || p.eng == nil {
		// A new retry section gets a new policy and budget; an unchanged
		// config keeps both.
		ch, err := newChannelRetry(cfg.cfg.Retry, p.opts.Rand)
		if err != nil {
			return err
		}
		p.retry = ch
		p.retryMetrics.setRetry(ch)
	}
	if p.eng != nil {
		if cfg.key == p.cfgKey {
			return nil
		}
		if err := p.eng.Reconfigure(cfg.cfg); err != nil {
			return err
		}
		p.cfg, p.cfgKey = cfg.cfg, cfg.key
		return nil
	}
	eng, err := balancer.NewEngine(cfg.cfg, balancer.Options{
		Service: p.service, Logger: p.opts.Logger, Rand: p.opts.Rand,
		// lodestar's own gRPC health checks connect as the channel does.
		Health: balancer.HealthOptions{GRPCCredentials: p.creds},
		// Not eligible until its child reports READY (syncEngineLocked).
		InitialConditions: balancer.NotConnected,
		// Subsetting: endpointsharding gets the new candidates (subset.go).
		OnSubsetChange: p.subsetKick,
		// Observability: metrics, debug pages (balancer/debugpage).
		Door: "grpc", Target: p.target, MeterProvider: p.opts.MeterProvider, MetricsOmitEndpoint: p.opts.MetricsOmitEndpoint,
	})
	if err != nil {
		return err
	}
	p.eng, p.cfg, p.cfgKey = eng, cfg.cfg, cfg.key
	p.startSubsetLocked()
	p.retryMetrics.start(p.opts.MeterProvider, p.service)
	if p.opts.OnEngine != nil {
		p.opts.OnEngine(p.service, eng)
	}
	return nil
}

// membership maps the resolver's endpoints to records and engine endpoints:
// an endpoint seen before (the same set of addresses, in any order) keeps its
// record and engine address; a new one gets a record (IDLE) and an address no
// other endpoint has. Endpoints without addresses and repeats are skipped.
// valid counts the endpoints the engine will take.
func (p *policy) membership(in []gresolver.Endpoint) (eps []resolver.Endpoint, states *gresolver.EndpointMap[*endpointState], byKey map[string]*endpointState, valid int64) {
	states = gresolver.NewEndpointMap[*endpointState]()
	byKey = make(map[string]*endpointState, len(in))
	for _, g := range in { // known endpoints first: they keep their addresses
		if st, ok := p.states.Get(g); ok && len(g.Addresses) > 0 {
			states.Set(g, st)
			byKey[st.key] = st
		}
	}
	taken := func(k string) bool { _, ok := byKey[k]; return ok }
	seen := gresolver.NewEndpointMap[struct{}]()
	eps = make([]resolver.Endpoint, 0, len(in))
	for _, g := range in {
		if len(g.Addresses) == 0 {
			continue
		}
		if _, dup := seen.Get(g); dup {
			continue
		}
		seen.Set(g, struct{}{})
		st, ok := states.Get(g)
		if !ok {
			st = &endpointState{key: engineKey(g, taken), state: connectivity.Idle}
			states.Set(g, st)
			byKey[st.key] = st
		}
		le, _ := grpcresolver.FromGRPC(g)
		le.Address = st.key
		st.valid = le.Validate() == nil
		if st.valid {
			valid++
		}
		eps = append(eps, le)
	}
	return eps, states, byKey, valid
}

// engineKey returns the engine address for a new endpoint, one taken does not
// report taken. An endpoint is known to the engine by one of its addresses:
// the first, in sorted order, that is free, so that reordering an endpoint's
// addresses keeps its identity, and its statistics. An address that is not
// host:port (a unix socket path, a name without a port), which grpc dials but
// the engine's host:port check rejects, is known as "[address]:1".
func engineKey(g gresolver.Endpoint, taken func(string) bool) string {
	addrs := make([]string, len(g.Addresses))
	for i, a := range g.Addresses {
		addrs[i] = a.Addr
	}
	slices.Sort(addrs)
	addrs = slices.Compact(addrs)
	for _, a := range addrs {
		if k := addrKey(a); !taken(k) {
			return k
		}
	}
	// Every address is some other endpoint's already (a resolver that lists
	// one address in two endpoints): number this one.
	for n := 2; ; n++ {
		if k := "[" + bracketable(addrs[0]) + "#" + strconv.Itoa(n) + "]:1"; !taken(k) {
			return k
		}
	}
}

// addrKey returns a as the engine knows it: a itself when it is host:port,
// else "[a]:1".
func addrKey(a string) string {
	if (resolver.Endpoint{Address: a}).Validate() == nil {
		return a
	}
	return "[" + bracketable(a) + "]:1"
}

// bracketable returns a with the characters that cannot appear between the
// brackets of "[host]:port" replaced, and never empty.
func bracketable(a string) string {
	if a == "" {
		return "-"
	}
	return strings.NewReplacer("[", "(", "]", ")").Replace(a)
}

// countWaiting returns the number of valid records whose child is on its way
// to READY.
func countWaiting(states *gresolver.EndpointMap[*endpointState]) int64 {
	var n int64
	for _, st := range states.Values() {
		if st.valid && !st.outside && (st.state == connectivity.Idle || st.state == connectivity.Connecting) {
			n++
		}
	}
	return n
}

// syncEngineLocked attaches each engine endpoint's record and sets its
// NotConnected condition from its child's connectivity (NotConnected until the
// child reports READY), inside the gate's bracket: the count of records on
// their way to READY is raised before the engine changes and stored after.
func (p *policy) syncEngineLocked() {
	waiting := countWaiting(p.states)
	p.gate.raise(waiting)
	defer p.gate.waiting.Store(waiting)
	for _, ep := range p.eng.Endpoints() {
		st := p.byKey[ep.Address()]
		if st == nil {
			continue // an endpoint the engine kept through an empty answer
		}
		if a, _ := ep.Attached().(*endpointState); a != st {
			ep.Attach(st)
		}
		p.eng.SetCondition(ep.Address(), balancer.NotConnected, st.state != connectivity.Ready)
	}
}

// UpdateState receives endpointsharding's aggregated state: it records each
// child's picker and connectivity, updates the engine's conditions and
// publishes a lodestar picker.
func (p *policy) UpdateState(state grpcbalancer.State) {
	children := endpointsharding.ChildStatesFromPicker(state.Picker)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.eng == nil || p.targetErr != nil {
		return
	}
	var connErr error
	for _, c := range children {
		st, ok := p.states.Get(c.Endpoint)
		if !ok || st.outside {
			continue // a child endpointsharding is about to replace or close
		}
		st.picker.Store(&childPicker{c.State.Picker})
		st.state = c.State.ConnectivityState
		if st.state == connectivity.TransientFailure && c.State.Picker != nil {
			// pick_first's picker in TRANSIENT_FAILURE returns why.
			if _, err := c.State.Picker.Pick(grpcbalancer.PickInfo{Ctx: context.Background()}); err != nil {
				connErr = err
			}
		}
	}
	p.syncEngineLocked()
	p.publishLocked(connErr)
}

// publishLocked publishes a picker over the engine, with the channel state
// grpc's own policies would report for the children's states: READY if one
// is, else CONNECTING, IDLE or TRANSIENT_FAILURE.
func (p *policy) publishLocked(connErr error) {
	var n [connectivity.Shutdown + 1]int
	for _, st := range p.states.Values() {
		if st.valid && !st.outside && st.state <= connectivity.Shutdown {
			n[st.state]++
		}
	}
	agg := connectivity.TransientFailure
	for _, s := range []connectivity.State{connectivity.Ready, connectivity.Connecting, connectivity.Idle} {
		if n[s] > 0 {
			agg = s
			break
		}
	}
	aff := p.cfg.Affinity
	p.ClientConn.UpdateState(grpcbalancer.State{ConnectivityState: agg, Picker: &picker{
		eng:      p.eng,
		gate:     p.gate,
		classify: p.opts.Classifier,
		mdKey:    aff.Metadata,
		clientIP: aff.ClientIP,
		connErr:  connErr,
		retry:    p.retry,
		policy:   p,
	}})
}

// warnUnretried logs, once per channel, that the channel's config has a
// retry section but its calls come without the retry interceptor, which
// applies it.
func (p *policy) warnUnretried() {
	if p.unretried.Swap(true) {
		return
	}
	logger := p.opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	logger.Warn("lodestar: the config's retry section applies to calls made with the retry interceptor (grpc.NewClient(..., grpcpolicy.WithRetries())); this channel's calls come without it",
		"target", resolver.Redact(p.service))
}

// ResolverError passes a resolver error to the engine (it shows in
// no-endpoints errors) and to the children.
func (p *policy) ResolverError(err error) {
	p.mu.Lock()
	if p.targetErr != nil {
		p.ClientConn.UpdateState(grpcbalancer.State{ConnectivityState: connectivity.TransientFailure, Picker: base.NewErrPicker(p.targetErr)})
		p.mu.Unlock()
		return
	}
	eng := p.eng
	p.mu.Unlock()
	if eng != nil {
		eng.ReportError(err)
	}
	p.childMu.Lock()
	defer p.childMu.Unlock()
	p.child.ResolverError(err)
}

// UpdateSubConnState is deprecated in grpc and unused: children own the SubConns.
func (p *policy) UpdateSubConnState(grpcbalancer.SubConn, grpcbalancer.SubConnState) {}

// ExitIdle asks the children to connect.
func (p *policy) ExitIdle() {
	p.childMu.Lock()
	defer p.childMu.Unlock()
	p.child.ExitIdle()
}

// Close closes the children and the engine.
func (p *policy) Close() {
	p.stopSubset()
	p.childMu.Lock()
	p.child.Close()
	p.childMu.Unlock()
	p.mu.Lock()
	p.closed = true
	eng := p.eng
	p.mu.Unlock()
	if eng != nil {
		p.retryMetrics.stop()
		eng.Close()
	}
}

// picker is the policy's grpc picker. It is immutable; endpoint choice comes
// from the engine's current snapshot and the connection from the chosen
// endpoint's current child picker.
type picker struct {
	eng      *balancer.Engine
	gate     *gate
	classify Classifier
	mdKey    string // Affinity.Metadata
	clientIP bool   // Affinity.ClientIP
	connErr  error
	retry    *channelRetry // the channel's retry section, or nil
	policy   *policy
}

// Pick chooses an endpoint with the engine and a connection with its child.
func (pk *picker) Pick(info grpcbalancer.PickInfo) (grpcbalancer.PickResult, error) {
	pi := balancer.PickInfo{Ctx: info.Ctx}
	pi.Hash, pi.HasHash = pk.affinityHash(info.Ctx)
	// A call through the retry interceptors carries a record: its picks
	// avoid the endpoints it tried (see retry.go). Look for one only when
	// the channel retries or an interceptor exists.
	var as *attemptState
	if pk.retry != nil || interceptors.Load() {
		as = attemptOf(info.Ctx)
	}
	ep, err := pk.pickEngine(pi, as)
	if err != nil && errors.Is(err, balancer.ErrNoEndpoints) && pk.gate != nil {
		if pk.policy != nil && pk.policy.testHookNoEndpoint != nil {
			pk.policy.testHookNoEndpoint()
		}
		// Read the gate once, after the engine. While an endpoint is on its
		// way, the RPC waits. At 0, a child may have become READY since the
		// engine was read (the policy readmits it, then lowers the gate):
		// read the engine again, which has every change made before the
		// gate's value, and fail only if it still has nothing.
		if pk.gate.waiting.Load() > 0 {
			return grpcbalancer.PickResult{}, grpcbalancer.ErrNoSubConnAvailable
		}
		ep, err = pk.pickEngine(pi, as)
	}
	if err != nil {
		return grpcbalancer.PickResult{}, pk.pickError(err)
	}
	st, _ := ep.Attached().(*endpointState)
	var res grpcbalancer.PickResult
	if st != nil {
		if cp := st.picker.Load(); cp != nil && cp.Picker != nil {
			res, err = cp.Pick(info)
		} else {
			err = grpcbalancer.ErrNoSubConnAvailable
		}
	} else {
		err = grpcbalancer.ErrNoSubConnAvailable
	}
	if err != nil {
		// The engine's view is a step behind the child's (it is leaving
		// READY); a new picker follows, and grpc re-picks then.
		pk.eng.Done(ep, outcome.Outcome{Class: outcome.NotSent})
		return grpcbalancer.PickResult{}, grpcbalancer.ErrNoSubConnAvailable
	}
	if as != nil {
		as.picked(ep, pk.retry)
	} else if pk.retry != nil {
		pk.policy.warnUnretried()
	}
	c := callPool.Get().(*call)
	c.eng, c.ep, c.ctx, c.method, c.classify, c.as = pk.eng, ep, info.Ctx, info.FullMethodName, pk.classify, as
	c.childDone = res.Done
	c.start = monotime.Now()
	res.Done = c.done
	return res, nil
}

// pickEngine picks with the engine, avoiding the endpoints the call tried
// when it carries a record.
func (pk *picker) pickEngine(pi balancer.PickInfo, as *attemptState) (*balancer.Endpoint, error) {
	if as != nil {
		return pk.eng.PickAvoiding(pi, as.avoid())
	}
	return pk.eng.Pick(pi)
}

// pickError turns an engine pick error into what grpc expects of a picker
// (Pick has dealt with the gate).
func (pk *picker) pickError(err error) error {
	switch {
	case errors.Is(err, balancer.ErrOverloaded):
		// Back pressure, never a queue: a status error ends wait-for-ready
		// RPCs too (freed capacity publishes no new picker to wake them).
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, balancer.ErrNoEndpoints):
		// Endpoints connecting (the gate, read in Pick) make RPCs wait, as
		// with grpc's own policies; a new picker follows every state change.
		if pk.connErr != nil {
			// A plain error: grpc fails the RPC with UNAVAILABLE and this
			// text, or keeps a wait-for-ready RPC waiting.
			return fmt.Errorf("%w; last connection error: %v", err, pk.connErr)
		}
		return err
	case errors.Is(err, balancer.ErrClosed):
		// The policy replaced its engine (new config) or is closing; grpc
		// gets a new picker or stops picking.
		return grpcbalancer.ErrNoSubConnAvailable
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	return err
}

// affinityHash returns the hash of the RPC's affinity key, from the first
// source that has one: the context (balancer.WithAffinityKey), the configured
// metadata key, the incoming call's peer IP.
func (pk *picker) affinityHash(ctx context.Context) (uint64, bool) {
	if ctx == nil {
		return 0, false
	}
	if h, ok := balancer.AffinityHash(ctx); ok {
		return h, true
	}
	if pk.mdKey != "" {
		if v := metadata.ValueFromOutgoingContext(ctx, pk.mdKey); len(v) > 0 && v[0] != "" {
			return balancer.HashKey(v[0]), true
		}
	}
	if pk.clientIP {
		if ip := peerIP(ctx); ip != "" {
			return balancer.HashKey(ip), true
		}
	}
	return 0, false
}

// peerIP returns the IP of the peer of the incoming call ctx belongs to, as
// the HTTP side spells a client IP (no port, no brackets), or "".
func peerIP(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return ""
	}
	host, _, err := net.SplitHostPort(p.Addr.String())
	if err != nil {
		return ""
	}
	return host
}

// call is one RPC's outcome record. Records are pooled, and each has its Done
// callback bound once, so reporting allocates nothing per RPC.
type call struct {
	eng       *balancer.Engine
	ep        *balancer.Endpoint
	ctx       context.Context
	method    string
	classify  Classifier
	childDone func(grpcbalancer.DoneInfo)
	as        *attemptState // the attempt's retry record, or nil
	start     time.Duration // monotime reading at the pick
	done      func(grpcbalancer.DoneInfo)
}

var callPool sync.Pool

func init() {
	callPool.New = func() any {
		c := new(call)
		c.done = c.finish
		return c
	}
}

// finish reports the RPC's outcome to the engine and returns the record to
// the pool. grpc calls it once per successful pick.
func (c *call) finish(di grpcbalancer.DoneInfo) {
	end := monotime.Now()
	o := outcome.Outcome{Latency: end - c.start, At: monotime.Time(end), Err: di.Err}
	switch {
	case di.Err == nil && !di.BytesSent:
		o.Class = outcome.NotSent
	default:
		o.Class = c.classify(c.ctx, c.method, di)
		if di.Err != nil {
			o.Code = int(status.Code(di.Err))
		}
	}
	var push time.Duration
	var hasPush, noRetry bool
	if di.Err != nil {
		if push, hasPush, noRetry = readPushback(di); hasPush && push > 0 {
			// The server asked for a pause (gRFC A6): the endpoint gets no
			// picks meanwhile, whether or not the call is retried.
			c.eng.Pause(c.ep.Address(), push, pushbackKey)
		}
	}
	if c.as != nil {
		if c.as.cutByPerTry() {
			o.Class = outcome.Timeout // the endpoint was too slow, not the caller impatient
		}
		c.as.finished(o, status.Code(di.Err), di.BytesSent, push, hasPush, noRetry)
	}
	c.eng.Done(c.ep, o)
	if c.childDone != nil {
		c.childDone(di)
	}
	c.eng, c.ep, c.ctx, c.method, c.classify, c.childDone, c.as = nil, nil, nil, "", nil, nil, nil
	callPool.Put(c)
}
