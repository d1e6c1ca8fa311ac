package lodestar_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
)

// An http.Client that calls the logical service "users", balanced by round robin
// over two backends.
func ExampleNewTransport() {
	var backends []string
	for _, name := range []string{"a", "b"} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Backend", name)
			fmt.Fprintf(w, "Host %s, path %s", r.Host, r.URL.Path)
		}))
		defer srv.Close()
		backends = append(backends, srv.Listener.Addr().String())
	}

	tr, err := lodestar.NewTransport(lodestar.Options{
		Services: map[string]lodestar.Service{
			"users": {
				Target: "static:///" + backends[0] + "," + backends[1],
				Config: balancer.Config{Algorithm: &balancer.RoundRobin{}},
			},
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer tr.Close()

	client := &http.Client{Transport: tr}
	perBackend := map[string]int{}
	for range 4 {
		resp, err := client.Get("http://users/v1/profile")
		if err != nil {
			fmt.Println(err)
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		perBackend[resp.Header.Get("Backend")]++
		fmt.Println(string(body))
	}
	fmt.Println("a:", perBackend["a"], "b:", perBackend["b"])
	// Output:
	// Host users, path /v1/profile
	// Host users, path /v1/profile
	// Host users, path /v1/profile
	// Host users, path /v1/profile
	// a: 2 b: 2
}
