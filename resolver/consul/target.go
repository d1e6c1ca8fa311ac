package consul

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/lodestar-go/lodestar/resolver"
)

// Scheme is the target scheme this package registers.
const Scheme = "consul"

func init() { resolver.Register(Scheme, build) }

func build(u *url.URL) (resolver.Feed, error) {
	opts, err := optionsFromURL(u)
	if err != nil {
		return nil, err
	}
	return New(opts)
}

// ParseTarget turns a target URL into Options:
//
//	consul://[agent-host[:port]]/service[?param=value&...]
//
// The authority is the agent's HTTP address (port 8500 when left out); empty
// means the default agent (CONSUL_HTTP_ADDR, else localhost:8500). The path is
// the service name. Parameters, each at most once except tag:
//
//	tag=NAME          keep instances with this tag; repeat for several (all must match)
//	dc=NAME           Options.Datacenter
//	near=NODE         Options.Near ("_agent" for the queried agent)
//	filter=EXPR       Options.Filter (URL-encode it)
//	token=TOKEN       Options.Token (prefer CONSUL_HTTP_TOKEN: URLs end up in logs)
//	stale=BOOL        Options.AllowStale
//	passingOnly=BOOL  false sets Options.IncludeWarning (critical instances are never served)
//	ns=NAME           Options.Namespace
//	partition=NAME    Options.Partition
//	zoneKey=, regionKey=, subzoneKey=, priorityKey=  the locality and priority keys
//	wait=DURATION     Options.WaitTime, for example 30s
//
// Anything else (an unknown parameter, a user:password@, a fragment, a path
// with more than one segment) is rejected with an error naming it.
//
// No error carries the token: errors quote the target only as resolver.Redact
// returns it, and never quote user information, a fragment, the token or any
// value of a parameter that is not one of the above.
func ParseTarget(target string) (Options, error) {
	u, err := resolver.ParseURL(target)
	if err != nil {
		return Options{}, fmt.Errorf("consul target %q: %w", resolver.Redact(target), err)
	}
	if u.Scheme != Scheme {
		return Options{}, fmt.Errorf("consul target %q: scheme %q is not %q", resolver.Redact(target), u.Scheme, Scheme)
	}
	return optionsFromURL(u)
}

const targetForm = "want consul://[agent-host:port]/service?tag=...&dc=..."

func optionsFromURL(u *url.URL) (Options, error) {
	var o Options
	// None of these errors quotes what it rejects: it may hold the token.
	if u.Opaque != "" {
		return o, fmt.Errorf(`consul target: no "//" after "consul:"; want //[authority]/service (%s)`, targetForm)
	}
	if u.User != nil {
		return o, errors.New("consul target: user information in the authority is not supported (pass the ACL token as ?token= or CONSUL_HTTP_TOKEN)")
	}
	if u.Fragment != "" || u.RawFragment != "" {
		return o, fmt.Errorf("consul target: unexpected fragment (%s)", targetForm)
	}
	if u.Host != "" {
		addr, err := agentAddress(u.Host)
		if err != nil {
			return o, err
		}
		o.Address = addr
	}
	name, ok := strings.CutPrefix(u.Path, "/")
	switch {
	case !ok || name == "":
		return o, fmt.Errorf("consul target: no service name in the path (%s)", targetForm)
	case strings.Contains(name, "/"):
		return o, fmt.Errorf("consul target: path %q has more than one segment; the path is just the service name (%s)", u.Path, targetForm)
	}
	o.Service = name

	q, err := resolver.ParseQuery(u.RawQuery)
	if err != nil {
		return o, fmt.Errorf("consul target: query: %w", err)
	}
	for key, vals := range q {
		if key != "tag" && len(vals) > 1 {
			return o, fmt.Errorf("consul target: parameter %q given %d times", key, len(vals))
		}
		v := vals[0]
		var err error
		switch key {
		case "tag":
			for _, t := range vals {
				if t == "" {
					return o, errors.New("consul target: parameter \"tag\" is empty")
				}
			}
			o.Tags = append(o.Tags, vals...)
		case "dc":
			o.Datacenter, err = nonEmpty(v)
		case "near":
			o.Near, err = nonEmpty(v)
		case "filter":
			o.Filter, err = nonEmpty(v)
		case "token":
			o.Token, err = nonEmpty(v)
		case "ns":
			o.Namespace, err = nonEmpty(v)
		case "partition":
			o.Partition, err = nonEmpty(v)
		case "zoneKey":
			o.ZoneKey, err = nonEmpty(v)
		case "regionKey":
			o.RegionKey, err = nonEmpty(v)
		case "subzoneKey":
			o.SubZoneKey, err = nonEmpty(v)
		case "priorityKey":
			o.PriorityKey, err = nonEmpty(v)
		case "stale":
			o.AllowStale, err = strconv.ParseBool(v)
		case "passingOnly":
			var passing bool
			passing, err = strconv.ParseBool(v)
			o.IncludeWarning = !passing
		case "wait":
			o.WaitTime, err = time.ParseDuration(v)
			if err == nil && o.WaitTime <= 0 {
				err = errors.New("not a positive duration")
			}
		default:
			return o, fmt.Errorf("consul target: unknown parameter %q (known: tag, dc, near, filter, token, stale, passingOnly, ns, partition, zoneKey, regionKey, subzoneKey, priorityKey, wait)", key)
		}
		if err != nil {
			if key == "token" {
				return o, fmt.Errorf("consul target: parameter token: %w", err)
			}
			return o, fmt.Errorf("consul target: parameter %s=%q: %w", key, v, err)
		}
	}
	if err := o.Validate(); err != nil {
		return o, fmt.Errorf("consul target: %w", err)
	}
	return o, nil
}

func nonEmpty(v string) (string, error) {
	if v == "" {
		return "", errors.New("empty value")
	}
	return v, nil
}

// agentAddress checks a target's authority and adds the default port 8500.
func agentAddress(hostport string) (string, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		// No port: the whole authority is the host.
		host, port = hostport, "8500"
		if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
			host = host[1 : len(host)-1]
		}
		if strings.ContainsAny(host, "[]") || (strings.Contains(host, ":") && net.ParseIP(host) == nil) {
			return "", fmt.Errorf("consul target: agent address %q: want host:port", hostport)
		}
	}
	if host == "" {
		return "", fmt.Errorf("consul target: agent address %q has an empty host", hostport)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return "", fmt.Errorf("consul target: agent address %q: port %q is not in 1-65535", hostport, port)
	}
	return net.JoinHostPort(host, port), nil
}
