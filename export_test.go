package lodestar

import "unsafe"

// CallSize returns the size of the per-request allocation, for tests.
func CallSize() uintptr { return unsafe.Sizeof(call{}) }
