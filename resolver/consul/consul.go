// Package consul is a lodestar discovery feed that watches a service's healthy
// instances in Consul with blocking queries on /v1/health/service/<name>.
//
// It keeps what other Consul resolvers drop: each instance's weight (from the
// service's Weights, passing or warning), its locality and failover priority (from
// metadata keys or tags you choose) and the rest of its metadata and tags. It never
// goes blank when the agent blips: on an error it keeps the last good set, reports
// the error to the sink and retries with backoff and jitter. Cancelling the context
// given to Watch aborts the blocking query at once.
//
// Importing the package registers the "consul" target scheme with
// resolver.Register:
//
//	consul://[agent-host:port]/service?tag=a&tag=b&dc=dc1&near=_agent&filter=...&token=...&stale=true&passingOnly=false&ns=team&partition=part
//
// An empty authority (consul:///web) means the default agent: CONSUL_HTTP_ADDR, or
// else localhost:8500, as in the Consul api package. See ParseTarget for every
// parameter.
//
// # Endpoint mapping
//
// Each health entry becomes one resolver.Endpoint:
//
//   - Address: Service.Address, or Node.Address when the service has none, with
//     the service's port.
//   - Weight: Service.Weights.Passing for a passing instance, Weights.Warning for
//     a warning one (only with IncludeWarning; a warning weight of 0 leaves the
//     instance out). Consul's default weights are 1 and 1.
//   - Locality and Priority: from the metadata keys named by Options.ZoneKey,
//     RegionKey, SubZoneKey and PriorityKey (defaults "zone", "region",
//     "subzone", "priority"), looked up in the service's meta, then a service tag
//     "<key>=<value>", then the node's meta; zone and region then fall back on
//     the service's and then the node's Consul locality (Consul 1.17+).
//   - Metadata: the service's meta under its own keys; each tag t as "tag:t"
//     with value "true"; the node's meta as "node:<key>"; and "consul.node",
//     "consul.service_id", "consul.datacenter", "consul.health" (passing or
//     warning), plus "consul.namespace" and "consul.partition" when set. Consul
//     meta keys cannot contain ':' or '.', so these never collide with the
//     service's own keys.
//
// Critical instances and instances in maintenance never appear. An instance
// whose address (the service's, or its node's) is not a host name or IP
// address, such as "10.0.0.1:8080" or "web internal", or whose port is not in
// 1-65535, is left out while the rest of the set is served; one error reported
// with the set counts them and names their service IDs.
//
// # ACLs
//
// An answer from which Consul's ACLs removed instances is not published: the
// feed reports ErrFilteredByACLs and keeps the last set, as for any failed
// query. Consul flags such answers (X-Consul-Results-Filtered-By-ACLs) only
// for a real token; for the anonymous token (no token sent), the feed treats
// an empty answer under a default-deny policy the same way.
//
// The token (and a basic auth password) never appears in an error: target
// errors never quote it, and errors the agent or the HTTP client make are
// scrubbed of it. An agent address with user information is rejected.
package consul

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/time/rate"

	"github.com/lodestar-go/lodestar/internal/backoff"
	"github.com/lodestar-go/lodestar/resolver"
)

// Defaults for the Options fields left zero.
const (
	// DefaultWaitTime is how long a blocking query waits for a change; it is
	// Consul's own default.
	DefaultWaitTime = 5 * time.Minute
	// DefaultQueryRate is how many queries per second the watch loop may make
	// at most (with a burst of 2).
	DefaultQueryRate = 10
	// DefaultResponseTimeout is how long a query may run past WaitTime (plus
	// the 1/16 jitter Consul adds) before it is abandoned as hung.
	DefaultResponseTimeout = 10 * time.Second
	// DefaultZoneKey, DefaultRegionKey, DefaultSubZoneKey and DefaultPriorityKey
	// are the metadata keys (and tag prefixes) read for locality and priority.
	DefaultZoneKey     = "zone"
	DefaultRegionKey   = "region"
	DefaultSubZoneKey  = "subzone"
	DefaultPriorityKey = "priority"
)

// queryBurst is the burst of the watch loop's token bucket.
const queryBurst = 2

// ErrFilteredByACLs is reported (wrapped, with the service and what to do)
// when Consul's ACLs removed instances from an answer, or may have: the token
// lacks service:read on the service or node:read on some of its nodes. The
// answer is not published; the last set stays in force and the query is
// retried with backoff.
var ErrFilteredByACLs = errors.New("permissions (ACLs) filtered the answer")

