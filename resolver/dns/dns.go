// Package dns is a lodestar discovery feed over DNS: A/AAAA records for a name
// and port, or SRV records, whose priority and weight it carries onto the
// endpoints (what grpc's built-in dns resolver lacks).
//
// Importing the package registers two target schemes with resolver.Register:
//
//	dns:///api.internal:8080            A/AAAA records of api.internal, port 8080
//	srv:///_http._tcp.api.internal      SRV records, each target's A/AAAA records
//	dns://10.0.0.2:53/api.internal:8080 the same, asking the DNS server 10.0.0.2:53
//
// See ParseTarget for the query parameters.
//
// The feed looks the name up again every MaxInterval, and sooner when asked with
// ResolveNow, but never twice within MinInterval. A lookup that fails, or that
// finds nothing (NXDOMAIN, no records), is reported to the sink and retried with
// backoff and jitter (clamped to [MinInterval, MaxInterval]) while the last good
// set stays in force: the DNS feed never publishes an empty set. An answer equal
// to the last one publishes nothing.
//
// # SRV mapping
//
// Each SRV record's target is resolved to its addresses (A and AAAA, or as
// Options.Network says); each address with the record's port is one endpoint:
//
//   - Weight: 16 × the SRV weight, so ratios between records are kept exactly;
//     a record of weight 0 gets weight 1, a sixteenth of a weight-1 record (RFC
//     2782: weight 0 has a very small chance of selection when others have more).
//     When every record of a priority has weight 0, they share equally.
//   - Priority: the rank of the SRV priority among the distinct priorities of
//     the answer's usable records (0 for the lowest SRV priority, 1 for the
//     next, ...), as lodestar's failover tiers start at 0. Records with port
//     0 or target "." are unusable and ignored, so they take no tier.
//   - Metadata: "srv.target", "srv.port", "srv.priority" and "srv.weight", the
//     record's own values.
//
// An address found under several records keeps the most preferred one (lowest
// priority, then highest weight).
//
// Each query has its own deadline, Options.Timeout: the SRV lookup, then each
// target's lookup, in parallel. A target that fails or does not answer in
// time keeps its addresses from the last good answer (a target never resolved
// is left out) while the other targets are published, and the error reported
// names it.
//
// A/AAAA endpoints carry weight 0 (the default weight) and the metadata
// "dns.name".
package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lodestar-go/lodestar/internal/backoff"
	"github.com/lodestar-go/lodestar/resolver"
)

// Defaults for the Options fields left zero.
const (
	// DefaultMinInterval is the shortest time between two lookups.
	DefaultMinInterval = time.Second
	// DefaultMaxInterval is the longest time between two lookups.
	DefaultMaxInterval = 30 * time.Second
	// DefaultTimeout bounds each lookup of a refresh: the A/AAAA lookup, or
	// the SRV lookup and then each SRV target's lookup.
	DefaultTimeout = 10 * time.Second
	// srvWeightScale multiplies SRV weights: 65535·16 stays below
	// resolver.MaxWeight, and weight 0 maps to 1.
	srvWeightScale = 16
	// maxTargetLookups is how many SRV targets are resolved at once.
	maxTargetLookups = 16
)

// Metadata keys set on endpoints.
const (
	MetaName        = "dns.name"     // the name looked up (A/AAAA)
	MetaSRVTarget   = "srv.target"   // the SRV record's target name
	MetaSRVPort     = "srv.port"     // the SRV record's port
	MetaSRVPriority = "srv.priority" // the SRV record's priority, as in DNS
	MetaSRVWeight   = "srv.weight"   // the SRV record's weight, as in DNS
)

// Options configure a DNS feed. The zero value is ready to use.
type Options struct {
	// Resolver makes the lookups. nil means net.DefaultResolver, or, when
	// Server is set, a pure-Go resolver that sends every query to Server. Tests
	// and special setups inject their own, typically with PreferGo and a Dial.
	Resolver *net.Resolver
	// Server is a DNS server, "host:port" (port 53 when left out), to ask
	// instead of the system's. It is ignored when Resolver is set.
	Server string
	// Network says which addresses a name resolves to: "ip" (A and AAAA, the
	// default), "ip4" (A only) or "ip6" (AAAA only). It applies to SRV
	// targets too.
	Network string
	// MinInterval is the shortest time between the starts of two lookups,
	// whatever asks for them (ResolveNow, a retry). Default DefaultMinInterval (1s).
	MinInterval time.Duration
	// MaxInterval is the longest time between two lookups: the refresh period
	// while lookups succeed. Default DefaultMaxInterval (30s).
	MaxInterval time.Duration
	// Timeout bounds each lookup of a refresh on its own: the A/AAAA lookup,
	// or the SRV lookup and then each SRV target's lookup, so that a target
	// whose server never answers costs only its own addresses. Default
	// DefaultTimeout (10s).
	Timeout time.Duration
	// Backoff spaces out retries after a failed lookup, with jitter; each delay
	// is then clamped to [MinInterval, MaxInterval]. Zero fields take
	// backoff.Default's values.
	Backoff backoff.Config
}

