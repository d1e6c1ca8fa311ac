package lodestar

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"
)

// TestTrackerTLSConns: a *tls.Conn from a TLS dial hook is returned as it is
// (net/http needs that type for the handshake state), still closed by
// closeAddr while alive, and forgotten once closed and reclaimed, so a
// long-lived endpoint's tracker does not grow with every connection it had.
func TestTrackerTLSConns(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer srv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	tr := &connTracker{}
	dial := tr.wrap(func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := &tls.Dialer{Config: &tls.Config{RootCAs: roots, ServerName: "example.com"}}
		return d.DialContext(ctx, network, addr)
	})
	addr := srv.Listener.Addr().String()
	for range 3 {
		c, err := dial(context.Background(), "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := c.(*tls.Conn); !ok {
			t.Fatalf("the hook's *tls.Conn came back as a %T", c)
		}
		c.Close()
	}
	live, err := dial(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if n := tr.count(addr); n < 1 || n > 4 {
		t.Fatalf("tracked %d connections, want the live one and up to 3 closed ones not yet reclaimed", n)
	}
	deadline := time.Now().Add(10 * time.Second)
	for tr.count(addr) != 1 { // no signal for a reclaimed object: poll
		if time.Now().After(deadline) {
			t.Fatalf("closed connections never forgotten: %d tracked, want 1", tr.count(addr))
		}
		runtime.GC()
		time.Sleep(time.Millisecond)
	}
	if n := tr.closeAddr(addr); n != 1 {
		t.Fatalf("closeAddr closed %d connections, want 1", n)
	}
	if _, err := live.Write([]byte("GET / HTTP/1.1\r\n\r\n")); err == nil {
		t.Fatal("the live connection still works after closeAddr")
	}
	if n := tr.count(addr); n != 0 {
		t.Fatalf("%d connections tracked after closeAddr", n)
	}
}
