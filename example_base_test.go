package lodestar_test

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/resolver"
)

// An HTTPS service over a custom base transport. The backends speak HTTP/2 and
// have certificates from a private CA, which the base trusts. lodestar
// negotiates what the base negotiates on its own: here HTTP/2, which
// ForceAttemptHTTP2 enables on a base with a TLSClientConfig (a base without
// one, like &http.Transport{}, enables it by default).
func ExampleOptions_customBase() {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s, Host %s", r.Proto, r.Host)
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())

	base := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: roots},
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 100,
	}
	feed, err := resolver.NewStaticAddrs(srv.Listener.Addr().String())
	if err != nil {
		fmt.Println(err)
		return
	}
	tr, err := lodestar.NewTransport(lodestar.Options{
		Base: base,
		Services: map[string]lodestar.Service{
			// The backends' certificates name example.com, not "users".
			"users": {Feed: feed, TLSServerName: "example.com"},
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer tr.Close()

	resp, err := (&http.Client{Transport: tr}).Get("https://users/v1/profile")
	if err != nil {
		fmt.Println(err)
		return
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println(resp.Proto, resp.TLS.NegotiatedProtocol)
	fmt.Println(string(body))
	// Output:
	// HTTP/2.0 h2
	// HTTP/2.0, Host users
}