// Validate reports the first invalid field, by name.
func (o *Options) Validate() error {
	switch {
	case o.Network != "" && o.Network != "ip" && o.Network != "ip4" && o.Network != "ip6":
		return fmt.Errorf("dns feed: Options.Network: %q is not ip, ip4 or ip6", o.Network)
	case o.MinInterval < 0:
		return fmt.Errorf("dns feed: Options.MinInterval: %v is negative", o.MinInterval)
	case o.MaxInterval < 0:
		return fmt.Errorf("dns feed: Options.MaxInterval: %v is negative", o.MaxInterval)
	case o.Timeout < 0:
		return fmt.Errorf("dns feed: Options.Timeout: %v is negative", o.Timeout)
	}
	lo, hi := o.MinInterval, o.MaxInterval
	if lo == 0 {
		lo = DefaultMinInterval
	}
	if hi == 0 {
		hi = DefaultMaxInterval
	}
	if lo > hi {
		return fmt.Errorf("dns feed: Options.MinInterval %v is above Options.MaxInterval %v", lo, hi)
	}
	if o.Server != "" && o.Resolver == nil {
		if _, err := serverAddress(o.Server); err != nil {
			return fmt.Errorf("dns feed: Options.Server: %w", err)
		}
	}
	return nil
}

func (o *Options) setDefaults() {
	if o.Network == "" {
		o.Network = "ip"
	}
	if o.MinInterval == 0 {
		o.MinInterval = DefaultMinInterval
	}
	if o.MaxInterval == 0 {
		o.MaxInterval = DefaultMaxInterval
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Resolver == nil {
		if o.Server != "" {
			o.Resolver = ResolverFor(o.Server)
		} else {
			o.Resolver = net.DefaultResolver
		}
	}
}

// serverAddress checks a DNS server address and adds port 53 when it has none.
func serverAddress(s string) (string, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		host, port = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"), "53"
		if strings.ContainsAny(host, "[]") || (strings.Contains(host, ":") && net.ParseIP(host) == nil) {
			return "", fmt.Errorf("DNS server %q: want host[:port]", s)
		}
	}
	if host == "" {
		return "", fmt.Errorf("DNS server %q: empty host", s)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return "", fmt.Errorf("DNS server %q: port %q is not in 1-65535", s, port)
	}
	return net.JoinHostPort(host, port), nil
}

// ResolverFor returns a pure-Go resolver that sends every query to the DNS
// server at addr ("host:port", port 53 when left out), over UDP or TCP as the
// resolver chooses. The system's search domains and /etc/hosts still apply;
// use fully qualified names ("api.internal.") to skip the search list.
//
// Unlike the standard resolver, whose queries wait for their own timeout even
// when the lookup's context is cancelled, its connections close as soon as
// the context is done.
func ResolverFor(addr string) *net.Resolver {
	if a, err := serverAddress(addr); err == nil {
		addr = a
	}
	var d net.Dialer
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return closeOnDone(ctx, c), nil
		},
	}
}

// closeOnDone closes c when ctx is done, so that a query blocked in a read
// returns. The resolver tells datagram from stream connections by the
// net.PacketConn interface, so a *net.UDPConn stays one.
func closeOnDone(ctx context.Context, c net.Conn) net.Conn {
	stop := context.AfterFunc(ctx, func() { c.Close() })
	if u, ok := c.(*net.UDPConn); ok {
		return &udpConn{u, stop}
	}
	return &streamConn{c, stop}
}

type udpConn struct {
	*net.UDPConn
	stop func() bool
}

func (c *udpConn) Close() error { c.stop(); return c.UDPConn.Close() }

type streamConn struct {
	net.Conn
	stop func() bool
}

func (c *streamConn) Close() error { c.stop(); return c.Conn.Close() }

// Feed is a resolver.Feed over DNS. Make it with NewHost or NewSRV; several
// Watch calls may run at once, each with its own refresh loop.
type Feed struct {
	opts Options
	srv  bool
	name string // host name (A/AAAA) or SRV name
	port string // A/AAAA only

	mu  sync.Mutex
	now chan struct{} // closed and replaced by ResolveNow
}

