package lodestar_test

// The compatibility suite: lodestar's Transport must behave like the base
// transport it is given. Each case runs the same scenario twice against real
// servers on 127.0.0.1, once through the plain base transport (requests to the
// server's address) and once through lodestar over a fresh base of the same
// kind (requests to the service name), and asserts the same observable result
// on both.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/resolver"
)

// compatCert is the certificate of every TLS test server: valid for 127.0.0.1,
// ::1 and the service names the tests use. It is self-signed and added to the
// system roots of this test binary (see init), so that bases without a
// TLSClientConfig, like &http.Transport{} or http.DefaultTransport, verify it
// as they would a real server's: their HTTP/2 set-up depends on having no
// TLSClientConfig, which is what the suite must exercise.
var (
	compatCert    tls.Certificate
	compatTrusted bool // the system roots include compatCert
)

func init() {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "lodestar compat test"},
		DNSNames:              []string{"svc", "svc2", "example.com"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	compatCert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	leaf, _ := x509.ParseCertificate(der)

	// crypto/x509 reads the system roots once, from SSL_CERT_FILE when it is
	// set: point it at the certificate, load the roots now, and undo both.
	f, err := os.CreateTemp("", "lodestar-compat-*.pem")
	if err != nil {
		panic(err)
	}
	defer os.Remove(f.Name())
	pem.Encode(f, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	f.Close()
	old, had := os.LookupEnv("SSL_CERT_FILE")
	os.Setenv("SSL_CERT_FILE", f.Name())
	_, err = x509.SystemCertPool()
	if had {
		os.Setenv("SSL_CERT_FILE", old)
	} else {
		os.Unsetenv("SSL_CERT_FILE")
	}
	if err == nil {
		_, err = leaf.Verify(x509.VerifyOptions{DNSName: "svc"})
		compatTrusted = err == nil
	}
}

func requireTrust(t *testing.T) {
	t.Helper()
	if !compatTrusted {
		t.Fatal("the test certificate is not in the system roots (were they loaded before this package's init?)")
	}
}

// Server kinds.
const (
	kindH1   = "h1"     // plain HTTP/1.1
	kindH2C  = "h2c"    // plain HTTP/1.1 and HTTP/2 with prior knowledge
	kindTLS1 = "tls-h1" // TLS offering http/1.1 only
	kindTLS2 = "tls-h2" // TLS offering h2 and http/1.1, as most servers do
)

// compatServer is a real server on 127.0.0.1 that records its connections.
type compatServer struct {
	*httptest.Server
	mu      sync.Mutex
	state   map[net.Conn]http.ConnState
	opened  int
	changed chan struct{} // closed and replaced on every connection state change
}

func newCompatServer(t *testing.T, kind string, h http.Handler) *compatServer {
	t.Helper()
	s := &compatServer{state: map[net.Conn]http.ConnState{}, changed: make(chan struct{})}
	s.Server = httptest.NewUnstartedServer(h)
	s.Config.ConnState = s.hook
	switch kind {
	case kindH1:
		s.Start()
	case kindH2C:
		var p http.Protocols
		p.SetHTTP1(true)
		p.SetUnencryptedHTTP2(true)
		s.Config.Protocols = &p
		s.Start()
	case kindTLS1, kindTLS2:
		protos := []string{"http/1.1"}
		if kind != kindTLS1 {
			protos = []string{"h2", "http/1.1"}
			s.EnableHTTP2 = true
		}
		s.TLS = &tls.Config{Certificates: []tls.Certificate{compatCert}, NextProtos: protos}
		s.StartTLS()
	default:
		t.Fatalf("unknown server kind %q", kind)
	}
	t.Cleanup(s.Close)
	return s
}

func (s *compatServer) hook(c net.Conn, st http.ConnState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st == http.StateNew {
		s.opened++
	}
	s.state[c] = st
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *compatServer) addr() string { return s.Listener.Addr().String() }

// counts returns how many connections the server accepted, and how many of
// them are open and not hijacked.
func (s *compatServer) counts() (opened, open int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.state {
		if st != http.StateClosed && st != http.StateHijacked {
			open++
		}
	}
	return s.opened, open
}

// waitConns waits (on the server's own connection events) until cond holds.
func (s *compatServer) waitConns(t *testing.T, what string, cond func(opened, open int) bool) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		s.mu.Lock()
		ch := s.changed
		s.mu.Unlock()
		if cond(s.counts()) {
			return
		}
		select {
		case <-ch:
		case <-timeout:
			opened, open := s.counts()
			t.Fatalf("timed out waiting for %s (server %s: %d connections opened, %d open)", what, s.addr(), opened, open)
		}
	}
}

// side is one way of sending requests to the test servers: the plain base
// transport, or lodestar over a base of the same kind.
type side struct {
	name string
	rt   http.RoundTripper
	urls []string            // urls[i] reaches server i
	ls   *lodestar.Transport // nil on the plain side
}

