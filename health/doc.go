// Package health holds lodestar's active health checks (HTTP, gRPC health
// v1, TCP) and its passive outlier detection. The engine (package balancer)
// drives both and marks endpoints with its Unhealthy and Ejected conditions;
// this package knows nothing of the engine or the algorithms, and reads
// request outcomes in the classes of package balancer/outcome.
//
// # Active health checks
//
// HealthCheck (the "healthCheck" section) says how to check; a Checker runs
// the checks, one goroutine per endpoint, on the endpoint set the engine gives
// it with Checker.Update, and reports each endpoint that crosses the
// unhealthy or healthy threshold through CheckerOptions.OnChange. Close stops
// every goroutine and waits for them. GRPCCheck's doc says how the gRPC check
// relates to grpc's own healthCheckConfig.
//
// # Outlier detection
//
// Passive outlier detection is Envoy's (and gRFC A50's), configured by
// OutlierDetection (the "outlierDetection" section of the configuration),
// plus a latency detector. Each endpoint has a Stats; the engine's Done
// calls Stats.Record with the request's outcome class and latency, which
// updates a few atomics (no lock, no allocation) and reports when a run of
// consecutive failures, gateway failures (502, 503, 504, UNAVAILABLE) or
// local-origin failures (refused, reset, timed out) reaches its threshold,
// so that the ejection takes effect on the very next pick. The engine then
// checks Detector.Admit (at most maxEjectionPercent of the endpoints ejected,
// but one always may be) and records the ejection with Detector.Ejected.
//
// Every interval the engine's ticker goroutine calls Detector.Evaluate,
// which reads and resets each endpoint's interval counters, ends ejections
// whose time has passed, and runs the success-rate, failure-percentage and
// latency detectors (an endpoint whose latency at a quantile, read from a
// small log-scale histogram, exceeds a factor times the fleet's median). An
// ejection lasts baseEjectionTime times the endpoint's multiplier (times
// ejected, decaying by one per interval while it is not ejected), capped at
// maxEjectionTime. Outlier detection starts no goroutine and reads no clock:
// the engine passes the time in.
package health
