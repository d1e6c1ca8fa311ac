package lodestar_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/net/http2"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/resolver"
)

// hookCalls counts the calls of each dial hook of a base transport.
type hookCalls struct {
	dial, dialContext, dialTLS, dialTLSContext atomic.Int32
}

func (h *hookCalls) String() string {
	return fmt.Sprintf("Dial %d, DialContext %d, DialTLS %d, DialTLSContext %d",
		h.dial.Load(), h.dialContext.Load(), h.dialTLS.Load(), h.dialTLSContext.Load())
}

// TestDialHooks: every dial hook of a base *http.Transport is honoured, with
// net/http's precedence (DialContext over Dial, DialTLSContext over DialTLS,
// the TLS hooks for https), the connections keep what the hook made (a
// *tls.Conn's handshake state: resp.TLS and the negotiated protocol), and a
// removed endpoint's connections made through the hook are closed when it
// drains, while the other endpoint's stay open.
func TestDialHooks(t *testing.T) {
	leaf, _ := x509.ParseCertificate(compatCert.Certificate[0])
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	var d net.Dialer
	tlsDial := func(ctx context.Context, network, addr string, protos ...string) (net.Conn, error) {
		td := &tls.Dialer{Config: &tls.Config{RootCAs: roots, ServerName: "example.com", NextProtos: protos}}
		return td.DialContext(ctx, network, addr)
	}
	// wrapped hides the *tls.Conn, as some TLS hooks do (net/http then
	// speaks HTTP/1.1 over it and reports no resp.TLS).
	type wrapped struct{ net.Conn }

	for _, tc := range []struct {
		name      string
		server    string
		base      func(h *hookCalls) *http.Transport
		wantCalls func(h *hookCalls) bool
		wantProto string
		wantTLS   bool
	}{
		{"DialContext", kindH1, func(h *hookCalls) *http.Transport {
			return &http.Transport{DialContext: func(ctx context.Context, n, a string) (net.Conn, error) {
				h.dialContext.Add(1)
				return d.DialContext(ctx, n, a)
			}}
		}, func(h *hookCalls) bool { return h.dialContext.Load() > 0 }, "HTTP/1.1", false},
		{"Dial", kindH1, func(h *hookCalls) *http.Transport {
			return &http.Transport{Dial: func(n, a string) (net.Conn, error) {
				h.dial.Add(1)
				return net.Dial(n, a)
			}}
		}, func(h *hookCalls) bool { return h.dial.Load() > 0 }, "HTTP/1.1", false},
		{"Dial and DialContext", kindH1, func(h *hookCalls) *http.Transport {
			return &http.Transport{
				Dial: func(n, a string) (net.Conn, error) {
					h.dial.Add(1)
					return net.Dial(n, a)
				},
				DialContext: func(ctx context.Context, n, a string) (net.Conn, error) {
					h.dialContext.Add(1)
					return d.DialContext(ctx, n, a)
				},
			}
		}, func(h *hookCalls) bool { return h.dialContext.Load() > 0 && h.dial.Load() == 0 }, "HTTP/1.1", false},
		{"DialContext for https", kindTLS2, func(h *hookCalls) *http.Transport {
			return &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, DialContext: func(ctx context.Context, n, a string) (net.Conn, error) {
				h.dialContext.Add(1)
				return d.DialContext(ctx, n, a)
			}}
		}, func(h *hookCalls) bool { return h.dialContext.Load() > 0 }, "HTTP/1.1", true},
		{"DialTLSContext", kindTLS2, func(h *hookCalls) *http.Transport {
			return &http.Transport{DialTLSContext: func(ctx context.Context, n, a string) (net.Conn, error) {
				h.dialTLSContext.Add(1)
				return tlsDial(ctx, n, a, "http/1.1")
			}}
		}, func(h *hookCalls) bool { return h.dialTLSContext.Load() > 0 }, "HTTP/1.1", true},
		{"DialTLS", kindTLS2, func(h *hookCalls) *http.Transport {
			return &http.Transport{DialTLS: func(n, a string) (net.Conn, error) {
				h.dialTLS.Add(1)
				return tlsDial(context.Background(), n, a, "http/1.1")
			}}
		}, func(h *hookCalls) bool { return h.dialTLS.Load() > 0 }, "HTTP/1.1", true},
		{"DialTLS and DialTLSContext and DialContext", kindTLS2, func(h *hookCalls) *http.Transport {
			return &http.Transport{
				DialTLS: func(n, a string) (net.Conn, error) {
					h.dialTLS.Add(1)
					return tlsDial(context.Background(), n, a, "http/1.1")
				},
				DialTLSContext: func(ctx context.Context, n, a string) (net.Conn, error) {
					h.dialTLSContext.Add(1)
					return tlsDial(ctx, n, a, "http/1.1")
				},
				DialContext: func(ctx context.Context, n, a string) (net.Conn, error) {
					h.dialContext.Add(1)
					return d.DialContext(ctx, n, a)
				},
			}
		}, func(h *hookCalls) bool {
			return h.dialTLSContext.Load() > 0 && h.dialTLS.Load() == 0 && h.dialContext.Load() == 0
		}, "HTTP/1.1", true},
		{"DialTLSContext with HTTP/2", kindTLS2, func(h *hookCalls) *http.Transport {
			return &http.Transport{ForceAttemptHTTP2: true, DialTLSContext: func(ctx context.Context, n, a string) (net.Conn, error) {
				h.dialTLSContext.Add(1)
				return tlsDial(ctx, n, a, "h2", "http/1.1")
			}}
		}, func(h *hookCalls) bool { return h.dialTLSContext.Load() > 0 }, "HTTP/2.0", true},
		{"DialTLSContext returning a wrapped conn", kindTLS2, func(h *hookCalls) *http.Transport {
			return &http.Transport{DialTLSContext: func(ctx context.Context, n, a string) (net.Conn, error) {
				h.dialTLSContext.Add(1)
				c, err := tlsDial(ctx, n, a, "http/1.1")
				if err != nil {
					return nil, err
				}
				return wrapped{c}, nil
			}}
		}, func(h *hookCalls) bool { return h.dialTLSContext.Load() > 0 }, "HTTP/1.1", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := newCompatServer(t, tc.server, protoHandler), newCompatServer(t, tc.server, protoHandler)
			scheme, _, _ := strings.Cut(a.URL, "://")

			// The plain base, with the same hooks, for reference (on a server
			// of its own).
			ref := newCompatServer(t, tc.server, protoHandler)
			var plainCalls hookCalls
			plain := tc.base(&plainCalls)
			defer plain.CloseIdleConnections()
			resp, err := (&http.Client{Transport: plain}).Get(ref.URL + "/")
			if err != nil {
				t.Fatalf("plain base: %v", err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.Proto != tc.wantProto || (resp.TLS != nil) != tc.wantTLS || !tc.wantCalls(&plainCalls) {
				t.Fatalf("plain base: %s, TLS %v, hooks called: %s (test expectations are wrong)", resp.Proto, resp.TLS != nil, &plainCalls)
			}

			var calls hookCalls
			feed, _ := resolver.NewStaticAddrs(a.addr(), b.addr())
			tr := newTransport(t, feed, balancer.Config{}, func(o *lodestar.Options) { o.Base = tc.base(&calls) })
			c := &http.Client{Transport: tr}
			for i := range 4 {
				resp, err := c.Get(scheme + "://svc/")
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.Proto != tc.wantProto || (resp.TLS != nil) != tc.wantTLS {
					t.Errorf("request %d: %s, TLS %v; want %s, TLS %v", i, resp.Proto, resp.TLS != nil, tc.wantProto, tc.wantTLS)
				}
			}
			if !tc.wantCalls(&calls) {
				t.Errorf("hooks called: %s", &calls)
			}
			a.waitConns(t, "a connection to the endpoint to be removed", func(_, open int) bool { return open == 1 })
			b.waitConns(t, "a connection to the endpoint that stays", func(_, open int) bool { return open == 1 })

			if err := feed.Set(resolver.Endpoint{Address: b.addr()}); err != nil {
				t.Fatal(err)
			}
			// Drained with nothing in flight: its connection, made through
			// the hook, is closed by lodestar.
			a.waitConns(t, "the removed endpoint's connection to close", func(_, open int) bool { return open == 0 })
			if _, open := b.counts(); open != 1 {
				t.Errorf("the remaining endpoint has %d open connections, want 1", open)
			}
			if resp, err := c.Get(scheme + "://svc/"); err != nil {
				t.Fatal(err)
			} else {
				resp.Body.Close()
			}
		})
	}
}