var _ resolver.Feed = (*Feed)(nil)

// NewHost returns a feed of the A/AAAA records of host, each address with port.
// hostport is "name:port" ("[v6]:port" for an IPv6 literal).
func NewHost(hostport string, opts Options) (*Feed, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, fmt.Errorf("dns feed: %q: want name:port: %w", hostport, err)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return nil, fmt.Errorf("dns feed: %q: port %q is not in 1-65535", hostport, port)
	}
	if err := checkName(host); err != nil {
		if _, ipErr := netip.ParseAddr(host); ipErr != nil {
			return nil, fmt.Errorf("dns feed: %q: %w", hostport, err)
		}
	}
	return newFeed(false, host, port, opts)
}

// NewSRV returns a feed of the SRV records of name, such as
// "_http._tcp.api.internal".
func NewSRV(name string, opts Options) (*Feed, error) {
	if err := checkName(name); err != nil {
		return nil, fmt.Errorf("dns feed: SRV name: %w", err)
	}
	return newFeed(true, name, "", opts)
}

func newFeed(srv bool, name, port string, opts Options) (*Feed, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts.setDefaults()
	return &Feed{opts: opts, srv: srv, name: name, port: port, now: make(chan struct{})}, nil
}

// checkName accepts what DNS can carry: at most 253 characters in labels of
// 1-63 characters, with an optional final dot. It leaves character sets alone
// (underscores, for example, are common in SRV names).
func checkName(name string) error {
	n := strings.TrimSuffix(name, ".")
	switch {
	case n == "":
		return errors.New("empty name")
	case len(n) > 253:
		return fmt.Errorf("name %.20q... is longer than 253 characters", name)
	case strings.ContainsAny(n, " /\\:@?#[]\t\r\n\x00"):
		return fmt.Errorf("name %q holds a character names cannot", name)
	}
	for label := range strings.SplitSeq(n, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("name %q: a label is empty or longer than 63 characters", name)
		}
	}
	return nil
}

// Options returns the feed's options with defaults filled in.
func (f *Feed) Options() Options { return f.opts }

// String describes the feed for logs, with the DNS server when Options.Server
// chose it (the resolver's own errors name the system's server instead).
func (f *Feed) String() string {
	s := "dns feed " + net.JoinHostPort(f.name, f.port)
	if f.srv {
		s = "dns feed SRV " + f.name
	}
	if f.opts.Server != "" {
		s += " via " + f.opts.Server
	}
	return s
}

// ResolveNow asks every Watch of the feed for a lookup as soon as MinInterval
// allows, for example after connections to every endpoint failed.
func (f *Feed) ResolveNow() {
	f.mu.Lock()
	close(f.now)
	f.now = make(chan struct{})
	f.mu.Unlock()
}

func (f *Feed) nowCh() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// Watch implements resolver.Feed: it looks the name up at once, then on the
// schedule the package comment describes, publishing each changed set to s,
// until ctx is done; then it returns ctx's error at once.
func (f *Feed) Watch(ctx context.Context, s resolver.Sink) error {
	var (
		last      []resolver.Endpoint
		published bool
		failures  int
		srvCache  map[string][]netip.Addr // SRV target → its addresses last time
	)
	for {
		start := time.Now()
		now := f.nowCh() // a ResolveNow from here on asks for the next lookup
		res, ok := f.lookupAsync(ctx, srvCache)
		if !ok {
			return ctx.Err()
		}
		eps, cache, partial, err := res.eps, res.cache, res.partial, res.err
		next := f.opts.MaxInterval
		switch {
		case err != nil:
			s.ReportError(fmt.Errorf("%s: %w", f, err))
			next = min(max(f.opts.Backoff.Delay(failures), f.opts.MinInterval), f.opts.MaxInterval)
			failures++
		default:
			failures = 0
			srvCache = cache
			if partial != nil {
				s.ReportError(fmt.Errorf("%s: %w", f, partial))
			}
			if !published || !resolver.EqualSets(last, eps) {
				last, published = eps, true
				s.Update(slices.Clone(eps))
			}
		}
		if !f.wait(ctx, start, next, now) {
			return ctx.Err()
		}
	}
}