// endpoint returns lodestar's endpoint for server i, or nil on the plain side.
func (s side) endpoint(i int, srv *compatServer) *balancer.Endpoint {
	if s.ls == nil {
		return nil
	}
	return s.ls.Engine(serviceName(i)).Endpoint(srv.addr())
}

func serviceName(i int) string {
	if i == 0 {
		return "svc"
	}
	return "svc" + strconv.Itoa(i+1)
}

// sides returns the plain side and the lodestar side for servers srvs (all of
// one scheme): service "svc" is srvs[0], "svc2" srvs[1], ... newBase makes a
// fresh base; nil means lodestar's default base (nil), whose plain counterpart
// is a clone of http.DefaultTransport.
func sides(t *testing.T, newBase func() http.RoundTripper, srvs ...*compatServer) []side {
	t.Helper()
	scheme, _, _ := strings.Cut(srvs[0].URL, "://")
	var plain, base http.RoundTripper
	if newBase == nil {
		plain = http.DefaultTransport.(*http.Transport).Clone()
	} else {
		plain, base = newBase(), newBase()
	}
	t.Cleanup(func() { closeIdle(plain) })
	ps := side{name: "plain", rt: plain}
	ls := side{name: "lodestar"}
	services := map[string]lodestar.Service{}
	for i, srv := range srvs {
		ps.urls = append(ps.urls, srv.URL)
		ls.urls = append(ls.urls, scheme+"://"+serviceName(i))
		feed, err := resolver.NewStaticAddrs(srv.addr())
		if err != nil {
			t.Fatal(err)
		}
		services[serviceName(i)] = lodestar.Service{Feed: feed}
	}
	tr, err := lodestar.NewTransport(lodestar.Options{Base: base, Services: services})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		tr.Close()
		closeIdle(base)
	})
	for name := range services {
		waitFor(t, "endpoints of "+name, func() bool { return len(tr.Engine(name).Eligible()) == 1 })
	}
	ls.rt, ls.ls = tr, tr
	return []side{ps, ls}
}

func closeIdle(rt http.RoundTripper) {
	if ci, ok := rt.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

// forBoth runs f as a subtest on each side.
func forBoth(t *testing.T, ss []side, f func(t *testing.T, s side)) {
	t.Helper()
	for _, s := range ss {
		t.Run(s.name, func(t *testing.T) { f(t, s) })
	}
}

// protoHandler answers with the protocol it was served over.
var protoHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	alpn := ""
	if r.TLS != nil {
		alpn = r.TLS.NegotiatedProtocol
	}
	fmt.Fprintf(w, "%s alpn=%q", r.Proto, alpn)
})

// negotiated is what one exchange shows of the protocol it used.
type negotiated struct {
	Proto  string // resp.Proto
	TLS    bool   // resp.TLS != nil
	ALPN   string // resp.TLS.NegotiatedProtocol
	Server string // what the server says it was served over
}

