// Package retry will hold lodestar's retry policy: exponential backoff with
// jitter (internal/backoff), per-try timeouts, retry budgets
// (golang.org/x/time/rate), retry on a different endpoint, Retry-After, hedging,
// and gRPC interceptors. Only idempotent requests, or requests that provably
// never reached the server, are retried.
//
// It is designed for but not yet built (see docs/ARCHITECTURE.md, "Designed for,
// not yet built").
package retry
