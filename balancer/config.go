package balancer

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/lodestar-go/lodestar/breaker"
	"github.com/lodestar-go/lodestar/health"
	"github.com/lodestar-go/lodestar/retry"
)

// Config is the engine's configuration. It means the same for the HTTP transport
// and for the gRPC policy, where it is the policy's loadBalancingConfig. The zero
// value is valid: round robin, failing fast when there is no endpoint.
//
// In JSON:
//
//	{
//	  "algorithm": "round_robin",            // or {"least_request": {"choiceCount": 3}}
//	  "affinity": {"header": "X-User-ID"},    // for the hashing algorithms
//	  "allowEmpty": false,
//	  "waitForEndpoints": "2s",
//	  "initialDiscoveryTimeout": "10s"
//	}
//
// The JSON is read exactly, in every section and in every algorithm's options,
// registered ones included:
//
//   - Field names are case-sensitive: {"choicecount": 3} is an unknown field
//     (the error says "did you mean "choiceCount"?"). Unknown and repeated
//     fields and anything after the configuration are errors.
//   - Omitted means the default; written means checked. A field left out (or
//     null) takes its default, but a value written out must be in the field's
//     range even when it is the Go zero value that would otherwise mean the
//     default: "choiceCount": 0 is an error ("choiceCount: 0 is out of range
//     [2, 100]"), not a request for the default of 2. The ranges are the
//     `range` tags of the option structs' fields, which Validate checks too
//     (see CheckRanges), so a range is stated once.
//   - Durations are strings such as "250ms" or "1m30s".
//
// Errors start with "lodestar config: " and name the field by its path, as in
// "lodestar config: algorithm least_request: slowStart.window: 2h0m0s is out
// of range [0, 1h]".
type Config struct {
	// Algorithm picks endpoints. nil means round robin. In JSON it is the
	// algorithm's name, or an object with one key, the name, holding its options.
	Algorithm Algorithm `json:"algorithm,omitempty"`
	// Affinity says where requests' affinity keys come from, for the hashing
	// algorithms (ring_hash, maglev, bounded_load). The zero value takes keys
	// only from the context (WithAffinityKey).
	Affinity Affinity `json:"affinity,omitzero"`
	// AllowEmpty lets an empty endpoint set from discovery replace a non-empty
	// one. By default an empty answer is taken for a discovery fault: it is
	// reported and the last non-empty set stays in force.
	AllowEmpty bool `json:"allowEmpty,omitempty"`
	// WaitForEndpoints makes a pick that finds no eligible endpoint wait up to
	// this long (and never past the request's deadline) for one to appear,
	// instead of failing at once. 0, the default, fails at once.
	WaitForEndpoints time.Duration `json:"waitForEndpoints,omitempty" range:"[0, ∞)"`
	// InitialDiscoveryTimeout bounds how long a pick waits for the feed's first
	// answer (a set of endpoints, or an error) when the engine has had none yet:
	// a fresh Transport's first requests wait for discovery instead of failing,
	// as a gRPC channel's first RPCs wait for its resolver. The request's own
	// deadline bounds the wait too. 0 means the default, 10s: long enough for a
	// DNS lookup that needs a retry (the stub resolver's 5s timeout) or a Consul
	// agent's first answer, short enough that a feed that never answers is
	// reported while someone is still watching. Valid when set: 1ms-10m.
	InitialDiscoveryTimeout time.Duration `json:"initialDiscoveryTimeout,omitempty" range:"[1ms, 10m]"`

	// MaxInFlightPerEndpoint caps the requests in flight on one endpoint
	// (Envoy's per-host max_requests): a pick skips an endpoint at its cap, and
	// when every eligible endpoint is at it the request fails at once with an
	// *OverloadedError (errors.Is(err, ErrOverloaded)): back pressure, never
	// a queue. 0, the default, means no cap.
	MaxInFlightPerEndpoint int `json:"maxInFlightPerEndpoint,omitempty" range:"[0, 1000000]"`
	// PanicThreshold is the share of endpoints, in percent, that must be
	// usable (not unhealthy, ejected or breaker-open) for picks to keep to the
	// usable ones (Envoy's healthy_panic_threshold). Below it the engine is in
	// panic: picks spread over every connected endpoint, usable or not, rather
	// than pile onto the few left, and it says so (a PanicStarted event, a log
	// line, Engine.Panicking). Endpoints that are not connected (gRPC) are
	// outside the count. nil means the default, 50; 0 turns panic off. Valid
	// 0-100.
	PanicThreshold *float64 `json:"panicThreshold,omitempty" range:"[0, 100]"`
	// HealthCheck turns on active health checks (HTTP, gRPC health v1 or TCP)
	// of every endpoint: one that fails UnhealthyThreshold checks in a row is
	// Unhealthy (not picked) until it passes HealthyThreshold. nil, the
	// default, is off. See health.HealthCheck for the fields and defaults.
	HealthCheck *health.HealthCheck `json:"healthCheck,omitempty"`
	// OutlierDetection turns on passive outlier ejection (Envoy's): endpoints
	// whose outcomes say they are failing or slow are Ejected for a while.
	// The consecutive-failure detectors act inline, on the very next pick;
	// success rate, failure percentage and latency run every interval. nil,
	// the default, runs only the default failure accrual (FailureAccrual).
	// See health.OutlierDetection.
	OutlierDetection *health.OutlierDetection `json:"outlierDetection,omitempty"`
	// FailureAccrual is the outlier detection that runs when OutlierDetection
	// is nil (Finagle's failure accrual, on by default as there): an
	// endpoint whose connections fail 5 times in a row (refused, reset or
	// TLS failure before any response; not timeouts, not HTTP 5xx or gRPC
	// status codes) is Ejected for 5s, longer on repeats, up to 30s, never
	// more than half the endpoints at once. nil (the default) or true: on;
	// false turns it off ({"failureAccrual": false}; in Go,
	// FailureAccrual: new(false)). An OutlierDetection section replaces it;
	// health.DefaultFailureAccrual is the section that does the same.
	FailureAccrual *bool `json:"failureAccrual,omitempty"`
	// CircuitBreaker gives every endpoint a circuit breaker (sony/gobreaker):
	// an open breaker keeps its endpoint out of picks (BreakerOpen), a
	// half-open one lets only its probes through. nil, the default, is off.
	// See breaker.Config.
	CircuitBreaker *breaker.Config `json:"circuitBreaker,omitempty"`
	// Retry turns on retries (the HTTP front door's; the gRPC door does not
	// apply it yet): a failed attempt is sent again, to another endpoint,
	// when the policy lists its outcome and it is safe (a non-idempotent
	// request is never sent twice), after a jittered backoff, within the
	// service's retry budget and the caller's deadline. nil, the default, is
	// off. See retry.Config.
	Retry *retry.Config `json:"retry,omitempty"`

	// Locality, Priority and Split route requests by where endpoints run,
	// by failover tier and by metadata subset (a canary); see LocalityConfig,
	// PriorityConfig and SplitRule. Tiers apply whenever endpoints carry
	// different priorities; zone preference whenever the caller's locality
	// is known (here or from LODESTAR_ZONE and LODESTAR_REGION). nil (the
	// default) and no environment: neither locality nor split.
	Locality *LocalityConfig `json:"locality,omitempty"`
	Priority *PriorityConfig `json:"priority,omitempty"`
	Split    []SplitRule     `json:"split,omitempty"`

	// Subset limits the client to a subset of the endpoints (rendezvous or
	// deterministic subsetting); see SubsetConfig. nil, the default, uses
	// every endpoint.
	Subset *SubsetConfig `json:"subset,omitempty"`
}