func exchange(t *testing.T, rt http.RoundTripper, u string) (negotiated, error) {
	t.Helper()
	resp, err := (&http.Client{Transport: rt}).Get(u + "/")
	if err != nil {
		return negotiated{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return negotiated{}, err
	}
	n := negotiated{Proto: resp.Proto, TLS: resp.TLS != nil, Server: string(body)}
	if resp.TLS != nil {
		n.ALPN = resp.TLS.NegotiatedProtocol
	}
	return n, nil
}

// TestCompatProtocols: for every kind of base, lodestar negotiates the
// protocol the base negotiates on its own (issue 16: an &http.Transport{} base
// offered h2 and then spoke HTTP/1.1 to an HTTP/2 server).
func TestCompatProtocols(t *testing.T) {
	requireTrust(t)
	roots := x509.NewCertPool()
	leaf, _ := x509.ParseCertificate(compatCert.Certificate[0])
	roots.AddCert(leaf)
	tlsDialer := func(protos ...string) func(ctx context.Context, network, addr string) (net.Conn, error) {
		return func(ctx context.Context, network, addr string) (net.Conn, error) {
			d := &tls.Dialer{Config: &tls.Config{RootCAs: roots, ServerName: "example.com", NextProtos: protos}}
			return d.DialContext(ctx, network, addr)
		}
	}
	protocols := func(h1, h2, h2c bool) *http.Protocols {
		var p http.Protocols
		p.SetHTTP1(h1)
		p.SetHTTP2(h2)
		p.SetUnencryptedHTTP2(h2c)
		return &p
	}
	var dialer net.Dialer

	for _, tc := range []struct {
		name   string
		server string
		base   func() http.RoundTripper // nil: lodestar's default base
		want   string                   // resp.Proto both sides must show
	}{
		{"nil base", kindTLS2, nil, "HTTP/2.0"},
		{"zero Transport", kindTLS2, func() http.RoundTripper { return &http.Transport{} }, "HTTP/2.0"},
		{"MaxIdleConnsPerHost", kindTLS2, func() http.RoundTripper { return &http.Transport{MaxIdleConnsPerHost: 100} }, "HTTP/2.0"},
		{"zero Transport, http/1.1 server", kindTLS1, func() http.RoundTripper { return &http.Transport{} }, "HTTP/1.1"},
		{"TLSClientConfig", kindTLS2, func() http.RoundTripper {
			return &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
		}, "HTTP/1.1"},
		{"TLSClientConfig+ForceAttemptHTTP2", kindTLS2, func() http.RoundTripper {
			return &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true}
		}, "HTTP/2.0"},
		{"DialContext", kindTLS2, func() http.RoundTripper { return &http.Transport{DialContext: dialer.DialContext} }, "HTTP/1.1"},
		{"DialContext+ForceAttemptHTTP2", kindTLS2, func() http.RoundTripper {
			return &http.Transport{DialContext: dialer.DialContext, ForceAttemptHTTP2: true}
		}, "HTTP/2.0"},
		{"Dial", kindTLS2, func() http.RoundTripper { return &http.Transport{Dial: net.Dial} }, "HTTP/1.1"},
		{"DialTLSContext", kindTLS2, func() http.RoundTripper {
			return &http.Transport{DialTLSContext: tlsDialer("http/1.1")}
		}, "HTTP/1.1"},
		{"DialTLSContext+ForceAttemptHTTP2", kindTLS2, func() http.RoundTripper {
			return &http.Transport{DialTLSContext: tlsDialer("h2", "http/1.1"), ForceAttemptHTTP2: true}
		}, "HTTP/2.0"},
		{"Protocols HTTP1", kindTLS2, func() http.RoundTripper {
			return &http.Transport{Protocols: protocols(true, false, false)}
		}, "HTTP/1.1"},
		{"Protocols HTTP1+HTTP2 with TLSClientConfig", kindTLS2, func() http.RoundTripper {
			return &http.Transport{Protocols: protocols(true, true, false), TLSClientConfig: &tls.Config{RootCAs: roots}}
		}, "HTTP/2.0"},
		{"Protocols HTTP2 only", kindTLS2, func() http.RoundTripper {
			return &http.Transport{Protocols: protocols(false, true, false)}
		}, "HTTP/2.0"},
		{"TLSNextProto empty (HTTP/2 disabled)", kindTLS2, func() http.RoundTripper {
			return &http.Transport{TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}
		}, "HTTP/1.1"},
		{"x/net http2.ConfigureTransports", kindTLS2, func() http.RoundTripper {
			t1 := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
			if _, err := http2.ConfigureTransports(t1); err != nil {
				panic(err)
			}
			return t1
		}, "HTTP/2.0"},
		{"x/net http2.Transport (not an *http.Transport)", kindTLS2, func() http.RoundTripper {
			return &http2.Transport{}
		}, "HTTP/2.0"},
		{"nil base, plain http", kindH1, nil, "HTTP/1.1"},
		{"zero Transport, h2c server", kindH2C, func() http.RoundTripper { return &http.Transport{} }, "HTTP/1.1"},
		{"Protocols UnencryptedHTTP2 (h2c)", kindH2C, func() http.RoundTripper {
			return &http.Transport{Protocols: protocols(false, false, true)}
		}, "HTTP/2.0"},
		{"Protocols HTTP1+UnencryptedHTTP2", kindH2C, func() http.RoundTripper {
			return &http.Transport{Protocols: protocols(true, false, true)}
		}, "HTTP/1.1"},
		{"x/net http2.Transport AllowHTTP (h2c)", kindH2C, func() http.RoundTripper {
			return &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
				return dialer.DialContext(ctx, network, addr)
			}}
		}, "HTTP/2.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newCompatServer(t, tc.server, protoHandler)
			var got []negotiated
			for _, s := range sides(t, tc.base, srv) {
				for i := range 2 { // a new connection, then a reused one
					n, err := exchange(t, s.rt, s.urls[0])
					if err != nil {
						t.Fatalf("%s, request %d: %v", s.name, i, err)
					}
					if n.Proto != tc.want {
						t.Errorf("%s, request %d: resp.Proto %s, want %s (%+v)", s.name, i, n.Proto, tc.want, n)
					}
					got = append(got, n)
				}
			}
			for i := range got {
				if got[i] != got[0] {
					t.Errorf("exchange %d differs: %+v, plain first exchange: %+v", i, got[i], got[0])
				}
			}
		})
	}
}

