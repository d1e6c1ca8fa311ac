package lodestar_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
)

// An http.Client that calls the logical service "users", balanced by round robin
// over two backends.
func ExampleNewTransport() {
	var backends []string
	for _, name := range []string{"a", "b"} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s served %s%s", name, r.Host, r.URL.Path)
		}))
		defer srv.Close()
		backends = append(backends, srv.Listener.Addr().String())
	}

	tr, err := lodestar.NewTransport(lodestar.Options{
		Services: map[string]lodestar.Service{
			"users": {
				Target: "static:///" + backends[0] + "," + backends[1],
				Config: balancer.Config{
					Algorithm: &balancer.RoundRobin{},
					// The feed delivers asynchronously: let the first
					// request wait for it rather than fail.
					WaitForEndpoints: time.Second,
				},
			},
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer tr.Close()

	client := &http.Client{Transport: tr}
	for range 3 {
		resp, err := client.Get("http://users/v1/profile")
		if err != nil {
			fmt.Println(err)
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Println(string(body[1:])) // the backend's name, a or b, depends on port order
	}
	// Output:
	// served users/v1/profile
	// served users/v1/profile
	// served users/v1/profile
}
