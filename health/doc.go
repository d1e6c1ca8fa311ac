// Package health will hold lodestar's active health checkers (HTTP, gRPC health
// v1, TCP) and the passive outlier detector (consecutive failures, gateway
// failures, success rate, failure percentage, latency).
//
// It is designed for but not yet built (see docs/ARCHITECTURE.md, "Designed for,
// not yet built"): checkers and the detector will mark endpoints through
// balancer.Engine.SetCondition with the Unhealthy and Ejected conditions and
// read outcomes in the classes of package balancer/outcome. It knows nothing of
// the algorithms.
package health
