package lodestar

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"
	"weak"

	"github.com/lodestar-go/lodestar/balancer"
)

// connTracker remembers the connections a transport dialed, by dialed address,
// so that a drained endpoint's connections can be closed without touching the
// connections of other endpoints.
//
// A connection is tracked in one of two ways. Most are wrapped in a
// *trackedConn, which forgets itself when it is closed. A *tls.Conn returned
// by a DialTLS or DialTLSContext hook cannot be wrapped: net/http looks for
// that exact type to read the handshake's state (the negotiated protocol,
// resp.TLS). It is tracked by a weak pointer instead, forgotten once net/http
// has dropped it and the garbage collector has reclaimed it, and closed (if
// still alive) when its endpoint drains.
type connTracker struct {
	mu    sync.Mutex
	conns map[string]map[*trackedConn]struct{}
	tls   map[string]map[weak.Pointer[tls.Conn]]struct{}
}

type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// wrap returns dial with every connection it makes tracked. A *tls.Conn is
// returned as it is (see connTracker); any other connection is wrapped.
func (t *connTracker) wrap(dial dialFunc) dialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil || c == nil { // net/http reports a (nil, nil) hook itself
			return c, err
		}
		if tc, ok := c.(*tls.Conn); ok {
			t.addTLS(addr, tc)
			return tc, nil
		}
		tc := &trackedConn{Conn: c, t: t, addr: addr}
		t.mu.Lock()
		if t.conns == nil {
			t.conns = map[string]map[*trackedConn]struct{}{}
		}
		set := t.conns[addr]
		if set == nil {
			set = map[*trackedConn]struct{}{}
			t.conns[addr] = set
		}
		set[tc] = struct{}{}
		t.mu.Unlock()
		return tc, nil
	}
}

// tlsKey names a weakly tracked *tls.Conn for the cleanup that forgets it.
type tlsKey struct {
	addr string
	p    weak.Pointer[tls.Conn]
}

func (t *connTracker) addTLS(addr string, c *tls.Conn) {
	p := weak.Make(c)
	t.mu.Lock()
	if t.tls == nil {
		t.tls = map[string]map[weak.Pointer[tls.Conn]]struct{}{}
	}
	set := t.tls[addr]
	if set == nil {
		set = map[weak.Pointer[tls.Conn]]struct{}{}
		t.tls[addr] = set
	}
	set[p] = struct{}{}
	t.mu.Unlock()
	runtime.AddCleanup(c, t.forgetTLS, tlsKey{addr, p})
}

// forgetTLS drops a reclaimed *tls.Conn from the tracker.
func (t *connTracker) forgetTLS(k tlsKey) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if set := t.tls[k.addr]; set != nil {
		delete(set, k.p)
		if len(set) == 0 {
			delete(t.tls, k.addr)
		}
	}
}

// closeAddr closes every tracked connection to addr and returns how many were
// open (a weakly tracked *tls.Conn counts until it is reclaimed, closed or not).
func (t *connTracker) closeAddr(addr string) int {
	t.mu.Lock()
	set := t.conns[addr]
	delete(t.conns, addr)
	tset := t.tls[addr]
	delete(t.tls, addr)
	t.mu.Unlock()
	n := len(set)
	for c := range set {
		c.Conn.Close()
	}
	for p := range tset {
		if c := p.Value(); c != nil {
			c.Close()
			n++
		}
	}
	return n
}

// count returns how many tracked connections to addr there are (a weakly
// tracked *tls.Conn counts until it is reclaimed).
func (t *connTracker) count(addr string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns[addr]) + len(t.tls[addr])
}

// trackedConn is a dialed connection that leaves its tracker when closed. It
// passes CloseWrite and ReadFrom through, as net/http uses them when the
// connection has them (an upgraded body's CloseWrite, sendfile or splice for
// request bodies).
type trackedConn struct {
	net.Conn
	t    *connTracker
	addr string
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.t.mu.Lock()
		if set := c.t.conns[c.addr]; set != nil {
			delete(set, c)
			if len(set) == 0 {
				delete(c.t.conns, c.addr)
			}
		}
		c.t.mu.Unlock()
	})
	return c.Conn.Close()
}

// CloseWrite shuts down the writing side of the connection if it can.
func (c *trackedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("CloseWrite: %w", http.ErrNotSupported)
}

// ReadFrom lets io.Copy use the connection's own ReadFrom (sendfile, splice).
func (c *trackedConn) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(c.Conn, r)
}

