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
// The resolver's endpoints become the engine's endpoint set (the first address
// of each endpoint is its identity; the weight comes from grpc's
// experimental/balancer/weight attribute; locality, priority and metadata from
// grpcresolver.Info); an endpoint whose child is not READY carries the engine's
// NotConnected condition.
//
// Each pick asks the engine for an endpoint and then asks that endpoint's
// pick_first child for its connection. The outcome comes back through
// PickResult.Done, without a closure allocated per RPC: latency from pick to
// end of call, the status code, and the class a Classifier gives it. An RPC that
// grpc reports done with no error and no bytes sent was never attempted (grpc
// re-picks when a transport was not ready) and counts as outcome.NotSent,
// neither success nor failure.
//
// # Failing fast
//
// With no endpoint to pick (none discovered, or every one down, unhealthy or
// ejected), an RPC fails at once with UNAVAILABLE and the engine's
// *balancer.NoEndpointsError text, which says why, plus the last connection
// error if there is one; a wait-for-ready RPC waits for an endpoint instead
// (grpc's picker contract). While endpoints are still connecting and none is
// READY, RPCs wait for the first connection, as with grpc's own policies.
// Config.WaitForEndpoints, as on the HTTP side, makes picks wait up to that long
// (never past the RPC's deadline) for an endpoint instead of failing.
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
	"sync"
	"sync/atomic"
	"time"

	grpcbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/endpointsharding"
	"google.golang.org/grpc/balancer/pickfirst"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/serviceconfig"
	"google.golang.org/grpc/status"

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
	// per channel, and a new one when the channel's config changes. target is
	// the channel's target endpoint (grpc's Target.Endpoint()). Use it to
	// inspect endpoints' states and outcomes (metrics, debug pages, tests).
	// It runs on grpc's balancer goroutine and must not block.
	OnEngine func(target string, e *balancer.Engine)
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
		states:     map[string]*endpointState{},
	}
	p.child = endpointsharding.NewBalancer(p, bOpts, grpcbalancer.Get(pickfirst.Name).Build, endpointsharding.Options{})
	return p
}

// endpointState is the policy's per-endpoint record, attached to the engine's
// Endpoint: the endpoint's pick_first child's current picker and state.
type endpointState struct {
	picker atomic.Pointer[childPicker]
	state  connectivity.State // under policy.mu
}

type childPicker struct{ grpcbalancer.Picker }

// policy is the balancer grpc builds per channel. It embeds the channel's
// ClientConn to intercept endpointsharding's UpdateState.
type policy struct {
	grpcbalancer.ClientConn
	child   grpcbalancer.Balancer
	opts    Options
	service string

	mu     sync.Mutex
	eng    *balancer.Engine
	cfgKey string
	states map[string]*endpointState // by address, for the children endpointsharding reports
	closed bool
}

// UpdateClientConnState takes a new resolver state and config: it rebuilds the
// engine if the config changed, hands the endpoints to it and to endpointsharding.
func (p *policy) UpdateClientConnState(ccs grpcbalancer.ClientConnState) error {
	cfg, _ := ccs.BalancerConfig.(*lbConfig)
	if cfg == nil {
		cfg = &lbConfig{key: "{}"}
	}
	eps := make([]resolver.Endpoint, 0, len(ccs.ResolverState.Endpoints))
	for _, g := range ccs.ResolverState.Endpoints {
		if ep, ok := grpcresolver.FromGRPC(g); ok {
			eps = append(eps, ep)
		}
	}

	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	var old *balancer.Engine
	if p.eng == nil || cfg.key != p.cfgKey {
		eng, err := balancer.NewEngine(cfg.cfg, balancer.Options{
			Service: p.service, Logger: p.opts.Logger, Rand: p.opts.Rand,
			// Not eligible until its child reports READY (syncEngineLocked).
			InitialConditions: balancer.NotConnected,
		})
		if err != nil { // ParseConfig validated it; kept for safety
			p.mu.Unlock()
			return err
		}
		old, p.eng, p.cfgKey = p.eng, eng, cfg.key
		if p.opts.OnEngine != nil {
			p.opts.OnEngine(p.service, eng)
		}
	}
	eng := p.eng
	keep := len(eps) == 0 && !cfg.cfg.AllowEmpty && len(eng.Endpoints()) > 0
	eng.Update(eps) // with keep, it reports the empty answer and keeps the set
	p.syncEngineLocked()
	p.mu.Unlock()
	if old != nil {
		old.Close()
	}
	if keep {
		// Keep the children too; grpc asks the resolver to try again.
		return grpcbalancer.ErrBadResolverState
	}
	// endpointsharding reports the children's states synchronously at the end,
	// which publishes a picker through UpdateState.
	return p.child.UpdateClientConnState(grpcbalancer.ClientConnState{
		ResolverState: pickfirst.EnableHealthListener(ccs.ResolverState),
	})
}