// TestCompatHTTP2ConnectionReuse: on HTTP/2, a warm endpoint serves 100
// concurrent requests over its one connection.
func TestCompatHTTP2ConnectionReuse(t *testing.T) {
	requireTrust(t)
	var release atomic.Pointer[chan struct{}]
	entered := make(chan struct{}, 200)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ch := release.Load(); ch != nil {
			entered <- struct{}{}
			<-*ch
		}
		io.WriteString(w, r.Proto)
	})
	a, b := newCompatServer(t, kindTLS2, h), newCompatServer(t, kindTLS2, h)
	newBase := func() http.RoundTripper { return &http.Transport{MaxIdleConnsPerHost: 100} }

	// The plain side sends to both servers, lodestar to one service of both.
	plain := newBase()
	defer closeIdle(plain)
	feed, _ := resolver.NewStaticAddrs(a.addr(), b.addr())
	ls := newTransport(t, feed, balancer.Config{}, func(o *lodestar.Options) { o.Base = newBase() })
	for _, s := range []struct {
		name string
		rt   http.RoundTripper
		urls []string
	}{
		{"plain", plain, []string{a.URL, b.URL}},
		{"lodestar", ls, []string{"https://svc", "https://svc"}},
	} {
		t.Run(s.name, func(t *testing.T) {
			a0, _ := a.counts()
			b0, _ := b.counts()
			c := &http.Client{Transport: s.rt}
			for i := range 2 { // warm: one connection to each server
				resp, err := c.Get(s.urls[i%2] + "/")
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.ProtoMajor != 2 {
					t.Fatalf("warm-up used %s, want HTTP/2", resp.Proto)
				}
			}
			ch := make(chan struct{})
			release.Store(&ch)
			var wg sync.WaitGroup
			errs := make(chan error, 100)
			for i := range 100 {
				wg.Go(func() {
					resp, err := c.Get(s.urls[i%2] + "/")
					if err != nil {
						errs <- err
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				})
			}
			for range 100 { // all 100 are in the handlers at once
				<-entered
			}
			release.Store(nil)
			close(ch)
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			a1, _ := a.counts()
			b1, _ := b.counts()
			if a1-a0 != 1 || b1-b0 != 1 {
				t.Fatalf("connections opened: %d to one server, %d to the other; want 1 each", a1-a0, b1-b0)
			}
		})
	}
}

// proxyFor returns a front server whose httputil.ReverseProxy sends every
// request to target through rt.
func proxyFor(t *testing.T, rt http.RoundTripper, target string) *httptest.Server {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &httputil.ReverseProxy{
		Rewrite:       func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport:     rt,
		FlushInterval: -1,
		ErrorLog:      log.New(io.Discard, "", 0), // canceled requests are expected
	}
	front := httptest.NewServer(p)
	t.Cleanup(front.Close)
	return front
}

// patternReader yields n bytes of a fixed pattern; after the first block it
// waits for gate (if set) before yielding the rest.
type patternReader struct {
	n, off int64
	block  int64
	gate   <-chan struct{}
	fail   func()
}

func (r *patternReader) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	if r.off == r.block && r.gate != nil {
		select {
		case <-r.gate:
		case <-time.After(30 * time.Second):
			r.fail()
			return 0, errors.New("the other end never saw the first block")
		}
		r.gate = nil
	}
	limit := r.n - r.off
	if r.off < r.block {
		limit = r.block - r.off
	}
	if int64(len(p)) > limit {
		p = p[:limit]
	}
	for i := range p {
		p[i] = byte((r.off + int64(i)) % 251)
	}
	r.off += int64(len(p))
	return len(p), nil
}

func patternSum(n int64) string {
	h := sha256.New()
	io.Copy(h, &patternReader{n: n})
	return fmt.Sprintf("%x", h.Sum(nil))
}

// TestCompatReverseProxyStreaming: 50 MB up and 50 MB down through a
// ReverseProxy, streamed: the far end sees the first megabyte before the near
// end has produced the rest.
func TestCompatReverseProxyStreaming(t *testing.T) {
	requireTrust(t)
	const size, block = 50 << 20, 1 << 20
	sum := patternSum(size)
	for _, kind := range []string{kindH1, kindTLS2} {
		t.Run(kind, func(t *testing.T) {
			var upGate, downGate atomic.Pointer[chan struct{}]
			backend := newCompatServer(t, kind, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				switch r.URL.Path {
				case "/up": // read the upload, say what arrived
					h := sha256.New()
					n, err := io.CopyN(h, r.Body, block)
					if err == nil {
						close(*upGate.Load())
						var m int64
						m, err = io.Copy(h, r.Body)
						n += m
					}
					if err != nil {
						http.Error(w, err.Error(), 500)
						return
					}
					fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
				case "/down": // the first megabyte, then the rest once the client has it
					w.Header().Set("Content-Type", "application/octet-stream")
					pr := &patternReader{n: size}
					io.CopyN(w, pr, block)
					w.(http.Flusher).Flush()
					select {
					case <-*downGate.Load():
					case <-r.Context().Done():
						return
					}
					io.Copy(w, pr)
				}
			}))
			forBoth(t, sides(t, func() http.RoundTripper { return &http.Transport{} }, backend), func(t *testing.T, s side) {
				front := proxyFor(t, s.rt, s.urls[0])
				client := front.Client()

				up := make(chan struct{})
				upGate.Store(&up)
				body := &patternReader{n: size, block: block, gate: up, fail: func() { t.Error("upload: the backend did not get the first MB before the rest was sent") }}
				resp, err := client.Post(front.URL+"/up", "application/octet-stream", body)
				if err != nil {
					t.Fatal(err)
				}
				got, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if want := fmt.Sprintf("%d %s", size, sum); string(got) != want {
					t.Fatalf("upload: backend got %q, want %q", got, want)
				}

				down := make(chan struct{})
				downGate.Store(&down)
				resp, err = client.Get(front.URL + "/down")
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				h := sha256.New()
				if _, err := io.CopyN(h, resp.Body, block); err != nil {
					t.Fatalf("download: first MB: %v", err)
				}
				close(down) // the backend writes the rest only now
				n, err := io.Copy(h, resp.Body)
				if err != nil || n+block != size || fmt.Sprintf("%x", h.Sum(nil)) != sum {
					t.Fatalf("download: %d bytes, err %v, checksum ok=%v", n+block, err, fmt.Sprintf("%x", h.Sum(nil)) == sum)
				}
			})
		})
	}
}

