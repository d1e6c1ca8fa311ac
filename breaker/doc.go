// Package breaker will hold lodestar's per-endpoint circuit breakers, built on
// github.com/sony/gobreaker/v2 and fed with the outcomes both front doors
// report (package balancer/outcome).
//
// It is designed for but not yet built (see docs/ARCHITECTURE.md, "Designed for,
// not yet built"). It knows nothing of the rest of lodestar.
package breaker