// TestDialHookReturningNilNil: a hook that returns (nil, nil) fails the
// request with net/http's own error, as with the plain base.
func TestDialHookReturningNilNil(t *testing.T) {
	srv := newCompatServer(t, kindH1, protoHandler)
	base := func() http.RoundTripper {
		return &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) { return nil, nil }}
	}
	forBoth(t, sides(t, base, srv), func(t *testing.T, s side) {
		_, err := (&http.Client{Transport: s.rt}).Get(s.urls[0] + "/")
		if err == nil || !strings.Contains(err.Error(), "DialContext hook returned (nil, nil)") {
			t.Fatalf("err = %v, want net/http's (nil, nil) hook error", err)
		}
	})
}

// TestDrainClosesHTTP2Connections: a removed endpoint's HTTP/2 connection is
// closed when it drains, whichever HTTP/2 implementation the base uses, and
// the other endpoint's connection stays.
func TestDrainClosesHTTP2Connections(t *testing.T) {
	requireTrust(t)
	for _, tc := range []struct {
		name, server string
		base         func() http.RoundTripper
	}{
		{"bundled HTTP/2 of &http.Transport{}", kindTLS2, func() http.RoundTripper { return &http.Transport{} }},
		{"x/net http2.ConfigureTransports", kindTLS2, func() http.RoundTripper {
			t1 := &http.Transport{}
			if _, err := http2.ConfigureTransports(t1); err != nil {
				panic(err)
			}
			return t1
		}},
		{"h2c with Protocols", kindH2C, func() http.RoundTripper {
			var p http.Protocols
			p.SetUnencryptedHTTP2(true)
			return &http.Transport{Protocols: &p}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := newCompatServer(t, tc.server, protoHandler), newCompatServer(t, tc.server, protoHandler)
			scheme, _, _ := strings.Cut(a.URL, "://")
			base := tc.base()
			defer closeIdle(base)
			feed, _ := resolver.NewStaticAddrs(a.addr(), b.addr())
			tr := newTransport(t, feed, balancer.Config{}, func(o *lodestar.Options) { o.Base = base })
			c := &http.Client{Transport: tr}
			for i := range 4 {
				resp, err := c.Get(scheme + "://svc/")
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.ProtoMajor != 2 {
					t.Fatalf("request %d used %s, want HTTP/2", i, resp.Proto)
				}
			}
			a.waitConns(t, "a connection to a", func(_, open int) bool { return open == 1 })
			b.waitConns(t, "a connection to b", func(_, open int) bool { return open == 1 })
			if err := feed.Set(resolver.Endpoint{Address: b.addr()}); err != nil {
				t.Fatal(err)
			}
			a.waitConns(t, "the removed endpoint's connection to close", func(_, open int) bool { return open == 0 })
			if _, open := b.counts(); open != 1 {
				t.Errorf("b has %d open connections, want 1", open)
			}
			for range 2 {
				if n, err := exchange(t, tr, scheme+"://svc"); err != nil || n.Proto != "HTTP/2.0" {
					t.Fatalf("after the removal: %+v, %v", n, err)
				}
			}
			if opened, _ := b.counts(); opened != 1 {
				t.Errorf("b accepted %d connections, want 1 (reused)", opened)
			}
		})
	}
}
