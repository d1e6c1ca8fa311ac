package balancer

import "fmt"

func init() { Register("ring_hash", func() Algorithm { return &RingHash{} }) }

// RingHash sends requests with the same affinity key to the same endpoint, and
// when an endpoint joins or leaves moves only the keys it owned, about 1/N of
// them, and no other (ketama consistent hashing: each endpoint owns points on a
// ring of 64-bit hash values; a key, hashed with xxhash, goes to the first
// point at or after its hash). Use it for cache affinity (sessions, shards,
// per-user caches) when no key may move between endpoints that stay; Maglev
// moves up to ~1% more on a change but picks from a far smaller table.
//
// Balance takes many points: an endpoint's share of the keys varies by about
// 1/√points, so the default of 2048 points per endpoint keeps the busiest
// endpoint within 10% of the mean up to 1,000 endpoints (grpc-go's defaults,
// 1024-4096 points in all, give 4.5× at 1,000). Weights scale an endpoint's
// points. Picks cost a lookup in a prefix table plus a short scan, so they stay
// fast on large rings.
//
// The ring is built over the set's members, eligible or not, and kept:
// ineligible endpoints (ejected, unhealthy, breaker-open, paused) are skipped
// on the walk, as in grpc's ring hash, so an ejection moves only that
// endpoint's keys, to the next points' owners, and costs no ring (0.15 ms at
// 10,000 endpoints, where building the ring takes about 200 ms). A member that
// leaves keeps its points, dead, and one that joins gets its points on a
// small second ring merged in order, so a membership change costs O(n) plus
// the second ring's size; once dead points pass a quarter of the ring or the
// second ring 1/32 of it, the next change builds afresh (compaction). The
// ring is then what a new client builds for the same set; in between, with
// unequal weights, a client that updated and one that built afresh may send
// up to a few percent of keys differently (a fresh build gives every endpoint
// points in proportion to its weight over the current average weight, which
// each join shifts).
//
// JSON name "ring_hash"; options in JSON:
// {"pointsPerEndpoint": 2048, "minRingSize": 1024, "maxRingSize": 4194304, "fallback": "random"}.
type RingHash struct {
	// PointsPerEndpoint is how many ring points an endpoint of average weight
	// gets. Default 2048; valid 1-65536.
	PointsPerEndpoint int `json:"pointsPerEndpoint,omitempty" range:"[1, 65536]"`
	// MinRingSize is the least number of points on the ring. Default 1024;
	// valid 1-8,388,608 and at most MaxRingSize.
	MinRingSize int `json:"minRingSize,omitempty" range:"[1, 8388608]"`
	// MaxRingSize is the most points on the ring; it bounds memory (12 bytes a
	// point below 65,536 endpoints) and rebuild time. Default 4,194,304; valid
	// 1-8,388,608.
	MaxRingSize int `json:"maxRingSize,omitempty" range:"[1, 8388608]"`
	// Fallback is what a request without an affinity key gets: "random" (the
	// default) or "round_robin".
	Fallback string `json:"fallback,omitempty"`
}

// maxRingSize is the upper bound of MinRingSize's and MaxRingSize's range tags.
const maxRingSize = 8 << 20

// Name returns "ring_hash".
func (*RingHash) Name() string { return "ring_hash" }

// Validate checks every field.
func (a *RingHash) Validate() error {
	if err := CheckRanges(a); err != nil {
		return err
	}
	if mn, mx := a.sizes(); mn > mx {
		return fmt.Errorf("minRingSize: %d is above maxRingSize %d", mn, mx)
	}
	return validateFallback(a.Fallback)
}

func (a *RingHash) sizes() (minSize, maxSize int) {
	minSize, maxSize = 1024, 4<<20
	if a.MinRingSize != 0 {
		minSize = a.MinRingSize
	}
	if a.MaxRingSize != 0 {
		maxSize = a.MaxRingSize
	}
	return minSize, maxSize
}

// Build returns a ring hash picker over info.Endpoints, its ring over
// info.Members (info.Endpoints when Members is not set).
func (a *RingHash) Build(info BuildInfo) Picker {
	members := membersOf(info)
	if len(members) <= maxOwners[uint16]() {
		return newRingPicker(a, newHashTable[uint16](members, a.points(members)), info)
	}
	return newRingPicker(a, newHashTable[uint32](members, a.points(members)), info)
}

func (a *RingHash) points(members []*Endpoint) []int {
	per := a.PointsPerEndpoint
	if per == 0 {
		per = 2048
	}
	mn, mx := a.sizes()
	return ringPoints(members, per, mn, mx)
}

func newRingPicker[T owner](a *RingHash, t *hashTable[T], info BuildInfo) Picker {
	v, ok := t.view(info.Endpoints)
	if !ok { // an eligible endpoint outside Members: build over both
		return a.Build(BuildInfo{Endpoints: info.Endpoints, Now: info.Now, Rand: info.Rand})
	}
	p := &ringPicker[T]{alg: a, hashView: v}
	p.keyless.init(a.Fallback, info)
	return p
}

// ringPicker picks from a ring over the members, skipping ineligible ones.
type ringPicker[T owner] struct {
	alg *RingHash
	hashView[T]
	keyless
}

func (p *ringPicker[T]) Pick(info PickInfo) (*Endpoint, error) {
	if !info.HasHash {
		return p.keyless.eps[p.index()], nil
	}
	return p.hashView.eps[p.successor(info.Hash)], nil
}

// Update keeps the ring for a new eligible set, and updates it for new
// members (see hashTable): an ejection or a readmission builds no ring.
func (p *ringPicker[T]) Update(info BuildInfo) Picker {
	members := membersOf(info)
	t, ok := p.hashTable.update(members)
	if !ok {
		return p.alg.Build(info)
	}
	return newRingPicker(p.alg, t, info)
}

// Lagging reports whether the ring carries enough dead points or joined
// members' points that a full build is due (see Lagging).
func (p *ringPicker[T]) Lagging() bool { return p.lagging() }
