package lodestar

import (
	"time"
	"unsafe"

	"github.com/lodestar-go/lodestar/balancer"
)

// CallSize returns the size of the per-request allocation, for tests.
func CallSize() uintptr { return unsafe.Sizeof(call{}) }

// HasService reports whether host names a service, through the lookup
// RoundTrip uses, for tests.
func (t *Transport) HasService(host string) bool { return t.lookup(host) != nil }

// SetBackoffHook makes h run as each retry starts its backoff wait, until
// the returned function is called; for tests.
func SetBackoffHook(h func(d time.Duration)) (reset func()) {
	testHookBackoff.Store(&h)
	return func() { testHookBackoff.Store(nil) }
}

// SetHedgeHook makes h run as each hedge is sent (to ep, the request having
// tried the endpoints tried), until the returned function is called; for
// tests.
func SetHedgeHook(h func(tried []*balancer.Endpoint, ep *balancer.Endpoint)) (reset func()) {
	testHookHedge.Store(&h)
	return func() { testHookHedge.Store(nil) }
}