// Options configure a Consul feed. Only Service is required; every other zero
// field takes the default its comment gives.
type Options struct {
	// Service is the Consul service name to watch. Required.
	Service string

	// Address is the agent's HTTP API: "host:port", or a URL such as
	// "https://host:8501" or "unix:///path/to/socket". "" keeps the address of
	// Config, which by default is CONSUL_HTTP_ADDR or else localhost:8500.
	Address string
	// Config is the base api client configuration, for TLS, HTTP basic auth, a
	// token file or a custom HTTP client. nil means api.DefaultConfig(), which
	// reads the CONSUL_HTTP_* environment variables. The feed works on a copy;
	// Address and Token override it when set.
	Config *api.Config
	// Token is the ACL token sent with every query. "" keeps Config's token
	// (CONSUL_HTTP_TOKEN by default).
	Token string

	// Tags keeps only instances that carry every one of these tags. Default none.
	Tags []string
	// Datacenter to query. "" means the agent's own datacenter.
	Datacenter string
	// Near sorts the answer by round-trip time from this node ("_agent" means
	// the queried agent). The feed publishes sets sorted by address, so this only
	// matters together with Filter or for logs. Default "" (no sorting).
	Near string
	// Filter is a Consul filter expression applied by the server, for example
	// `Service.Meta.version == "2"`. Default "" (no filter).
	Filter string
	// Namespace (Consul Enterprise). "" means the token's or agent's default.
	Namespace string
	// Partition (Consul Enterprise admin partition). "" means the default.
	Partition string
	// AllowStale lets any Consul server answer, not just the leader: more scale
	// and availability for answers up to a few hundred milliseconds old.
	// Default false (Consul's default consistency mode).
	AllowStale bool
	// IncludeWarning also serves instances whose aggregated health is warning,
	// with their Weights.Warning. Default false: passing instances only.
	// Critical instances and instances in maintenance are never served.
	IncludeWarning bool

	// ZoneKey, RegionKey, SubZoneKey and PriorityKey name the metadata keys
	// (and "<key>=<value>" tag prefixes) that give an endpoint's locality and
	// failover priority; see the package comment for the lookup order. ""
	// means "zone", "region", "subzone" and "priority"; "-" turns a lookup off.
	// A priority that is not a non-negative integer is ignored (priority 0).
	ZoneKey, RegionKey, SubZoneKey, PriorityKey string

	// WaitTime is how long each blocking query waits for a change (Consul caps
	// it at 10 minutes). Default DefaultWaitTime (5 minutes).
	WaitTime time.Duration
	// ResponseTimeout is how long a query may run past WaitTime·17/16 (Consul
	// adds up to WaitTime/16 of jitter) before the feed gives up on it as hung
	// and retries. Default DefaultResponseTimeout (10s).
	ResponseTimeout time.Duration
	// QueryRate caps the watch loop at this many queries per second, with a
	// burst of 2, so a flapping service cannot make the loop spin. Default
	// DefaultQueryRate (10).
	QueryRate float64
	// Backoff spaces out retries after a failed query (with jitter). Zero
	// fields take backoff.Default's values (100ms doubling up to 10s).
	Backoff backoff.Config
}

// Validate reports the first invalid field, by name.
func (o *Options) Validate() error {
	switch {
	case o.Service == "":
		return errors.New("consul feed: Options.Service: empty service name")
	case strings.ContainsAny(o.Service, "/?#"):
		return fmt.Errorf("consul feed: Options.Service: %q contains '/', '?' or '#'", o.Service)
	case o.WaitTime < 0:
		return fmt.Errorf("consul feed: Options.WaitTime: %v is negative", o.WaitTime)
	case o.WaitTime > 10*time.Minute:
		return fmt.Errorf("consul feed: Options.WaitTime: %v is above Consul's maximum of 10m", o.WaitTime)
	case o.ResponseTimeout < 0:
		return fmt.Errorf("consul feed: Options.ResponseTimeout: %v is negative", o.ResponseTimeout)
	case o.QueryRate < 0:
		return fmt.Errorf("consul feed: Options.QueryRate: %v is negative", o.QueryRate)
	}
	for i, t := range o.Tags {
		if t == "" {
			return fmt.Errorf("consul feed: Options.Tags[%d]: empty tag", i)
		}
	}
	return nil
}