// TestCompatReverseProxySSE: server-sent events arrive one by one through a
// ReverseProxy with FlushInterval -1: the backend sends event i+1 only after the
// client has received event i.
func TestCompatReverseProxySSE(t *testing.T) {
	requireTrust(t)
	for _, kind := range []string{kindH1, kindTLS2} {
		t.Run(kind, func(t *testing.T) {
			var acks atomic.Pointer[chan int]
			backend := newCompatServer(t, kind, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				ack := *acks.Load()
				for i := range 5 {
					fmt.Fprintf(w, "data: event %d\n\n", i)
					w.(http.Flusher).Flush()
					select {
					case got := <-ack:
						if got != i {
							return
						}
					case <-r.Context().Done():
						return
					}
				}
			}))
			forBoth(t, sides(t, func() http.RoundTripper { return &http.Transport{} }, backend), func(t *testing.T, s side) {
				front := proxyFor(t, s.rt, s.urls[0])
				ack := make(chan int, 1)
				acks.Store(&ack)
				resp, err := front.Client().Get(front.URL + "/events")
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				br := bufio.NewReader(resp.Body)
				for i := range 5 {
					line, err := br.ReadString('\n')
					if err != nil || line != fmt.Sprintf("data: event %d\n", i) {
						t.Fatalf("event %d: %q, %v", i, line, err)
					}
					if blank, _ := br.ReadString('\n'); blank != "\n" {
						t.Fatalf("event %d: no blank line after it: %q", i, blank)
					}
					ack <- i
				}
				if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
					t.Fatalf("after the events: %q, %v", rest, err)
				}
			})
		})
	}
}

// TestCompatReverseProxyTrailers: declared and undeclared trailers reach the
// client through a ReverseProxy.
func TestCompatReverseProxyTrailers(t *testing.T) {
	requireTrust(t)
	for _, kind := range []string{kindH1, kindTLS2} {
		t.Run(kind, func(t *testing.T) {
			backend := newCompatServer(t, kind, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Trailer", "X-Checksum")
				w.WriteHeader(200)
				io.WriteString(w, "body")
				w.(http.Flusher).Flush()
				w.Header().Set("X-Checksum", "c0ffee")
				w.Header().Set(http.TrailerPrefix+"X-Late", "late")
			}))
			forBoth(t, sides(t, func() http.RoundTripper { return &http.Transport{} }, backend), func(t *testing.T, s side) {
				front := proxyFor(t, s.rt, s.urls[0])
				resp, err := front.Client().Get(front.URL + "/")
				if err != nil {
					t.Fatal(err)
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || string(body) != "body" {
					t.Fatalf("body %q, %v", body, err)
				}
				if got := resp.Trailer.Get("X-Checksum"); got != "c0ffee" {
					t.Errorf("trailer X-Checksum = %q (trailers %v)", got, resp.Trailer)
				}
				if got := resp.Trailer.Get("X-Late"); got != "late" {
					t.Errorf("undeclared trailer X-Late = %q (trailers %v)", got, resp.Trailer)
				}
			})
		})
	}
}

// upgradeEcho upgrades the connection (101 Switching Protocols, as a websocket
// server does), echoes what it reads, and after the client half-closes says
// "bye" and closes. done, if set, is closed when the handler ends.
func upgradeEcho(done func()) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			io.WriteString(w, "plain")
			return
		}
		if done != nil {
			defer done()
		}
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "websocket")
		w.WriteHeader(http.StatusSwitchingProtocols)
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		buf := make([]byte, 4096)
		for {
			n, err := brw.Read(buf)
			if n > 0 {
				if _, werr := conn.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				break
			}
		}
		io.WriteString(conn, "bye")
	}
}

// upgrade sends an upgrade request to u through c and returns the upgraded
// connection.
func upgrade(t *testing.T, c *http.Client, u string) (*http.Response, io.ReadWriteCloser) {
	t.Helper()
	req, _ := http.NewRequest("GET", u, nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		resp.Body.Close()
		t.Fatalf("status %s, want 101", resp.Status)
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		t.Fatalf("101 body is a %T, not an io.ReadWriteCloser", resp.Body)
	}
	return resp, rwc
}

