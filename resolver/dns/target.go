package dns

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/lodestar-go/lodestar/resolver"
)

// The target schemes this package registers.
const (
	SchemeDNS = "dns"
	SchemeSRV = "srv"
)

func init() {
	resolver.Register(SchemeDNS, func(u *url.URL) (resolver.Feed, error) { return build(u) })
	resolver.Register(SchemeSRV, func(u *url.URL) (resolver.Feed, error) { return build(u) })
}

// ParseTarget builds the Feed a target names:
//
//	dns://[server[:port]]/name:port[?param=value&...]   A/AAAA records
//	srv://[server[:port]]/_service._proto.name[?...]    SRV records
//
// The authority, when present, is the DNS server to ask (port 53 when left
// out); empty means the system's resolver. Parameters, each at most once:
//
//	network=ip|ip4|ip6    Options.Network
//	minInterval=DURATION  Options.MinInterval, for example 1s
//	maxInterval=DURATION  Options.MaxInterval, for example 30s
//	timeout=DURATION      Options.Timeout
//
// Anything else (an unknown parameter, user information, a fragment) is
// rejected with an error naming it. Errors quote the target only as
// resolver.Redact returns it, and never quote user information, a fragment or
// a parameter's value except those of the parameters above.
func ParseTarget(target string) (*Feed, error) {
	u, err := resolver.ParseURL(target)
	if err != nil {
		return nil, fmt.Errorf("dns target %q: %w", resolver.Redact(target), err)
	}
	if u.Scheme != SchemeDNS && u.Scheme != SchemeSRV {
		return nil, fmt.Errorf("dns target %q: scheme %q is neither dns nor srv", resolver.Redact(target), u.Scheme)
	}
	return build(u)
}

func build(u *url.URL) (*Feed, error) {
	form := "want dns://[server]/name:port"
	if u.Scheme == SchemeSRV {
		form = "want srv://[server]/_service._proto.name"
	}
	// None of these errors quotes what it rejects: it may hold a secret.
	switch {
	case u.Opaque != "":
		return nil, fmt.Errorf(`%s target: no "//" after "%s:" (%s)`, u.Scheme, u.Scheme, form)
	case u.User != nil:
		return nil, fmt.Errorf("%s target: unexpected user information in the authority (%s)", u.Scheme, form)
	case u.Fragment != "" || u.RawFragment != "":
		return nil, fmt.Errorf("%s target: unexpected fragment (%s)", u.Scheme, form)
	}
	var opts Options
	if u.Host != "" {
		addr, err := serverAddress(u.Host)
		if err != nil {
			return nil, fmt.Errorf("%s target: authority: %w", u.Scheme, err)
		}
		opts.Server = addr
	}
	name, _ := strings.CutPrefix(u.Path, "/")
	if name == "" {
		return nil, fmt.Errorf("%s target: no name in the path (%s)", u.Scheme, form)
	}
	if strings.Contains(name, "/") {
		return nil, fmt.Errorf("%s target: path %q has more than one segment (%s)", u.Scheme, u.Path, form)
	}

	q, err := resolver.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, fmt.Errorf("%s target: query: %w", u.Scheme, err)
	}
	for key, vals := range q {
		if len(vals) > 1 {
			return nil, fmt.Errorf("%s target: parameter %q given %d times", u.Scheme, key, len(vals))
		}
		v := vals[0]
		var err error
		switch key {
		case "network":
			opts.Network = v
			if v != "ip" && v != "ip4" && v != "ip6" {
				err = fmt.Errorf("not ip, ip4 or ip6")
			}
		case "minInterval":
			opts.MinInterval, err = positiveDuration(v)
		case "maxInterval":
			opts.MaxInterval, err = positiveDuration(v)
		case "timeout":
			opts.Timeout, err = positiveDuration(v)
		default:
			return nil, fmt.Errorf("%s target: unknown parameter %q (known: network, minInterval, maxInterval, timeout)", u.Scheme, key)
		}
		if err != nil {
			return nil, fmt.Errorf("%s target: parameter %s=%q: %w", u.Scheme, key, v, err)
		}
	}

	var f *Feed
	if u.Scheme == SchemeSRV {
		f, err = NewSRV(name, opts)
	} else {
		f, err = NewHost(name, opts)
	}
	if err != nil {
		return nil, fmt.Errorf("%s target: %w", u.Scheme, err)
	}
	return f, nil
}

func positiveDuration(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, err
	}
	if d <= 0 {
		return 0, fmt.Errorf("not a positive duration")
	}
	return d, nil
}
