// Package breaker holds lodestar's per-endpoint circuit breakers, built on
// github.com/sony/gobreaker/v2 and fed with the outcomes both front doors
// report (package balancer/outcome).
//
// A Breaker trips (opens) on consecutive failures or on a failure ratio over a
// rolling window, stays open for a timeout, then lets a few probe requests
// through (half-open) and closes when they succeed. Config is the
// "circuitBreaker" section of the engine's configuration.
//
// The engine uses a breaker in three places:
//
//   - Done: Record(outcome class), for every outcome. It allocates nothing and
//     costs one gobreaker call per counted outcome (a mutex and the clock), or
//     an atomic load for a success when only the consecutive-failures rule is
//     on; see Breaker.
//   - OnStateChange (Options): the engine turns open into a condition that
//     keeps the endpoint out of picks, and lets it back in when the breaker
//     goes half-open (a timer makes that transition without traffic) or
//     closed. It is called outside every lock, exactly once per transition.
//   - Pick: only endpoints whose breaker is not closed need Allow, which is
//     lock-free and claims one of the half-open probe slots. Picks of
//     closed-breaker endpoints touch no breaker.
//
// Time is gobreaker's: it reads time.Now and offers no clock hook, so tests
// drive breakers inside a testing/synctest bubble. The package knows nothing
// of the rest of lodestar (it imports only balancer/outcome).
package breaker