// syncEngineLocked attaches each engine endpoint's state and sets its
// NotConnected condition from its child's connectivity (NotConnected until the
// child reports READY).
func (p *policy) syncEngineLocked() {
	for _, ep := range p.eng.Endpoints() {
		st := p.states[ep.Address()]
		if st == nil {
			st = &endpointState{state: connectivity.Idle}
			p.states[ep.Address()] = st
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
	if p.closed || p.eng == nil {
		return
	}
	seen := make(map[string]struct{}, len(children))
	ready := 0
	var connErr error
	for _, c := range children {
		if len(c.Endpoint.Addresses) == 0 {
			continue
		}
		addr := c.Endpoint.Addresses[0].Addr
		if _, dup := seen[addr]; dup {
			continue
		}
		seen[addr] = struct{}{}
		st := p.states[addr]
		if st == nil {
			st = &endpointState{}
			p.states[addr] = st
		}
		st.picker.Store(&childPicker{c.State.Picker})
		st.state = c.State.ConnectivityState
		if st.state == connectivity.Ready {
			ready++
		} else if st.state == connectivity.TransientFailure && c.State.Picker != nil {
			// pick_first's picker in TRANSIENT_FAILURE returns why.
			if _, err := c.State.Picker.Pick(grpcbalancer.PickInfo{Ctx: context.Background()}); err != nil {
				connErr = err
			}
		}
	}
	for addr := range p.states {
		if _, ok := seen[addr]; !ok {
			delete(p.states, addr)
		}
	}
	p.syncEngineLocked()

	agg := state.ConnectivityState
	if ready > 0 {
		agg = connectivity.Ready
	}
	aff := p.eng.Config().Affinity
	pk := &picker{
		eng:      p.eng,
		classify: p.opts.Classifier,
		mdKey:    aff.Metadata,
		clientIP: aff.ClientIP,
		// With nothing READY yet but something on its way, RPCs wait for it,
		// as with grpc's own policies; otherwise no endpoint means fail fast.
		queue:   ready == 0 && (agg == connectivity.Connecting || agg == connectivity.Idle),
		connErr: connErr,
	}
	p.ClientConn.UpdateState(grpcbalancer.State{ConnectivityState: agg, Picker: pk})
}

// ResolverError passes a resolver error to the engine (it shows in
// no-endpoints errors) and to the children.
func (p *policy) ResolverError(err error) {
	p.mu.Lock()
	eng := p.eng
	p.mu.Unlock()
	if eng != nil {
		eng.ReportError(err)
	}
	p.child.ResolverError(err)
}

// UpdateSubConnState is deprecated in grpc and unused: children own the SubConns.
func (p *policy) UpdateSubConnState(grpcbalancer.SubConn, grpcbalancer.SubConnState) {}

// ExitIdle asks the children to connect.
func (p *policy) ExitIdle() { p.child.ExitIdle() }

// Close closes the children and the engine.
func (p *policy) Close() {
	p.child.Close()
	p.mu.Lock()
	p.closed = true
	eng := p.eng
	p.mu.Unlock()
	if eng != nil {
		eng.Close()
	}
}

// picker is the policy's grpc picker. It is immutable; endpoint choice comes
// from the engine's current snapshot and the connection from the chosen
// endpoint's current child picker.
type picker struct {
	eng      *balancer.Engine
	classify Classifier
	mdKey    string // Affinity.Metadata
	clientIP bool   // Affinity.ClientIP
	queue    bool
	connErr  error
}

// Pick chooses an endpoint with the engine and a connection with its child.
func (pk *picker) Pick(info grpcbalancer.PickInfo) (grpcbalancer.PickResult, error) {
	pi := balancer.PickInfo{Ctx: info.Ctx}
	pi.Hash, pi.HasHash = pk.affinityHash(info.Ctx)
	ep, err := pk.eng.Pick(pi)
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
	c := callPool.Get().(*call)
	c.eng, c.ep, c.ctx, c.method, c.classify = pk.eng, ep, info.Ctx, info.FullMethodName, pk.classify
	c.childDone = res.Done
	c.start = monotime.Now()
	res.Done = c.done
	return res, nil
}

// pickError turns an engine pick error into what grpc expects of a picker.
func (pk *picker) pickError(err error) error {
	switch {
	case errors.Is(err, balancer.ErrNoEndpoints):
		if pk.queue {
			return grpcbalancer.ErrNoSubConnAvailable
		}
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
	c.eng.Done(c.ep, o)
	if c.childDone != nil {
		c.childDone(di)
	}
	c.eng, c.ep, c.ctx, c.method, c.classify, c.childDone = nil, nil, nil, "", nil, nil
	callPool.Put(c)
}
