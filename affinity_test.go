package lodestar

import (
	"context"
	"net/http"
	"testing"

	"github.com/lodestar-go/lodestar/balancer"
)

func TestAffinityPickInfo(t *testing.T) {
	all := newAffinity(balancer.Config{Affinity: balancer.Affinity{Header: "x-user-id", Cookie: "sid", ClientIP: true}})
	req := func(h http.Header, remote string) *http.Request {
		r, _ := http.NewRequest("GET", "http://users/", nil)
		for k, v := range h {
			r.Header[k] = v
		}
		r.RemoteAddr = remote
		return r
	}
	for _, tc := range []struct {
		name    string
		a       affinity
		ctx     context.Context
		req     *http.Request
		wantKey string // "" means no key
	}{
		{"context first", all, balancer.WithAffinityKey(context.Background(), "ctx-key"),
			req(http.Header{"X-User-Id": {"h"}}, "10.0.0.1:5"), "ctx-key"},
		{"header (any case in config)", all, context.Background(), req(http.Header{"X-User-Id": {"u1"}, "Cookie": {"sid=c"}}, ""), "u1"},
		{"cookie", all, context.Background(), req(http.Header{"Cookie": {"a=1; sid=\"abc\"; b=2"}}, "10.0.0.1:5"), "abc"},
		{"cookie on a second line", all, context.Background(), req(http.Header{"Cookie": {"a=1", "sid=zz"}}, ""), "zz"},
		{"cookie name is exact", all, context.Background(), req(http.Header{"Cookie": {"xsid=1; sidx=2"}}, ""), ""},
		{"client IP from RemoteAddr", all, context.Background(), req(nil, "[2001:db8::1]:443"), "2001:db8::1"},
		{"client IP from X-Forwarded-For", all, context.Background(), req(http.Header{"X-Forwarded-For": {"192.0.2.7, 10.0.0.1"}}, ""), "192.0.2.7"},
		{"empty header skipped", all, context.Background(), req(http.Header{"X-User-Id": {""}}, "10.1.1.1:80"), "10.1.1.1"},
		{"nothing configured", newAffinity(balancer.Config{}), context.Background(), req(http.Header{"X-User-Id": {"u1"}}, "10.0.0.1:5"), ""},
		{"nothing found", all, context.Background(), req(nil, ""), ""},
	} {
		info := tc.a.pickInfo(tc.ctx, tc.req)
		if info.Ctx != tc.ctx {
			t.Errorf("%s: context not passed on", tc.name)
		}
		if tc.wantKey == "" {
			if info.HasHash {
				t.Errorf("%s: got a key, want none", tc.name)
			}
			continue
		}
		if !info.HasHash || info.Hash != balancer.HashKey(tc.wantKey) {
			t.Errorf("%s: hash %x (has %v), want HashKey(%q)", tc.name, info.Hash, info.HasHash, tc.wantKey)
		}
	}
}

func TestAffinityAllocatesNothing(t *testing.T) {
	a := newAffinity(balancer.Config{Affinity: balancer.Affinity{Header: "X-User", Cookie: "sid", ClientIP: true}})
	r, _ := http.NewRequest("GET", "http://users/", nil)
	r.Header.Set("Cookie", "a=1; b=2; sid=abc")
	r.RemoteAddr = "10.0.0.1:1234"
	ctx := balancer.WithAffinityKey(context.Background(), "k")
	for name, c := range map[string]context.Context{"cookie": context.Background(), "context": ctx} {
		if n := testing.AllocsPerRun(100, func() { a.pickInfo(c, r) }); n != 0 {
			t.Errorf("%s: %.0f allocations per pickInfo", name, n)
		}
	}
	r.Header.Del("Cookie")
	if n := testing.AllocsPerRun(100, func() { a.pickInfo(context.Background(), r) }); n != 0 {
		t.Errorf("client IP: %.0f allocations per pickInfo", n)
	}
}