// echo writes msg to conn and reads it back.
func echo(t *testing.T, conn io.ReadWriter, msg string) {
	t.Helper()
	if _, err := io.WriteString(conn, msg); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo of %q: %q, %v", msg, buf, err)
	}
}

// TestCompatReverseProxyUpgrade: a websocket upgrade through a ReverseProxy
// echoes, and the client's half-close reaches the backend (CloseWrite passes
// through the upgraded body) which can still answer.
func TestCompatReverseProxyUpgrade(t *testing.T) {
	backend := newCompatServer(t, kindH1, upgradeEcho(nil))
	forBoth(t, sides(t, func() http.RoundTripper { return &http.Transport{} }, backend), func(t *testing.T, s side) {
		front := proxyFor(t, s.rt, s.urls[0])
		resp, conn := upgrade(t, front.Client(), front.URL+"/ws")
		defer conn.Close()
		if resp.Header.Get("Upgrade") != "websocket" {
			t.Errorf("Upgrade header %q", resp.Header.Get("Upgrade"))
		}
		echo(t, conn, "hello")
		echo(t, conn, "again")
		if err := conn.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		rest, err := io.ReadAll(conn)
		if err != nil || string(rest) != "bye" {
			t.Fatalf("after half-close: %q, %v; want the backend's bye", rest, err)
		}
	})
}

// TestCompatUpgradeDirect: the same upgrade without a proxy: the 101 body is
// an io.ReadWriteCloser with CloseWrite.
func TestCompatUpgradeDirect(t *testing.T) {
	backend := newCompatServer(t, kindH1, upgradeEcho(nil))
	forBoth(t, sides(t, func() http.RoundTripper { return &http.Transport{} }, backend), func(t *testing.T, s side) {
		_, conn := upgrade(t, &http.Client{Transport: s.rt}, s.urls[0]+"/ws")
		defer conn.Close()
		echo(t, conn, "hello")
		cw, ok := conn.(interface{ CloseWrite() error })
		if !ok {
			t.Fatalf("101 body %T has no CloseWrite", conn)
		}
		if err := cw.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if rest, err := io.ReadAll(conn); err != nil || string(rest) != "bye" {
			t.Fatalf("after half-close: %q, %v", rest, err)
		}
	})
}

// countingReader counts the Read calls on a request body.
type countingReader struct {
	r     io.Reader
	reads atomic.Int32
}

func (c *countingReader) Read(p []byte) (int, error) {
	c.reads.Add(1)
	return c.r.Read(p)
}

// TestCompatReverseProxyExpectContinue: Expect: 100-continue through a
// ReverseProxy: the body is sent after the backend's 100, and never when the
// backend answers 417 first.
func TestCompatReverseProxyExpectContinue(t *testing.T) {
	requireTrust(t)
	for _, kind := range []string{kindH1, kindTLS2} {
		t.Run(kind, func(t *testing.T) {
			backend := newCompatServer(t, kind, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/refuse" {
					w.WriteHeader(http.StatusExpectationFailed)
					return
				}
				b, _ := io.ReadAll(r.Body)
				fmt.Fprintf(w, "got %d", len(b))
			}))
			newBase := func() http.RoundTripper { return &http.Transport{ExpectContinueTimeout: time.Minute} }
			forBoth(t, sides(t, newBase, backend), func(t *testing.T, s side) {
				front := proxyFor(t, s.rt, s.urls[0])
				client := &http.Client{Transport: &http.Transport{ExpectContinueTimeout: time.Minute}}
				defer client.CloseIdleConnections()
				for _, path := range []string{"/accept", "/refuse"} {
					body := &countingReader{r: strings.NewReader(strings.Repeat("x", 1000))}
					var got100 atomic.Bool
					ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{Got100Continue: func() { got100.Store(true) }})
					req, _ := http.NewRequestWithContext(ctx, "POST", front.URL+path, body)
					req.ContentLength = 1000
					req.Header.Set("Expect", "100-continue")
					resp, err := client.Do(req)
					if err != nil {
						t.Fatalf("%s: %v", path, err)
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					switch path {
					case "/accept":
						if resp.StatusCode != 200 || string(b) != "got 1000" || !got100.Load() {
							t.Errorf("%s: %s %q, 100 continue %v; want 200 \"got 1000\" after a 100", path, resp.Status, b, got100.Load())
						}
					case "/refuse":
						if resp.StatusCode != http.StatusExpectationFailed || got100.Load() || body.reads.Load() != 0 {
							t.Errorf("%s: %s, 100 continue %v, body reads %d; want 417 and the body never read", path, resp.Status, got100.Load(), body.reads.Load())
						}
					}
				}
			})
		})
	}
}