// DefaultPanicThreshold is PanicThreshold's default, in percent (Envoy's).
const DefaultPanicThreshold = 50.0

// DefaultInitialDiscoveryTimeout is InitialDiscoveryTimeout's default.
const DefaultInitialDiscoveryTimeout = 10 * time.Second

// configFields is Config without its JSON methods, for the strict codec.
type configFields Config

// ParseConfig decodes and validates a Config from JSON, exactly as Config's
// doc describes. Errors name the field.
func ParseConfig(js []byte) (Config, error) {
	var c Config
	if err := c.UnmarshalJSON(js); err != nil {
		return Config{}, err
	}
	return c, c.Validate()
}

// UnmarshalJSON decodes c from JSON, rejecting unknown fields (names match
// exactly, case included), repeated fields and explicitly written
// out-of-range values by name. It does not run the checks of Validate that
// are not ranges; ParseConfig does both.
func (c *Config) UnmarshalJSON(js []byte) error {
	var nc Config
	if err := decodeStrict(js, (*configFields)(&nc)); err != nil {
		return fmt.Errorf("lodestar config: %w", err)
	}
	for i := range nc.Split {
		if len(nc.Split[i].Match) == 0 {
			nc.Split[i].Match = nil // "match": {} is the same rule as no match
		}
	}
	*c = nc
	return nil
}

