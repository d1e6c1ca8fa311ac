// Package retry is lodestar's retry policy, protocol-neutral: it decides,
// delays and budgets, and the front doors (the HTTP Transport and the gRPC
// interceptors) only adapt. It knows nothing of the balancer: it reads
// outcome classes (balancer/outcome) and is called by the doors.
//
//   - Config is the "retry" section of the balancer's configuration: max
//     attempts, per-try timeout, what is retried (outcome classes, HTTP
//     statuses, gRPC codes), backoff, budget and hedging. Validate checks
//     names and the rules between fields; each number's range is in its
//     `range` tag.
//
//   - Policy is a Config compiled for the request path: Retryable applies the
//     lists and the safety rule (a non-idempotent request is never sent
//     twice: after it may have reached the server, only idempotent requests
//     are retried; any request is retried when the failure proves it never
//     left), Delay the jittered exponential backoff (full, equal or
//     decorrelated jitter, from internal/backoff, the module's one
//     implementation) and the server's Retry-After or gRPC pushback, capped.
//
//   - Budget is one service's retry budget, Finagle's: retries within
//     ratio × recent requests + minPerSecond × window, so that retries cannot
//     multiply the load of a failing service.
//
//   - Idempotent, ParseRetryAfter and ParseRetryPushback read what HTTP and
//     gRPC say about a request and a response.
//
//   - LatencyTracker keeps a service's recent latencies (lock-free log-linear
//     histogram over a sliding window) and Hedger turns the policy's hedge
//     section into a delay, fixed or a cached percentile (none until the
//     window holds MinLatencySamples), for either door.
//
//   - WithIdempotent marks a request (HTTP) or call (gRPC) as safe to send
//     twice; Wait is the doors' backoff wait, bounded by the context.
//
// The front doors make the attempts. The HTTP door (the root package): the
// retry loop inside the Transport's RoundTrip, retry on another endpoint,
// body replay through GetBody, Retry-After pausing the endpoint in the
// balancer, and hedging (balancer's Engine.PickHedge picks the hedge's
// endpoint). The gRPC door (balancer/grpcpolicy's Retries): unary and
// client-stream interceptors applying a channel's retry section, retry and
// hedge on endpoints the call has not tried, grpc-retry-pushback-ms pausing
// the endpoint, and a budget and a Hedger per channel.
package retry