// TestCompatReverseProxyClientDisconnect: a client that gives up cancels the
// backend's request through the ReverseProxy; lodestar counts it Canceled and
// no longer in flight.
func TestCompatReverseProxyClientDisconnect(t *testing.T) {
	requireTrust(t)
	for _, kind := range []string{kindH1, kindTLS2} {
		t.Run(kind, func(t *testing.T) {
			entered := make(chan struct{}, 1)
			canceled := make(chan struct{}, 1)
			backend := newCompatServer(t, kind, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				entered <- struct{}{}
				<-r.Context().Done()
				canceled <- struct{}{}
			}))
			forBoth(t, sides(t, func() http.RoundTripper { return &http.Transport{} }, backend), func(t *testing.T, s side) {
				front := proxyFor(t, s.rt, s.urls[0])
				ctx, cancel := context.WithCancel(context.Background())
				req, _ := http.NewRequestWithContext(ctx, "GET", front.URL+"/slow", nil)
				errc := make(chan error, 1)
				go func() {
					resp, err := front.Client().Do(req)
					if err == nil {
						resp.Body.Close()
					}
					errc <- err
				}()
				<-entered
				cancel()
				if err := <-errc; !errors.Is(err, context.Canceled) {
					t.Errorf("client: err = %v, want context.Canceled", err)
				}
				select {
				case <-canceled:
				case <-time.After(10 * time.Second):
					t.Fatal("the backend's request was not canceled")
				}
				if ep := s.endpoint(0, backend); ep != nil {
					waitFor(t, "the canceled request to be reported", func() bool {
						return ep.InFlight() == 0 && ep.Outcomes(outcome.Canceled) == 1
					})
				}
			})
		})
	}
}

// TestCompatCookieJar: a cookie set by a response is sent with the next
// request to the same host.
func TestCompatCookieJar(t *testing.T) {
	backend := newCompatServer(t, kindH1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/set" {
			http.SetCookie(w, &http.Cookie{Name: "session", Value: "s3cr3t", Path: "/"})
			return
		}
		c, err := r.Cookie("session")
		if err != nil {
			io.WriteString(w, "none")
			return
		}
		io.WriteString(w, c.Value)
	}))
	forBoth(t, sides(t, func() http.RoundTripper { return &http.Transport{} }, backend), func(t *testing.T, s side) {
		jar, _ := cookiejar.New(nil)
		c := &http.Client{Transport: s.rt, Jar: jar}
		for _, step := range []struct{ path, want string }{{"/get", "none"}, {"/set", ""}, {"/get", "s3cr3t"}} {
			resp, err := c.Get(s.urls[0] + step.path)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != step.want {
				t.Errorf("%s: %q, want %q", step.path, b, step.want)
			}
		}
	})
}

// TestCompatRedirects: http.Client follows redirects within a service and to
// another service.
func TestCompatRedirects(t *testing.T) {
	target := newCompatServer(t, kindH1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "target %s", r.URL.Path)
	}))
	origin := newCompatServer(t, kindH1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/within":
			http.Redirect(w, r, "/here", http.StatusFound)
		case "/across":
			http.Redirect(w, r, r.URL.Query().Get("to")+"/there", http.StatusTemporaryRedirect)
		default:
			fmt.Fprintf(w, "origin %s", r.URL.Path)
		}
	}))
	forBoth(t, sides(t, func() http.RoundTripper { return &http.Transport{} }, origin, target), func(t *testing.T, s side) {
		c := &http.Client{Transport: s.rt}
		for _, tc := range []struct{ path, want, wantURL string }{
			{"/within", "origin /here", s.urls[0] + "/here"},
			{"/across?to=" + url.QueryEscape(s.urls[1]), "target /there", s.urls[1] + "/there"},
		} {
			resp, err := c.Get(s.urls[0] + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != tc.want || resp.Request.URL.String() != tc.wantURL || resp.Request.Response == nil {
				t.Errorf("%s: %q from %s; want %q from %s after a redirect", tc.path, b, resp.Request.URL, tc.want, tc.wantURL)
			}
		}
	})
}

// TestCompatClientTimeout: http.Client.Timeout ends a request that waits for
// headers, and one whose body stalls, with an error os.IsTimeout reports.
func TestCompatClientTimeout(t *testing.T) {
	backend := newCompatServer(t, kindH1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/body" {
			io.WriteString(w, "partial")
			w.(http.Flusher).Flush()
		}
		<-r.Context().Done()
	}))
	forBoth(t, sides(t, func() http.RoundTripper { return &http.Transport{} }, backend), func(t *testing.T, s side) {
		c := &http.Client{Transport: s.rt, Timeout: 200 * time.Millisecond}
		_, err := c.Get(s.urls[0] + "/headers")
		if err == nil || !os.IsTimeout(err) {
			t.Errorf("waiting for headers: err = %v, want a timeout", err)
		}
		resp, err := c.Get(s.urls[0] + "/body")
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil || !os.IsTimeout(err) {
			t.Errorf("reading a stalled body: err = %v, want a timeout", err)
		}
		if ep := s.endpoint(0, backend); ep != nil {
			waitFor(t, "in flight back to 0", func() bool { return ep.InFlight() == 0 })
		}
	})
}

