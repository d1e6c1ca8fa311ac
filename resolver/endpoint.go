// Package resolver defines lodestar's view of discovery: the Endpoint type, the Feed
// interface every discovery source implements, and the feeds themselves (a static
// list now; DNS and Consul in their subpackages).
//
// A Feed is a stream of full endpoint sets. It knows nothing of balancing or HTTP:
// it delivers sets to a Sink (the engine, or a gRPC resolver adapter) and reports
// its errors there too, keeping the last good set in force.
package resolver

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"strconv"
)

// DefaultWeight is the weight of an Endpoint whose Weight is 0.
const DefaultWeight = 1

// MaxWeight is the largest weight an Endpoint may carry.
const MaxWeight = 1 << 20

// Locality says where an endpoint runs. Empty fields mean unknown.
type Locality struct {
	Region  string `json:"region,omitempty"`
	Zone    string `json:"zone,omitempty"`
	SubZone string `json:"subZone,omitempty"`
}

// String returns "region/zone/subzone", leaving out empty trailing parts.
func (l Locality) String() string {
	switch {
	case l.SubZone != "":
		return l.Region + "/" + l.Zone + "/" + l.SubZone
	case l.Zone != "":
		return l.Region + "/" + l.Zone
	default:
		return l.Region
	}
}

// Endpoint is one backend a service can be reached at.
//
// Address identifies the endpoint: two endpoints with the same Address are the same
// endpoint, and an update that changes only its other fields keeps its live
// statistics.
type Endpoint struct {
	// Address is "host:port"; host is an IP address or a name the transport resolves.
	Address string `json:"address"`
	// Weight is the endpoint's relative capacity for weighted algorithms.
	// 0 means DefaultWeight; at most MaxWeight.
	Weight uint32 `json:"weight,omitempty"`
	// Locality is where the endpoint runs, for locality-aware routing.
	Locality Locality `json:"locality,omitzero"`
	// Priority is the failover tier: 0 is the most preferred, higher tiers take
	// traffic only when the tiers before them cannot.
	Priority int `json:"priority,omitempty"`
	// Metadata carries the discovery source's labels (Consul meta and tags, SRV
	// target, ...). Treat it as read-only once the endpoint is published.
	Metadata map[string]string `json:"metadata,omitempty"`
}

// EffectiveWeight returns Weight, or DefaultWeight when Weight is 0.
func (e Endpoint) EffectiveWeight() uint32 {
	if e.Weight == 0 {
		return DefaultWeight
	}
	return e.Weight
}

// Equal reports whether e and o carry the same address and attributes.
func (e Endpoint) Equal(o Endpoint) bool {
	return e.Address == o.Address && e.EffectiveWeight() == o.EffectiveWeight() &&
		e.Locality == o.Locality && e.Priority == o.Priority && maps.Equal(e.Metadata, o.Metadata)
}

// Validate reports what is wrong with e, naming the field.
func (e Endpoint) Validate() error {
	host, port, err := net.SplitHostPort(e.Address)
	if err != nil {
		return fmt.Errorf("endpoint address %q: want host:port: %w", e.Address, err)
	}
	if host == "" {
		return fmt.Errorf("endpoint address %q: empty host", e.Address)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("endpoint address %q: port %q is not in 1-65535", e.Address, port)
	}
	if e.Weight > MaxWeight {
		return fmt.Errorf("endpoint %s: weight %d is above the maximum %d", e.Address, e.Weight, MaxWeight)
	}
	if e.Priority < 0 {
		return fmt.Errorf("endpoint %s: priority %d is negative", e.Address, e.Priority)
	}
	return nil
}

// ValidateSet checks every endpoint of a set and that no address appears twice.
func ValidateSet(eps []Endpoint) error {
	seen := make(map[string]struct{}, len(eps))
	var errs []error
	for i, ep := range eps {
		if err := ep.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("endpoints[%d]: %w", i, err))
			continue
		}
		if _, dup := seen[ep.Address]; dup {
			errs = append(errs, fmt.Errorf("endpoints[%d]: address %s appears twice", i, ep.Address))
		}
		seen[ep.Address] = struct{}{}
	}
	return errors.Join(errs...)
}

// EqualSets reports whether a and b hold equal endpoints, in any order.
func EqualSets(a, b []Endpoint) bool {
	if len(a) != len(b) {
		return false
	}
	byAddr := make(map[string]Endpoint, len(a))
	for _, ep := range a {
		byAddr[ep.Address] = ep
	}
	for _, ep := range b {
		o, ok := byAddr[ep.Address]
		if !ok || !o.Equal(ep) {
			return false
		}
	}
	return true
}