// cloneForService clones bt for one service: it negotiates the protocols bt
// negotiates, dials through bt's hooks with net/http's precedence, tracks every
// connection it makes by endpoint address, and verifies the service's name.
func cloneForService(bt *http.Transport, name string, sc Service) (*http.Transport, *connTracker) {
	rt := bt.Clone() // runs bt's HTTP/2 set-up first (see pinProtocols)
	pinProtocols(bt, rt)

	tr := &connTracker{}
	// Plain connections (http, and https without a TLS hook): net/http uses
	// DialContext, else Dial, else a zero net.Dialer.
	var dial dialFunc
	switch {
	case rt.DialContext != nil:
		dial = rt.DialContext
	case rt.Dial != nil:
		d := rt.Dial
		dial = func(_ context.Context, network, addr string) (net.Conn, error) { return d(network, addr) }
	default:
		var d net.Dialer
		dial = d.DialContext
	}
	rt.DialContext, rt.Dial = tr.wrap(dial), nil
	// https with a TLS hook: net/http uses DialTLSContext, else DialTLS, and
	// then neither DialContext nor TLSClientConfig.
	switch {
	case rt.DialTLSContext != nil:
		rt.DialTLSContext = tr.wrap(rt.DialTLSContext)
	case rt.DialTLS != nil:
		d := rt.DialTLS
		rt.DialTLSContext = tr.wrap(func(_ context.Context, network, addr string) (net.Conn, error) { return d(network, addr) })
	}
	rt.DialTLS = nil

	sn := sc.TLSServerName
	if sn == "" {
		sn = sc.Host
	}
	if sn == "" {
		sn = name
	}
	if h, _, err := net.SplitHostPort(sn); err == nil {
		sn = h
	}
	if rt.TLSClientConfig == nil {
		rt.TLSClientConfig = &tls.Config{}
	}
	if rt.TLSClientConfig.ServerName == "" {
		rt.TLSClientConfig.ServerName = sn
	}
	return rt, tr
}

// pinProtocols makes the clone rt negotiate exactly the protocols its base bt
// negotiates.
//
// net/http decides a Transport's protocols once, at its first use or Clone
// (onceSetNextProtoDefaults). Unless Protocols or TLSNextProto is set, it
// enables HTTP/2 only when the Transport has no TLSClientConfig and no dial
// hook, or has ForceAttemptHTTP2; enabling it adds "h2" to TLSClientConfig's
// NextProtos and an "h2" entry to TLSNextProto. Clone copies NextProtos but
// not TLSNextProto when the latter was nil before that decision, so the clone
// decides again at its first use — and with the dial hook and TLSClientConfig
// cloneForService sets, it would decide "HTTP/1 only" while still offering h2
// in the TLS handshake: an HTTP/2 server accepts h2 and the clone speaks
// HTTP/1.1 to it.
//
// So, when the clone would decide on its own (no Protocols, no TLSNextProto),
// its Protocols are set to what bt decided: HTTP/1, plus HTTP/2 when bt's
// set-up enabled it. A Protocols or TLSNextProto the base was given (for
// example by golang.org/x/net/http2.ConfigureTransports, or an empty map to
// disable HTTP/2) is copied by Clone and decides for the clone as for bt.
func pinProtocols(bt, rt *http.Transport) {
	if rt.Protocols != nil || rt.TLSNextProto != nil {
		return
	}
	var p http.Protocols
	p.SetHTTP1(true)
	if _, ok := bt.TLSNextProto["h2"]; ok {
		p.SetHTTP2(true)
	}
	rt.Protocols = &p
}

// drained closes a drained endpoint's connections. It runs when the endpoint
// has no request in flight, so they are idle (an upgraded connection counts in
// flight until its caller closes it).
func (s *service) drained(ep *balancer.Endpoint) {
	if s.tracker != nil {
		s.tracker.closeAddr(ep.Address())
		return
	}
	if ci, ok := s.rt.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

// upgradedBody is the body of a 101 Switching Protocols response: the upgraded
// connection, which belongs to the caller. Unlike trackedBody it keeps the
// exchange in flight until the caller closes it (end of stream is no end of an
// upgraded connection), so that its endpoint stays draining, and its
// connection open, while it is in use. It is an io.ReadWriteCloser, as
// net/http's own 101 body is, and passes CloseWrite through.
type upgradedBody call

func (b *upgradedBody) Read(p []byte) (int, error) { return b.body.Read(p) }

func (b *upgradedBody) Write(p []byte) (int, error) { return b.body.(io.Writer).Write(p) }

// CloseWrite half-closes the upgraded connection if it can.
func (b *upgradedBody) CloseWrite() error {
	if cw, ok := b.body.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("CloseWrite: %w", http.ErrNotSupported)
}

func (b *upgradedBody) Close() error {
	err := b.body.Close()
	(*call)(b).finish(nil)
	return err
}
