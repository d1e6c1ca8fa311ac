package lodestar

import (
	"context"
	"net"
	"net/http"
	"net/textproto"
	"strings"

	"github.com/lodestar-go/lodestar/balancer"
)

// affinity extracts a request's affinity key for the hashing algorithms, as
// balancer.Affinity configures: a key in the context (balancer.WithAffinityKey),
// then the header, the cookie, the client IP. It allocates nothing.
type affinity struct {
	header   string // canonical header name, "" for none
	cookie   string
	clientIP bool
}

func newAffinity(cfg balancer.Config) affinity {
	a := affinity{cookie: cfg.Affinity.Cookie, clientIP: cfg.Affinity.ClientIP}
	if cfg.Affinity.Header != "" {
		a.header = textproto.CanonicalMIMEHeaderKey(cfg.Affinity.Header)
	}
	return a
}

// pickInfo returns the pick information for req.
func (a affinity) pickInfo(ctx context.Context, req *http.Request) balancer.PickInfo {
	if h, ok := balancer.AffinityHash(ctx); ok {
		return balancer.PickInfo{Ctx: ctx, Hash: h, HasHash: true}
	}
	if key := a.key(req); key != "" {
		return balancer.PickInfo{Ctx: ctx, Hash: balancer.HashKey(key), HasHash: true}
	}
	return balancer.PickInfo{Ctx: ctx}
}

// key returns req's affinity key from the configured sources, or "".
func (a affinity) key(req *http.Request) string {
	if a.header != "" {
		if v := req.Header[a.header]; len(v) > 0 && v[0] != "" {
			return v[0]
		}
	}
	if a.cookie != "" {
		if v := cookieValue(req.Header["Cookie"], a.cookie); v != "" {
			return v
		}
	}
	if a.clientIP {
		return clientIP(req)
	}
	return ""
}

// cookieValue finds cookie name in Cookie header lines without parsing (and
// allocating for) every cookie, as req.Cookie does. Quotes around the value
// are dropped.
func cookieValue(lines []string, name string) string {
	for _, line := range lines {
		for line != "" {
			var part string
			part, line, _ = strings.Cut(line, ";")
			part = strings.TrimSpace(part)
			n, v, ok := strings.Cut(part, "=")
			if !ok || n != name {
				continue
			}
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			return v
		}
	}
	return ""
}

// clientIP returns the host of req.RemoteAddr, else the first address of
// X-Forwarded-For, else "".
func clientIP(req *http.Request) string {
	if ra := req.RemoteAddr; ra != "" {
		if host, _, err := net.SplitHostPort(ra); err == nil {
			return host
		}
		return ra
	}
	if v := req.Header["X-Forwarded-For"]; len(v) > 0 {
		first, _, _ := strings.Cut(v[0], ",")
		return strings.TrimSpace(first)
	}
	return ""
}
