package balancer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
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
type Config struct {
	// Algorithm picks endpoints. nil means round robin. In JSON it is the
	// algorithm's name, or an object with one key, the name, holding its options.
	Algorithm Algorithm
	// Affinity says where requests' affinity keys come from, for the hashing
	// algorithms (ring_hash, maglev, bounded_load). The zero value takes keys
	// only from the context (WithAffinityKey).
	Affinity Affinity
	// AllowEmpty lets an empty endpoint set from discovery replace a non-empty
	// one. By default an empty answer is taken for a discovery fault: it is
	// reported and the last non-empty set stays in force.
	AllowEmpty bool
	// WaitForEndpoints makes a pick that finds no eligible endpoint wait up to
	// this long (and never past the request's deadline) for one to appear,
	// instead of failing at once. 0, the default, fails at once.
	WaitForEndpoints time.Duration
	// InitialDiscoveryTimeout bounds how long a pick waits for the feed's first
	// answer (a set of endpoints, or an error) when the engine has had none yet:
	// a fresh Transport's first requests wait for discovery instead of failing,
	// as a gRPC channel's first RPCs wait for its resolver. The request's own
	// deadline bounds the wait too. 0 means the default, 10s: long enough for a
	// DNS lookup that needs a retry (the stub resolver's 5s timeout) or a Consul
	// agent's first answer, short enough that a feed that never answers is
	// reported while someone is still watching. Valid when set: 1ms-10m.
	InitialDiscoveryTimeout time.Duration
}

// DefaultInitialDiscoveryTimeout is InitialDiscoveryTimeout's default.
const DefaultInitialDiscoveryTimeout = 10 * time.Second

// configJSON is Config's JSON form.
type configJSON struct {
	Algorithm               json.RawMessage `json:"algorithm,omitempty"`
	Affinity                Affinity        `json:"affinity,omitzero"`
	AllowEmpty              bool            `json:"allowEmpty,omitempty"`
	WaitForEndpoints        string          `json:"waitForEndpoints,omitempty"`
	InitialDiscoveryTimeout string          `json:"initialDiscoveryTimeout,omitempty"`
}

// ParseConfig decodes and validates a Config from JSON. Errors name the field.
func ParseConfig(js []byte) (Config, error) {
	var c Config
	if err := c.UnmarshalJSON(js); err != nil {
		return Config{}, err
	}
	return c, c.Validate()
}

// UnmarshalJSON decodes c from JSON, rejecting unknown fields by name.
func (c *Config) UnmarshalJSON(js []byte) error {
	var raw configJSON
	if err := decodeStrict(js, &raw); err != nil {
		return fmt.Errorf("lodestar config: %w", err)
	}
	var nc Config
	if len(raw.Algorithm) > 0 {
		a, err := decodeAlgorithm(raw.Algorithm)
		if err != nil {
			return fmt.Errorf("lodestar config: %w", err)
		}
		nc.Algorithm = a
	}
	nc.Affinity = raw.Affinity
	nc.AllowEmpty = raw.AllowEmpty
	if raw.WaitForEndpoints != "" {
		d, err := time.ParseDuration(raw.WaitForEndpoints)
		if err != nil {
			return fmt.Errorf("lodestar config: waitForEndpoints: %w", err)
		}
		nc.WaitForEndpoints = d
	}
	if raw.InitialDiscoveryTimeout != "" {
		d, err := time.ParseDuration(raw.InitialDiscoveryTimeout)
		if err != nil {
			return fmt.Errorf("lodestar config: initialDiscoveryTimeout: %w", err)
		}
		if d == 0 {
			return fmt.Errorf("lodestar config: initialDiscoveryTimeout: 0s is out of range [1ms, 10m] (omit it for the default, %v)", DefaultInitialDiscoveryTimeout)
		}
		nc.InitialDiscoveryTimeout = d
	}
	*c = nc
	return nil
}

// MarshalJSON encodes c in the form UnmarshalJSON reads.
func (c Config) MarshalJSON() ([]byte, error) {
	raw := configJSON{Affinity: c.Affinity, AllowEmpty: c.AllowEmpty}
	if c.WaitForEndpoints != 0 {
		raw.WaitForEndpoints = c.WaitForEndpoints.String()
	}
	if c.InitialDiscoveryTimeout != 0 {
		raw.InitialDiscoveryTimeout = c.InitialDiscoveryTimeout.String()
	}
	if c.Algorithm != nil {
		opts, err := json.Marshal(c.Algorithm)
		if err != nil {
			return nil, err
		}
		raw.Algorithm, err = json.Marshal(map[string]json.RawMessage{c.Algorithm.Name(): opts})
		if err != nil {
			return nil, err
		}
	}
	return json.Marshal(raw)
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
	if c.WaitForEndpoints < 0 {
		return fmt.Errorf("lodestar config: waitForEndpoints: %v is negative", c.WaitForEndpoints)
	}
	if d := c.InitialDiscoveryTimeout; d != 0 && (d < time.Millisecond || d > 10*time.Minute) {
		return fmt.Errorf("lodestar config: initialDiscoveryTimeout: %v is out of range [1ms, 10m]", d)
	}
	return nil
}

// algorithm returns the configured algorithm or the default.
func (c Config) algorithm() Algorithm {
	if c.Algorithm == nil {
		return &RoundRobin{}
	}
	return c.Algorithm
}

// decodeAlgorithm reads "name" or {"name": {options}}.
func decodeAlgorithm(js json.RawMessage) (Algorithm, error) {
	var name string
	if err := json.Unmarshal(js, &name); err == nil {
		return NewAlgorithm(name, nil)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(js, &obj); err != nil || len(obj) != 1 {
		return nil, errors.New(`algorithm: want a name or an object with exactly one key, the name, e.g. {"least_request": {"choiceCount": 3}}`)
	}
	var name1 string
	var opts json.RawMessage
	for name1, opts = range obj {
	}
	return NewAlgorithm(name1, opts)
}

// decodeStrict decodes js into v, rejecting unknown fields and trailing data.
func decodeStrict(js []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after JSON value")
	}
	return nil
}