// MarshalJSON encodes c in the form UnmarshalJSON reads.
func (c Config) MarshalJSON() ([]byte, error) {
	js, err := encodeJSON((*configFields)(&c))
	if err != nil {
		return nil, fmt.Errorf("lodestar config: %w", err)
	}
	return js, nil
}

// Validate reports the first invalid field of c, by name.
func (c Config) Validate() error {
	if c.Algorithm != nil {
		if err := c.Algorithm.Validate(); err != nil {
			return fmt.Errorf("lodestar config: algorithm %s: %w", c.Algorithm.Name(), err)
		}
	}
	if err := c.Affinity.Validate(); err != nil {
		return fmt.Errorf("lodestar config: %w", err)
	}
	if err := CheckRanges(&c); err != nil {
		return fmt.Errorf("lodestar config: %w", err)
	}
	if c.HealthCheck != nil {
		if err := c.HealthCheck.Validate(); err != nil {
			return fmt.Errorf("lodestar config: healthCheck: %w", err)
		}
	}
	if c.OutlierDetection != nil {
		if err := c.OutlierDetection.Validate(); err != nil {
			return fmt.Errorf("lodestar config: outlierDetection: %w", err)
		}
	}
	if c.CircuitBreaker != nil {
		if err := c.CircuitBreaker.Validate(); err != nil {
			return fmt.Errorf("lodestar config: circuitBreaker: %w", err)
		}
	}
	if c.Retry != nil {
		if err := c.Retry.Validate(); err != nil {
			return fmt.Errorf("lodestar config: retry: %w", err)
		}
	}
	if c.Subset != nil {
		if _, err := c.Subset.resolve(); err != nil {
			return fmt.Errorf("lodestar config: %w", err)
		}
	}
	return c.validateGrouping()
}

// algorithm returns the configured algorithm or the default.
func (c Config) algorithm() Algorithm {
	if c.Algorithm == nil {
		return &RoundRobin{}
	}
	return c.Algorithm
}

// decodeAlgorithm reads "name" or {"name": {options}}.
func decodeAlgorithm(js []byte) (Algorithm, error) {
	if js[0] == '"' {
		var name string
		if err := json.Unmarshal(js, &name); err != nil {
			return nil, fmt.Errorf("algorithm: %w", err)
		}
		return NewAlgorithm(name, nil)
	}
	var name string
	var opts json.RawMessage
	n := 0
	if js[0] == '{' {
		_ = eachMember(js, func(key string, val []byte) error {
			name, opts = key, val
			n++
			return nil
		})
	}
	if n != 1 {
		return nil, errors.New(`algorithm: want a name or an object with exactly one key, the name, e.g. {"least_request": {"choiceCount": 3}}`)
	}
	return NewAlgorithm(name, opts)
}