// wait sleeps until start+next, or until a ResolveNow but not before
// start+MinInterval. It reports false when ctx is done first.
func (f *Feed) wait(ctx context.Context, start time.Time, next time.Duration, now <-chan struct{}) bool {
	t := time.NewTimer(time.Until(start.Add(next)))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	case <-now:
	}
	if d := time.Until(start.Add(f.opts.MinInterval)); d > 0 {
		t.Reset(d)
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
	return true
}

type result struct {
	eps          []resolver.Endpoint
	cache        map[string][]netip.Addr
	partial, err error
}

// lookupAsync runs lookup and returns its result, or false as soon as ctx is
// done. lookup bounds each of its queries by Timeout.
func (f *Feed) lookupAsync(ctx context.Context, cache map[string][]netip.Addr) (result, bool) {
	ch := make(chan result, 1)
	go func() {
		var r result
		r.eps, r.cache, r.partial, r.err = f.lookup(ctx, cache)
		ch <- r
	}()
	select {
	case <-ctx.Done():
		return result{}, false
	case r := <-ch:
		if ctx.Err() != nil {
			return result{}, false
		}
		return r, true
	}
}

// bounded runs one lookup with its own deadline, Timeout, and returns by then
// whatever the resolver does. The standard resolver does not abandon a query
// when its context ends (it waits for the query's own timeout), so the lookup
// runs on a goroutine of its own, which bounded does not wait for: it ends when
// the resolver gives up. The error of a lookup cut short says so.
func bounded[T any](ctx context.Context, timeout time.Duration, lookup func(context.Context) (T, error)) (T, error) {
	lctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	type answer struct {
		v   T
		err error
	}
	ch := make(chan answer, 1)
	go func() {
		v, err := lookup(lctx)
		ch <- answer{v, err}
	}()
	var zero T
	select {
	case a := <-ch:
		if a.err != nil && ctx.Err() == nil && lctx.Err() != nil {
			return a.v, fmt.Errorf("no answer within %v: %w", timeout, a.err)
		}
		return a.v, a.err
	case <-lctx.Done():
		if err := ctx.Err(); err != nil {
			return zero, err
		}
		return zero, fmt.Errorf("no answer within %v", timeout)
	}
}

// lookup does one refresh. err means nothing usable was found (the last set
// stays); partial describes SRV targets that failed and were served from cache
// or left out.
func (f *Feed) lookup(ctx context.Context, cache map[string][]netip.Addr) (eps []resolver.Endpoint, newCache map[string][]netip.Addr, partial, err error) {
	lookupIP := func(name string) ([]netip.Addr, error) {
		return bounded(ctx, f.opts.Timeout, func(ctx context.Context) ([]netip.Addr, error) {
			return f.opts.Resolver.LookupNetIP(ctx, f.opts.Network, name)
		})
	}
	if !f.srv {
		ips, err := lookupIP(f.name)
		if err != nil {
			return nil, nil, nil, err
		}
		eps = hostEndpoints(f.name, f.port, ips)
		if len(eps) == 0 {
			return nil, nil, nil, fmt.Errorf("no %s addresses for %s", f.opts.Network, f.name)
		}
		return eps, nil, nil, nil
	}

	srvs, err := bounded(ctx, f.opts.Timeout, func(ctx context.Context) ([]*net.SRV, error) {
		_, srvs, err := f.opts.Resolver.LookupSRV(ctx, "", "", f.name)
		return srvs, err
	})
	if err != nil && (len(srvs) == 0 || ctx.Err() != nil) {
		return nil, nil, nil, err
	}
	var errs []error
	if err != nil {
		// Go drops records with malformed targets and says so; serve the rest.
		errs = append(errs, err)
	}
	if len(srvs) == 0 {
		return nil, nil, nil, fmt.Errorf("no SRV records for %s", f.name)
	}

	targets := make([]string, 0, len(srvs))
	for _, r := range srvs {
		if usable(r) && !slices.Contains(targets, r.Target) {
			targets = append(targets, r.Target)
		}
	}
	if len(targets) == 0 {
		return nil, nil, nil, fmt.Errorf("the SRV records of %s name no usable target (all have target \".\" or port 0)", f.name)
	}
	// Each target on its own deadline: bounded returns by then, so wg.Wait
	// does too, and a silent target costs only its own addresses.
	addrs := make([][]netip.Addr, len(targets))
	lookupErrs := make([]error, len(targets))
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxTargetLookups)
	for i, target := range targets {
		wg.Add(1)
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Done()
			wg.Wait()
			return nil, nil, nil, ctx.Err()
		}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			addrs[i], lookupErrs[i] = lookupIP(target)
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil, nil, nil, ctx.Err()
	}
	newCache = make(map[string][]netip.Addr, len(targets))
	for i, target := range targets {
		switch {
		case lookupErrs[i] == nil && len(addrs[i]) > 0:
			newCache[target] = addrs[i]
		case len(cache[target]) > 0:
			newCache[target] = cache[target]
			errs = append(errs, fmt.Errorf("SRV target %s: %w (serving its last addresses)", target, orNoAddrs(lookupErrs[i], f.opts.Network)))
		default:
			errs = append(errs, fmt.Errorf("SRV target %s: %w (left out)", target, orNoAddrs(lookupErrs[i], f.opts.Network)))
		}
	}
	eps = SRVEndpoints(srvs, newCache)
	if len(eps) == 0 {
		return nil, nil, nil, fmt.Errorf("no addresses for any SRV target of %s: %w", f.name, errors.Join(errs...))
	}
	return eps, newCache, errors.Join(errs...), nil
}

