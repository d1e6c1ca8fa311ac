package debugpage_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer/debugpage"
)

// Mount the debug page where the application likes (here under
// /debug/lodestar/ on a test server); it lists every lodestar balancer in the
// process. The JSON form is read here; a browser gets the HTML page.
func ExampleHandler() {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	defer backend.Close()
	tr, err := lodestar.NewTransport(lodestar.Options{
		Services: map[string]lodestar.Service{"users": {Target: "static:///" + backend.Listener.Addr().String()}},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer tr.Close()

	mux := http.NewServeMux()
	mux.Handle("/debug/lodestar/", http.StripPrefix("/debug/lodestar", debugpage.Handler()))
	admin := httptest.NewServer(mux)
	defer admin.Close()

	resp, err := http.Get(admin.URL + "/debug/lodestar/?format=json")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	var page debugpage.Page
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
		fmt.Println(err)
		return
	}
	for _, b := range page.Balancers {
		fmt.Printf("%s %s: %s, %d of %d endpoints eligible\n", b.Door, b.Service, b.Algorithm, b.Eligible, b.Discovered)
		for _, ep := range b.Endpoints {
			fmt.Println(ep.Address == backend.Listener.Addr().String(), ep.State)
		}
	}
	// Output:
	// http users: round_robin, 1 of 1 endpoints eligible
	// true eligible
}
