// Package balancer is lodestar's engine and its picking algorithms, shared by
// both front doors (the HTTP Transport in the root package and the gRPC policy
// in balancer/grpcpolicy).
//
// An Engine holds one service's endpoints. A discovery feed (or the gRPC
// policy) pushes membership into it through Update — the Engine is a
// resolver.Sink — and conditions (not connected, unhealthy, ejected) through
// SetCondition. Each change builds an immutable snapshot of the eligible
// endpoints and a Picker for them, published through an atomic pointer. A
// request calls Pick, which takes no lock and allocates nothing, and reports
// its outcome with Done. A picker that implements Updater makes its successor
// from itself (the hashing algorithms keep their ring or table while only
// eligibility changes), and a storm of condition changes is paced to one
// rebuild a millisecond after a burst (see SetCondition). Config.Subset
// narrows a large set to a subset of it per client (rendezvous or
// deterministic subsetting).
//
// Algorithms are configured structs implementing Algorithm and registered by
// name with Register: round_robin, weighted_round_robin, random,
// weighted_random, least_request, peak_ewma, ring_hash, maglev and
// bounded_load are built in, and a user's own algorithm registered the same way
// works everywhere a built-in does, including gRPC service configs. Config,
// a Go struct that also reads from JSON, selects one and its options.
//
// Threading: Pick, Done and the Endpoint accessors are safe for concurrent use
// from any number of goroutines. Update, ReportError, SetCondition and Close
// serialize on the engine's mutex and may be called from any goroutine.
package balancer