func orNoAddrs(err error, network string) error {
	if err != nil {
		return err
	}
	return fmt.Errorf("no %s addresses", network)
}

func hostEndpoints(name, port string, ips []netip.Addr) []resolver.Endpoint {
	eps := make([]resolver.Endpoint, 0, len(ips))
	seen := make(map[netip.Addr]bool, len(ips))
	for _, ip := range ips {
		ip = ip.Unmap()
		if !ip.IsValid() || seen[ip] {
			continue
		}
		seen[ip] = true
		eps = append(eps, resolver.Endpoint{
			Address:  net.JoinHostPort(ip.String(), port),
			Metadata: map[string]string{MetaName: name},
		})
	}
	sortByAddress(eps)
	return eps
}

// preferred reports whether a is to be kept over b for the same address: lower
// priority, then higher weight, then the smaller target name (Go shuffles SRV
// records of equal priority, so the choice must not depend on their order).
func preferred(a, b resolver.Endpoint) bool {
	if a.Priority != b.Priority {
		return a.Priority < b.Priority
	}
	if a.Weight != b.Weight {
		return a.Weight > b.Weight
	}
	return a.Metadata[MetaSRVTarget] < b.Metadata[MetaSRVTarget]
}

func sortByAddress(eps []resolver.Endpoint) {
	slices.SortFunc(eps, func(a, b resolver.Endpoint) int { return strings.Compare(a.Address, b.Address) })
}

// usable reports whether an SRV record can lead to endpoints: target "." says
// the service is decidedly not available there (RFC 2782), and port 0 reaches
// nothing.
func usable(r *net.SRV) bool {
	return r != nil && r.Port != 0 && r.Target != "."
}

// SRVEndpoints maps SRV records to endpoints, given each target's addresses
// (targets missing from addrs are left out), as the package comment describes.
// The result is sorted by address, with no address twice, and every endpoint
// valid. Unusable records (port 0, target ".", nil) are skipped and take no
// tier: tiers rank the priorities of the usable records only.
func SRVEndpoints(srvs []*net.SRV, addrs map[string][]netip.Addr) []resolver.Endpoint {
	prios := make([]uint16, 0, 4)
	for _, r := range srvs {
		if usable(r) && !slices.Contains(prios, r.Priority) {
			prios = append(prios, r.Priority)
		}
	}
	slices.Sort(prios)
	byAddr := make(map[string]resolver.Endpoint)
	for _, r := range srvs {
		if !usable(r) {
			continue
		}
		weight := uint32(r.Weight) * srvWeightScale
		if weight == 0 {
			weight = 1
		}
		tier, _ := slices.BinarySearch(prios, r.Priority)
		port := strconv.Itoa(int(r.Port))
		for _, ip := range addrs[r.Target] {
			ip = ip.Unmap()
			if !ip.IsValid() {
				continue
			}
			ep := resolver.Endpoint{
				Address:  net.JoinHostPort(ip.String(), port),
				Weight:   weight,
				Priority: tier,
				Metadata: map[string]string{
					MetaSRVTarget:   r.Target,
					MetaSRVPort:     port,
					MetaSRVPriority: strconv.Itoa(int(r.Priority)),
					MetaSRVWeight:   strconv.Itoa(int(r.Weight)),
				},
			}
			if old, ok := byAddr[ep.Address]; ok && !preferred(ep, old) {
				continue
			}
			byAddr[ep.Address] = ep
		}
	}
	eps := make([]resolver.Endpoint, 0, len(byAddr))
	for _, ep := range byAddr {
		eps = append(eps, ep)
	}
	sortByAddress(eps)
	return eps
}
