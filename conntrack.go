package lodestar

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/lodestar-go/lodestar/balancer"
)

// connTracker remembers the connections a transport dialed, by dialed address,
// so that a drained endpoint's connections can be closed without touching the
// connections of other endpoints.
type connTracker struct {
	mu    sync.Mutex
	conns map[string]map[*trackedConn]struct{}
}

type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// wrap returns dial with every connection it makes tracked.
func (t *connTracker) wrap(dial dialFunc) dialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
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

// closeAddr closes every tracked connection to addr and returns how many.
func (t *connTracker) closeAddr(addr string) int {
	t.mu.Lock()
	set := t.conns[addr]
	delete(t.conns, addr)
	t.mu.Unlock()
	for c := range set {
		c.Conn.Close()
	}
	return len(set)
}

// count returns how many tracked connections to addr are open.
func (t *connTracker) count(addr string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns[addr])
}

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

// cloneForService clones bt for one service: its dialer tracks connections by
// endpoint and its TLS config verifies the service's name.
func cloneForService(bt *http.Transport, name string, sc Service) (*http.Transport, *connTracker) {
	rt := bt.Clone()
	tr := &connTracker{}
	dial := rt.DialContext
	if dial == nil {
		d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
		dial = d.DialContext
	}
	rt.DialContext = tr.wrap(dial)
	if rt.DialTLSContext != nil {
		rt.DialTLSContext = tr.wrap(rt.DialTLSContext)
	}
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

// drained closes a drained endpoint's idle connections.
func (s *service) drained(ep *balancer.Endpoint) {
	if s.tracker != nil {
		s.tracker.closeAddr(ep.Address())
		return
	}
	if ci, ok := s.rt.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}