// TestCompatRequestClose: req.Close asks the server to close the connection,
// and the connection is not reused.
func TestCompatRequestClose(t *testing.T) {
	var sawClose atomic.Int32
	backend := newCompatServer(t, kindH1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Close {
			sawClose.Add(1)
		}
	}))
	forBoth(t, sides(t, func() http.RoundTripper { return &http.Transport{} }, backend), func(t *testing.T, s side) {
		sawClose.Store(0)
		opened0, _ := backend.counts()
		c := &http.Client{Transport: s.rt}
		for range 2 {
			req, _ := http.NewRequest("GET", s.urls[0]+"/", nil)
			req.Close = true
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		if n := sawClose.Load(); n != 2 {
			t.Errorf("server saw Connection: close on %d of 2 requests", n)
		}
		backend.waitConns(t, "both connections to close", func(opened, open int) bool { return opened-opened0 == 2 && open == 0 })
	})
}

// TestCompatClientTrace: httptrace.ClientTrace hooks fire as with the plain
// transport, with the endpoint's address, for a new and a reused connection.
func TestCompatClientTrace(t *testing.T) {
	requireTrust(t)
	for _, kind := range []string{kindH1, kindTLS2} {
		t.Run(kind, func(t *testing.T) {
			backend := newCompatServer(t, kind, protoHandler)
			var traces [][]string
			ss := sides(t, func() http.RoundTripper { return &http.Transport{} }, backend)
			forBoth(t, ss, func(t *testing.T, s side) {
				var mu sync.Mutex
				var events []string
				add := func(format string, args ...any) {
					mu.Lock()
					events = append(events, fmt.Sprintf(format, args...))
					mu.Unlock()
				}
				trace := &httptrace.ClientTrace{
					GetConn:              func(hostPort string) { add("GetConn %s", hostPort) },
					GotConn:              func(i httptrace.GotConnInfo) { add("GotConn reused=%v", i.Reused) },
					DNSStart:             func(httptrace.DNSStartInfo) { add("DNSStart") },
					ConnectStart:         func(network, addr string) { add("ConnectStart %s %s", network, addr) },
					ConnectDone:          func(network, addr string, err error) { add("ConnectDone %s %s %v", network, addr, err) },
					TLSHandshakeStart:    func() { add("TLSHandshakeStart") },
					TLSHandshakeDone:     func(cs tls.ConnectionState, err error) { add("TLSHandshakeDone %q %v", cs.NegotiatedProtocol, err) },
					WroteHeaders:         func() { add("WroteHeaders") },
					WroteRequest:         func(i httptrace.WroteRequestInfo) { add("WroteRequest %v", i.Err) },
					GotFirstResponseByte: func() { add("GotFirstResponseByte") },
				}
				for range 2 {
					req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", s.urls[0]+"/", nil)
					resp, err := (&http.Client{Transport: s.rt}).Do(req)
					if err != nil {
						t.Fatal(err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					add("--")
				}
				mu.Lock()
				defer mu.Unlock()
				traces = append(traces, slices.Clone(events))
			})
			if len(traces) != 2 {
				return
			}
			if !slices.Contains(traces[0], "GetConn "+backend.addr()) || !slices.Contains(traces[0], "GotConn reused=true") {
				t.Errorf("plain trace lacks the expected events: %q", traces[0])
			}
			// Events of one request come from several goroutines: compare
			// each request's events as a set, requests in order.
			norm := func(evs []string) string {
				var out []string
				for part := range strings.SplitSeq(strings.Join(evs, "\n"), "--") {
					lines := strings.Fields(strings.ReplaceAll(part, " ", "_"))
					slices.Sort(lines)
					out = append(out, strings.Join(lines, " "))
				}
				return strings.Join(out, "\n--\n")
			}
			if p, l := norm(traces[0]), norm(traces[1]); p != l {
				t.Errorf("trace events differ:\nplain:\n%s\nlodestar:\n%s", p, l)
			}
		})
	}
}

// TestCompatRequestBodies: request bodies of known, unknown and zero
// length arrive as sent.
func TestCompatRequestBodies(t *testing.T) {
	backend := newCompatServer(t, kindH1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %d %q", r.Method, r.ContentLength, b)
	}))
	forBoth(t, sides(t, func() http.RoundTripper { return &http.Transport{} }, backend), func(t *testing.T, s side) {
		for _, tc := range []struct {
			body io.Reader
			want string
		}{
			{bytes.NewReader([]byte("abc")), `POST 3 "abc"`},
			{io.MultiReader(strings.NewReader("chunk")), `POST -1 "chunk"`},
			{nil, `POST 0 ""`},
		} {
			resp, err := (&http.Client{Transport: s.rt}).Post(s.urls[0]+"/", "text/plain", tc.body)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != tc.want {
				t.Errorf("got %s, want %s", b, tc.want)
			}
		}
	})
}