func (o *Options) setDefaults() {
	if o.WaitTime == 0 {
		o.WaitTime = DefaultWaitTime
	}
	if o.ResponseTimeout == 0 {
		o.ResponseTimeout = DefaultResponseTimeout
	}
	if o.QueryRate == 0 {
		o.QueryRate = DefaultQueryRate
	}
	def := func(s *string, d string) {
		switch *s {
		case "":
			*s = d
		case "-":
			*s = ""
		}
	}
	def(&o.ZoneKey, DefaultZoneKey)
	def(&o.RegionKey, DefaultRegionKey)
	def(&o.SubZoneKey, DefaultSubZoneKey)
	def(&o.PriorityKey, DefaultPriorityKey)
}

// Feed is a resolver.Feed over one Consul service. Make it with New; several
// Watch calls may run at once, each with its own blocking-query loop.
type Feed struct {
	opts      Options
	client    *api.Client
	http      *http.Client
	addr      string   // agent address, redacted, for errors
	anonymous bool     // no token is sent
	secrets   []string // the token and passwords, never to appear in an error
}

var _ resolver.Feed = (*Feed)(nil)

// New returns a feed for opts.Service. It checks opts and builds the api client
// but does not contact the agent; Watch does.
func New(opts Options) (*Feed, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts.setDefaults()
	opts.Tags = slices.Clone(opts.Tags)
	var cfg api.Config
	if opts.Config != nil {
		cfg = *opts.Config
	} else {
		cfg = *api.DefaultConfig()
	}
	if opts.Address != "" {
		cfg.Address = opts.Address
	}
	if opts.Token != "" {
		cfg.Token = opts.Token
	}
	if hasUserinfo(cfg.Address) {
		// The api client would take it for part of the host name, and quote it.
		return nil, fmt.Errorf("consul feed: agent address %q: user information is not supported (set Config.HttpAuth for basic auth, Options.Token for the ACL token)", resolver.Redact(cfg.Address))
	}
	secrets := configSecrets(&cfg)
	client, err := api.NewClient(&cfg) // reads a TokenFile into cfg.Token
	if err != nil {
		return nil, scrub(fmt.Errorf("consul feed: agent client for %q: %w", resolver.Redact(cfg.Address), err), secrets)
	}
	secrets = append(secrets, configSecrets(&cfg)...)
	return &Feed{opts: opts, client: client, http: cfg.HttpClient, addr: resolver.Redact(cfg.Address),
		anonymous: cfg.Token == "", secrets: secrets}, nil
}

// hasUserinfo reports whether an agent address ("host:port", or a URL such as
// "https://host:8501" or "unix:///path") has user information: an '@' in its
// authority.
func hasUserinfo(addr string) bool {
	_, rest, ok := strings.Cut(addr, "://")
	if !ok {
		rest = addr
	}
	host, _, _ := strings.Cut(rest, "/")
	return strings.Contains(host, "@")
}

// configSecrets returns what in cfg must never appear in an error: the token
// and the HTTP basic auth password.
func configSecrets(cfg *api.Config) []string {
	out := []string{cfg.Token}
	if cfg.HttpAuth != nil {
		out = append(out, cfg.HttpAuth.Password)
	}
	return out
}

// scrub returns err, or when its text holds one of secrets, an error of the
// same text with each secret replaced. It then drops err's chain, which would
// still hold them.
func scrub(err error, secrets []string) error {
	msg := err.Error()
	clean := msg
	for _, s := range secrets {
		if s != "" {
			clean = strings.ReplaceAll(clean, s, "REDACTED")
		}
	}
	if clean == msg {
		return err
	}
	return errors.New(clean)
}

// report hands err, about the feed, to s without any secret.
func (f *Feed) report(s resolver.Sink, err error) {
	s.ReportError(scrub(fmt.Errorf("%s: %w", f, err), f.secrets))
}

// Options returns the feed's options with defaults filled in.
func (f *Feed) Options() Options {
	o := f.opts
	o.Tags = slices.Clone(o.Tags)
	return o
}

// String describes the feed for logs, without the token.
func (f *Feed) String() string {
	return fmt.Sprintf("consul feed %q at %s", f.opts.Service, f.addr)
}

