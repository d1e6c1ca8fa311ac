package lodestar_test

import (
	"errors"
	"net/http"
	"testing"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/resolver"
)

// Errors that retrying cannot fix match ErrPermanent; the others do not.
func TestPermanentErrors(t *testing.T) {
	_, eps := backends(t, 1)
	empty, _ := resolver.NewStatic()
	tr, err := lodestar.NewTransport(lodestar.Options{Services: map[string]lodestar.Service{
		"users": {Target: "static:///" + eps[0].Address},
		"empty": {Feed: empty},
	}})
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Transport: tr}

	_, err = c.Get("http://nosuch/")
	var use *lodestar.UnknownServiceError
	if !errors.Is(err, lodestar.ErrPermanent) || !errors.As(err, &use) {
		t.Fatalf("unknown service: err = %v; want an *UnknownServiceError matching ErrPermanent", err)
	}
	_, err = c.Get("http://empty/")
	if !errors.Is(err, balancer.ErrNoEndpoints) || errors.Is(err, lodestar.ErrPermanent) {
		t.Fatalf("no endpoints: err = %v; want ErrNoEndpoints, not permanent (endpoints may come)", err)
	}
	if _, err := mustGet(c, "http://users/"); err != nil {
		t.Fatal(err)
	}
	tr.Close()
	_, err = c.Get("http://users/")
	if !errors.Is(err, lodestar.ErrPermanent) || !errors.Is(err, balancer.ErrClosed) {
		t.Fatalf("closed transport: err = %v; want ErrPermanent and balancer.ErrClosed", err)
	}
}
