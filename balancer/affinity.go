package balancer

import (
	"context"
	"fmt"
	"strings"
)

// Affinity says where a request's affinity key comes from, for the hashing
// algorithms (ring_hash, maglev, bounded_load). Requests with the same key go
// to the same endpoint, over HTTP and gRPC alike (both hash keys with HashKey).
// A front door tries the sources in this order and uses the first that yields a
// non-empty key:
//
//  1. a key the caller put in the request's context with WithAffinityKey;
//  2. Header (HTTP) or Metadata (gRPC);
//  3. Cookie (HTTP);
//  4. the client's IP address, if ClientIP is set.
//
// A request with no key is picked by the algorithm's fallback (its Fallback
// option: random unless set to round_robin). The zero value uses only keys from
// the context.
//
// In JSON (the "affinity" member of the configuration):
// {"header": "X-User-ID", "cookie": "session", "metadata": "x-user-id", "clientIP": true}.
type Affinity struct {
	// Header is an HTTP request header whose value is the key. Default none.
	// The HTTP front door reads it; it must be a valid header name.
	Header string `json:"header,omitempty"`
	// Cookie is the name of an HTTP cookie whose value is the key. Default none.
	Cookie string `json:"cookie,omitempty"`
	// Metadata is a gRPC metadata key (lower case) whose first value is the key.
	// Default none. The gRPC front door reads it from the outgoing metadata.
	Metadata string `json:"metadata,omitempty"`
	// ClientIP uses the address of the client the request is made for: for
	// HTTP, the host of the request's RemoteAddr (set when a server's incoming
	// request is forwarded, as httputil.ReverseProxy does), else the first
	// address of its X-Forwarded-For header; for gRPC, the peer address of the
	// incoming call in the context. Default false.
	ClientIP bool `json:"clientIP,omitempty"`
}

// IsZero reports whether a takes keys only from the context.
func (a Affinity) IsZero() bool { return a == Affinity{} }

// Validate checks the names, naming the field.
func (a Affinity) Validate() error {
	if a.Header != "" && !isToken(a.Header) {
		return fmt.Errorf("affinity.header: %q is not a valid HTTP header name", a.Header)
	}
	if a.Cookie != "" && !isToken(a.Cookie) {
		return fmt.Errorf("affinity.cookie: %q is not a valid cookie name", a.Cookie)
	}
	if m := a.Metadata; m != "" {
		if strings.HasSuffix(m, "-bin") || strings.HasPrefix(m, "grpc-") {
			return fmt.Errorf("affinity.metadata: %q is a binary or reserved gRPC metadata key", m)
		}
		for i := 0; i < len(m); i++ {
			if c := m[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
				return fmt.Errorf("affinity.metadata: %q is not a valid gRPC metadata key (want lower-case letters, digits, '-', '_', '.')", m)
			}
		}
	}
	return nil
}

// isToken reports whether s is an RFC 7230 token (header and cookie names).
func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return s != ""
}

type affinityCtxKey struct{}

// affinityKey is what WithAffinityKey stores: the key hashed once, up front, so
// that a pick reads it without hashing or allocating.
type affinityKey struct {
	key  string
	hash uint64
}

// WithAffinityKey returns a copy of ctx carrying key as the affinity key of the
// requests made with it, over either front door; it takes precedence over every
// source in Affinity. An empty key removes an earlier one.
func WithAffinityKey(ctx context.Context, key string) context.Context {
	if key == "" {
		return context.WithValue(ctx, affinityCtxKey{}, (*affinityKey)(nil))
	}
	return context.WithValue(ctx, affinityCtxKey{}, &affinityKey{key: key, hash: HashKey(key)})
}

// AffinityKey returns the key WithAffinityKey put in ctx.
func AffinityKey(ctx context.Context) (string, bool) {
	if k, _ := ctx.Value(affinityCtxKey{}).(*affinityKey); k != nil {
		return k.key, true
	}
	return "", false
}

// AffinityHash returns HashKey of the key WithAffinityKey put in ctx, without
// allocating: front doors call it on the pick path.
func AffinityHash(ctx context.Context) (uint64, bool) {
	if ctx == nil {
		return 0, false
	}
	if k, _ := ctx.Value(affinityCtxKey{}).(*affinityKey); k != nil {
		return k.hash, true
	}
	return 0, false
}