// Watch implements resolver.Feed: it follows the service with blocking queries
// until ctx is done, publishing each changed set of healthy instances to s.
// Errors are reported to s while the last good set stays in force; the query
// is retried with backoff. Watch returns ctx's error as soon as ctx is done.
func (f *Feed) Watch(ctx context.Context, s resolver.Sink) error {
	defer f.http.CloseIdleConnections()
	limiter := rate.NewLimiter(rate.Limit(f.opts.QueryRate), queryBurst)
	var (
		index       uint64 // 0: the next query does not block
		last        []resolver.Endpoint
		published   bool
		failures    int
		lastDropped string // the last report of left-out instances
	)
	for {
		if err := limiter.Wait(ctx); err != nil {
			// ctx is done, or its deadline comes before the next token would.
			<-ctx.Done()
			return ctx.Err()
		}
		entries, meta, err := f.query(ctx, index)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			f.report(s, err)
			// The agent may have been replaced (and its index restarted), so the
			// next query starts afresh instead of blocking on a stale index.
			index = 0
			if !sleep(ctx, f.opts.Backoff.Delay(failures)) {
				return ctx.Err()
			}
			failures++
			continue
		}
		failures = 0
		index = nextIndex(index, meta.LastIndex)

		eps, dropped := f.endpoints(entries)
		changed := !published || !resolver.EqualSets(last, eps)
		// Left-out instances are reported with each new set, and whenever they
		// change (an instance added with a bad address changes no set).
		if dropped != nil && (changed || dropped.Error() != lastDropped) {
			f.report(s, dropped)
		}
		lastDropped = ""
		if dropped != nil {
			lastDropped = dropped.Error()
		}
		if !changed {
			continue // a timeout or a change we do not see: publish nothing
		}
		last, published = eps, true
		s.Update(slices.Clone(eps))
	}
}

// nextIndex applies Consul's blocking-query rules to the index a response
// carried: an index that went backwards resets to 0 (the next query re-reads the
// full state without blocking), and an index is never below 1 otherwise.
func nextIndex(prev, got uint64) uint64 {
	if got < prev {
		return 0
	}
	return max(got, 1)
}

// query runs one (blocking unless index is 0) health query, bounded by
// WaitTime·17/16 + ResponseTimeout.
func (f *Feed) query(ctx context.Context, index uint64) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	limit := f.opts.ResponseTimeout
	if index > 0 {
		limit += f.opts.WaitTime + f.opts.WaitTime/16
	}
	qctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	q := &api.QueryOptions{
		Datacenter: f.opts.Datacenter,
		Near:       f.opts.Near,
		Filter:     f.opts.Filter,
		Namespace:  f.opts.Namespace,
		Partition:  f.opts.Partition,
		AllowStale: f.opts.AllowStale,
		WaitIndex:  index,
		WaitTime:   f.opts.WaitTime,
	}
	entries, meta, err := f.client.Health().ServiceMultipleTags(f.opts.Service, f.opts.Tags, !f.opts.IncludeWarning, q.WithContext(qctx))
	if err != nil {
		if qctx.Err() != nil && ctx.Err() == nil {
			return nil, nil, fmt.Errorf("query gave no answer within %v: %w", limit, err)
		}
		return nil, nil, err
	}
	if meta == nil {
		return nil, nil, errors.New("query answer without metadata")
	}
	if err := f.checkACLs(entries, meta); err != nil {
		return nil, nil, err
	}
	return entries, meta, nil
}

// checkACLs reports an answer Consul's ACLs filtered. Consul flags one only
// for a real token (it tells the anonymous token nothing), so for the
// anonymous token an empty answer under a default-deny policy counts too.
func (f *Feed) checkACLs(entries []*api.ServiceEntry, meta *api.QueryMeta) error {
	const fix = "the token needs service:read on the service and node:read on its nodes"
	switch {
	case meta.ResultsFilteredByACLs:
		return fmt.Errorf("%w: Consul removed instances of service %q the token may not read (%d left); %s; the answer is not published",
			ErrFilteredByACLs, f.opts.Service, len(entries), fix)
	case f.anonymous && len(entries) == 0 && meta.DefaultACLPolicy == "deny":
		return fmt.Errorf("%w, most likely: no ACL token was sent, the agent's default ACL policy is deny, and the answer for service %q is empty "+
			"(Consul does not flag filtering for the anonymous token); %s (Options.Token, ?token= or CONSUL_HTTP_TOKEN); the answer is not published",
			ErrFilteredByACLs, f.opts.Service, fix)
	}
	return nil
}

// sleep waits d or until ctx is done; it reports whether it waited d.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
