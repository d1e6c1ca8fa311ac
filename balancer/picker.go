package balancer

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/lodestar-go/lodestar/balancer/outcome"
)

// PickInfo is what a front door knows about a request when it picks.
type PickInfo struct {
	// Ctx is the request's context.
	Ctx context.Context
	// Hash is the request's affinity key hashed with HashKey, for the hashing
	// algorithms. It is meaningful only when HasHash is true.
	Hash uint64
	// HasHash says the request carries an affinity key.
	HasHash bool
}

// A Picker chooses an endpoint for a request. A picker is built for one immutable
// set of eligible endpoints and is called concurrently from many goroutines: Pick
// must be safe for concurrent use, should take no lock and allocate nothing.
//
// Pick may return ErrNoEndpoints when it finds no endpoint it can use; any other
// error fails the request as it is.
type Picker interface {
	Pick(info PickInfo) (*Endpoint, error)
}

// SelfCounting is implemented by a picker that counts in-flight requests itself
// (with Endpoint.Acquire or TryAcquire), for example to enforce a load cap
// atomically. The engine then does not call Acquire after Pick.
type SelfCounting interface {
	Picker
	CountsInFlight()
}

// BuildInfo is what an algorithm gets to build a picker.
type BuildInfo struct {
	// Endpoints are the eligible endpoints, sorted by address; at least one.
	// The picker may keep the slice; it must not modify it.
	Endpoints []*Endpoint
	// Members are the endpoints of the set, eligible or not (ejected,
	// unhealthy, not connected...), that discovery has not removed, sorted by
	// address: Endpoints is a subset of it. An algorithm whose tables are costly
	// to build (a hash ring) builds them over Members and skips, at pick time,
	// the members that are not in Endpoints, so that an ejection or a
	// readmission reuses the tables (see Updater). The picker may keep the
	// slice; it must not modify it. When the engine groups endpoints (locality,
	// priority, split), each group's picker gets its group's endpoints in both.
	Members []*Endpoint
	// Now is the engine's clock.
	Now func() time.Time
	// Rand returns uniformly random 64-bit values and is safe for concurrent use.
	Rand func() uint64
	// AddTotalInFlight adds delta to the number of requests in flight on the
	// whole engine (every endpoint, draining ones included) and returns the new
	// number; AddTotalInFlight(0) reads it. It is set only for an algorithm that
	// implements TotalCounting, nil otherwise. The engine subtracts one in Done.
	AddTotalInFlight func(delta int64) int64
}

// An Updater is a picker that makes its successor for a changed endpoint set
// more cheaply than Algorithm.Build, reusing what does not depend on which
// endpoints are eligible: ring_hash and bounded_load keep their ring over
// BuildInfo.Members and skip ineligible endpoints on the walk, as grpc's ring
// hash does, so an ejection or a readmission costs O(n) work on a small
// per-endpoint table instead of a new ring, and a member that joins or leaves
// updates the ring in place of rebuilding it.
//
// The engine calls Update on the picker in force (instead of Build) when it
// rebuilds with the same algorithm configuration and no grouping; a new
// configuration builds afresh. Update must not modify the receiver, which picks
// keep using until the new picker is published. The new picker must pick
// from info.Endpoints only, and as Build(info) would up to what the algorithm
// documents (ring_hash's ring after joins, say, keeps the points of the
// endpoints that stayed where a fresh build would re-split them).
type Updater interface {
	Picker
	Update(info BuildInfo) Picker
}

// A Lagging picker is an Updater whose Update took a shortcut that a full
// Build would not (ring_hash's dead points and second ring past their share,
// maglev's members waiting for a table refill): it picks correctly, among
// info.Endpoints, but costs more or hashes differently than a fresh build
// until one replaces it. When the picker the engine publishes reports
// Lagging, the engine calls Algorithm.Build with the same BuildInfo on a
// goroutine of its own (one at a time, waited for by Close) and carries the
// result forward with Update, so the costly build never runs on the
// goroutine that made the change.
type Lagging interface {
	Updater
	Lagging() bool
}

// TotalCounting is implemented by an algorithm whose pickers need the engine's
// total in-flight count (BuildInfo.AddTotalInFlight), for example to derive a
// per-endpoint load cap from the average. The engine keeps that count only for
// such algorithms, so the others do not pay for a shared counter. A picker that
// is also SelfCounting adds each request to the total itself, before it acquires
// an endpoint for it (so the total never trails the endpoints' counts); for any
// other picker the engine adds it after Pick.
type TotalCounting interface {
	Algorithm
	// CountsTotalInFlight marks the algorithm; it is never called.
	CountsTotalInFlight()
}

// OutcomeObserver is implemented by an algorithm that keeps per-endpoint state
// from reported outcomes (peak EWMA does). The engine calls Observe from Done,
// before the endpoint's in-flight count drops, with the outcome's time
// (outcome.Outcome.At, or the engine clock's current time when that is zero).
// Observe must be safe for concurrent use and should not allocate.
type OutcomeObserver interface {
	Algorithm
	Observe(ep *Endpoint, o outcome.Outcome, now time.Time)
}

// An Algorithm is a configured picking algorithm: a JSON-tagged struct of
// options that builds pickers. Built-in algorithms and users' own are registered
// by name with Register and are then usable from both front doors and from gRPC
// service configs.
type Algorithm interface {
	// Name returns the name the algorithm is registered under.
	Name() string
	// Validate reports an out-of-range option, naming the field and the range.
	Validate() error
	// Build returns a picker over info.Endpoints. It runs off the hot path,
	// whenever the eligible set changes.
	Build(info BuildInfo) Picker
}

var (
	registryMu sync.RWMutex
	registry   = map[string]func() Algorithm{}
)

// Register makes an algorithm available by name. newAlgorithm returns the
// algorithm with its default options; configuration JSON is decoded into it.
// Registering a name again replaces it. Call Register from an init function.
func Register(name string, newAlgorithm func() Algorithm) {
	registryMu.Lock()
	defer registryMu.Unlock()
	registry[name] = newAlgorithm
}

// Algorithms returns the registered algorithm names, sorted.
func Algorithms() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	slices.SortFunc(names, cmp.Compare)
	return names
}

// NewAlgorithm returns the algorithm registered under name with its options
// decoded from js (nil or empty means defaults) and validated. Unknown names,
// unknown fields and out-of-range values are errors that name them.
func NewAlgorithm(name string, js json.RawMessage) (Algorithm, error) {
	registryMu.RLock()
	f, ok := registry[name]
	registryMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("algorithm: unknown name %q (registered: %v)", name, Algorithms())
	}
	a := f()
	if len(js) > 0 && string(js) != "null" {
		if err := decodeStrict(js, a); err != nil {
			return nil, fmt.Errorf("algorithm %s: %w", name, err)
		}
	}
	if err := a.Validate(); err != nil {
		return nil, fmt.Errorf("algorithm %s: %w", name, err)
	}
	return a, nil
}

func byAddress(a, b *Endpoint) int { return cmp.Compare(a.addr, b.addr) }

// HashKey hashes an affinity key (a header value, cookie, client IP, metadata
// value or caller-supplied key) for PickInfo.Hash. Both front doors use it, so the
// same key lands on the same endpoint over HTTP and gRPC.
func HashKey(key string) uint64 { return xxhash.Sum64String(key) }
