package balancer

import (
	"errors"
	"fmt"
	"os"

	"github.com/lodestar-go/lodestar/resolver"
)

// The configuration sections of locality, priority and splits (Config.Locality,
// Config.Priority, Config.Split). How they are applied is in locality.go.

// Environment variables that give the caller's own locality when the locality
// section does not (LocalityConfig.Caller).
const (
	EnvZone   = "LODESTAR_ZONE"
	EnvRegion = "LODESTAR_REGION"
)

// Defaults of the locality and priority sections.
const (
	// DefaultMinLocalEndpoints is LocalityConfig.MinLocalEndpoints' default.
	DefaultMinLocalEndpoints = 1
	// DefaultOverprovisioningFactor is PriorityConfig.OverprovisioningFactor's
	// default (Envoy's).
	DefaultOverprovisioningFactor = 1.4
)

// LocalityConfig is zone-aware routing: within the priority tier that takes a
// request, endpoints in the caller's zone are preferred, then the other zones
// of its region, then the rest, as long as the local group has enough usable
// endpoints and capacity (see the package's locality documentation in
// docs/ARCHITECTURE.md, "Locality, priority and splits").
//
// In JSON:
//
//	{"zone": "us-east-1a", "region": "us-east-1", "minLocalEndpoints": 2, "spillWhenLoaded": 1.5}
//
// The caller's zone and region come from here, else from the environment
// (LODESTAR_ZONE, LODESTAR_REGION), else they are unknown and no zone is
// preferred. Endpoints carry their locality in resolver.Endpoint.Locality
// (Consul meta "zone" and "region", for instance).
type LocalityConfig struct {
	// Zone is the caller's zone, compared with the endpoints'
	// Locality.Zone. Empty means the LODESTAR_ZONE environment variable;
	// when that is empty too, no zone is preferred.
	Zone string `json:"zone,omitempty"`
	// Region is the caller's region, compared with the endpoints'
	// Locality.Region. Empty means the LODESTAR_REGION environment
	// variable; when that is empty too, no region is preferred.
	Region string `json:"region,omitempty"`
	// MinLocalEndpoints is how many usable endpoints the caller's zone (or,
	// failing that, its region) must have in a tier to be preferred; with
	// fewer, requests spread over the whole tier. 0 means the default, 1.
	// Valid 1-100000.
	MinLocalEndpoints int `json:"minLocalEndpoints,omitempty" range:"[1, 100000]"`
	// SpillWhenLoaded turns on load-aware spill: when the local group's
	// requests in flight per endpoint exceed SpillWhenLoaded times the
	// other groups' (counted as at least 1), part of the local share spills
	// to the others until they are back under it. 0, the default, is off.
	// Valid 1-1000.
	SpillWhenLoaded float64 `json:"spillWhenLoaded,omitempty" range:"[1, 1000]"`
}

// Caller returns the caller's locality: the zone and region of l (l may be
// nil), each falling back on its environment variable (LODESTAR_ZONE,
// LODESTAR_REGION). Empty fields are unknown.
func (l *LocalityConfig) Caller() resolver.Locality {
	var loc resolver.Locality
	if l != nil {
		loc.Zone, loc.Region = l.Zone, l.Region
	}
	if loc.Zone == "" {
		loc.Zone = os.Getenv(EnvZone)
	}
	if loc.Region == "" {
		loc.Region = os.Getenv(EnvRegion)
	}
	return loc
}

// PriorityConfig tunes priority tiers (active/passive failover). Tiers apply
// whenever the endpoints carry different resolver.Endpoint.Priority values
// (SRV priority, Consul meta "priority"), with or without this section:
// requests go to the most preferred tier (0) while it is healthy enough, and
// its overflow moves to the next tiers in proportion as it is not (Envoy's
// priority load).
//
// In JSON: {"overprovisioningFactor": 1.4}.
type PriorityConfig struct {
	// OverprovisioningFactor is how much capacity a tier is assumed to have
	// over its load: a tier keeps all its traffic while its share of usable
	// endpoints times the factor is at least 1 (at 1.4, while 72% or more
	// are usable), and loses the rest to the next tiers in proportion below
	// that. Zone-aware routing does not use it. 0 means the default, 1.4.
	// Valid 1-100.
	OverprovisioningFactor float64 `json:"overprovisioningFactor,omitempty" range:"[1, 100]"`
}

// SplitRule is one subset of a weighted traffic split (a canary): the
// endpoints whose metadata hold every key and value of Match, and the share
// of requests they get, Weight out of the weights' sum. An endpoint belongs to
// the first rule it matches; endpoints that match none get no requests while
// any subset has a usable endpoint. A subset with no usable endpoint hands its
// share to the others.
//
// In JSON: {"match": {"version": "v2"}, "weight": 5}.
type SplitRule struct {
	// Name names the subset in logs. Empty means "split[i]".
	Name string `json:"name,omitempty"`
	// Match is the metadata the subset's endpoints carry (every key, with
	// these values: resolver.Endpoint.Metadata, such as Consul meta). Empty
	// matches every endpoint, for a last rule that takes the rest.
	Match map[string]string `json:"match,omitempty"`
	// Weight is the subset's share of the requests, relative to the other
	// rules'. 0 gives it none (while another subset has usable endpoints).
	// Valid 0-1000000; at least one rule's weight must be above 0.
	Weight int `json:"weight,omitempty" range:"[0, 1000000]"`
}

// validateGrouping checks the split rules, which CheckRanges does not walk
// (a slice), and what ranges cannot say.
func (c Config) validateGrouping() error {
	if c.Split == nil {
		return nil
	}
	if len(c.Split) == 0 {
		return errors.New("lodestar config: split: want at least one rule, or leave split out")
	}
	sum := 0
	for i := range c.Split {
		r := &c.Split[i]
		if err := CheckRanges(r); err != nil {
			return fmt.Errorf("lodestar config: %w", inField(fmt.Sprintf("split[%d]", i), err))
		}
		for k := range r.Match {
			if k == "" {
				return fmt.Errorf("lodestar config: split[%d].match: empty metadata key", i)
			}
		}
		sum += r.Weight
	}
	if sum == 0 {
		return errors.New("lodestar config: split: every weight is 0; at least one must be above 0")
	}
	return nil
}

// slowStarter is implemented by the built-in algorithms with a slow start:
// the priority tiers ramp a failback over the same window.
type slowStarter interface{ slowStartConfig() SlowStart }

func (a *RoundRobin) slowStartConfig() SlowStart         { return a.SlowStart }
func (a *WeightedRoundRobin) slowStartConfig() SlowStart { return a.SlowStart }
func (a *LeastRequest) slowStartConfig() SlowStart       { return a.SlowStart }
