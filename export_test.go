package lodestar

import "unsafe"

// CallSize returns the size of the per-request allocation, for tests.
func CallSize() uintptr { return unsafe.Sizeof(call{}) }

// HasService reports whether host names a service, through the lookup
// RoundTrip uses, for tests.
func (t *Transport) HasService(host string) bool { return t.lookup(host) != nil }
