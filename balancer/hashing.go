package balancer

import (
	"fmt"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"
)

// Shared parts of the hashing algorithms (ring_hash, maglev, bounded_load): what
// a request without an affinity key gets, and the hash ring.

// Fallback values: what a hashing algorithm does with a request that carries no
// affinity key (PickInfo.HasHash false).
const (
	// FallbackRandom picks an endpoint at random: uniformly under ring_hash
	// and maglev, in proportion to weight under bounded_load. The default.
	FallbackRandom = "random"
	// FallbackRoundRobin picks endpoints in turn (under bounded_load,
	// weighted_round_robin's interleave when weights differ).
	FallbackRoundRobin = "round_robin"
)

func validateFallback(f string) error {
	switch f {
	case "", FallbackRandom, FallbackRoundRobin:
		return nil
	}
	return fmt.Errorf("fallback: %q is not one of %q, %q", f, FallbackRandom, FallbackRoundRobin)
}

// keyless picks for requests without an affinity key.
type keyless struct {
	eps  []*Endpoint
	n    uint64
	rand func() uint64
	rr   bool
	_    [64]byte // next, written by every keyless pick under round robin, on a line of its own
	next atomic.Uint64
	_    [56]byte
}

func (k *keyless) init(mode string, info BuildInfo) {
	k.eps, k.n, k.rand, k.rr = info.Endpoints, uint64(len(info.Endpoints)), info.Rand, mode == FallbackRoundRobin
	if k.rr {
		k.next.Store(info.Rand() % k.n)
	}
}

// index returns the index of the endpoint a keyless request goes to.
func (k *keyless) index() uint64 {
	if k.rr {
		return (k.next.Add(1) - 1) % k.n
	}
	return fastrange(uint32(k.rand()), k.n)
}

// owner is an endpoint index as stored in a table: as narrow as the endpoint
// count allows.
type owner interface{ ~uint16 | ~uint32 }

// ring is a consistent-hash ring: sorted point hashes, each point's endpoint,
// and a lookup table from the top bits of a hash to the first point at or after
// that prefix, so a search scans a few points instead of bisecting the ring.
type ring[T owner] struct {
	hashes []uint64
	owners []T
	lookup []uint32 // len 1<<bits + 1
	shift  uint     // 64 - bits
}

// ringPoints returns how many points each endpoint gets: total points split
// in proportion to weight, at least one each, with total = perEndpoint·n clamped
// to [minSize, maxSize].
func ringPoints(eps []*Endpoint, perEndpoint, minSize, maxSize int) []int {
	var wsum float64
	for _, ep := range eps {
		wsum += float64(ep.Weight())
	}
	total := min(max(perEndpoint*len(eps), minSize), maxSize)
	counts := make([]int, len(eps))
	var acc float64
	prev := 0
	for i, ep := range eps {
		acc += float64(total) * float64(ep.Weight()) / wsum
		cur := int(acc + 0.5)
		counts[i] = max(cur-prev, 1)
		prev = cur
	}
	return counts
}

// buildRing places counts[i] points for endpoint i. Endpoint i's points are
// the SplitMix64 sequence seeded with xxhash(address): mix64(h + k·γ) for
// k = 1, 2, ..., uniform and independent of the other endpoints' points.
//
// The points are sorted by a counting sort on their top bits, which is also
// the lookup table (bucket k starts at lookup[k]), and an insertion sort within
// each bucket (about two points each); ties go to the lower endpoint index, so
// every client builds the same ring. Memory: 8 bytes a point for the hash,
// sizeof(T) for the endpoint, and 4 bytes a bucket.
func buildRing[T owner](eps []*Endpoint, counts []int) *ring[T] {
	total := 0
	for _, c := range counts {
		total += c
	}
	seeds := make([]uint64, len(eps))
	for i, ep := range eps {
		seeds[i] = xxhash.Sum64String(ep.addr)
	}
	bits := uint(1) // about two points per bucket
	for 1<<(bits+1) < total && bits < 24 {
		bits++
	}
	shift := 64 - bits
	lookup := make([]uint32, 1<<bits+1)
	for i, s := range seeds {
		for k := range counts[i] {
			lookup[mix64(s+uint64(k+1)*golden)>>shift]++
		}
	}
	sum := uint32(0)
	for b, c := range lookup {
		lookup[b] = sum
		sum += c
	}
	hashes := make([]uint64, total)
	owners := make([]T, total)
	next := make([]uint32, 1<<bits) // the next free slot of each bucket
	copy(next, lookup)
	for i, s := range seeds {
		for k := range counts[i] {
			h := mix64(s + uint64(k+1)*golden)
			b := h >> shift
			hashes[next[b]], owners[next[b]] = h, T(i)
			next[b]++
		}
	}
	for b := range 1 << bits {
		lo, hi := int(lookup[b]), int(lookup[b+1])
		for i := lo + 1; i < hi; i++ {
			h, o := hashes[i], owners[i]
			j := i
			for ; j > lo && (hashes[j-1] > h || hashes[j-1] == h && owners[j-1] > o); j-- {
				hashes[j], owners[j] = hashes[j-1], owners[j-1]
			}
			hashes[j], owners[j] = h, o
		}
	}
	return &ring[T]{hashes: hashes, owners: owners, lookup: lookup, shift: shift}
}

// golden is SplitMix64's increment, 2^64/φ.
const golden = 0x9e3779b97f4a7c15

// find returns the index of the first point at or after h, wrapping around.
func (r *ring[T]) find(h uint64) int {
	k := h >> r.shift
	i, end := int(r.lookup[k]), int(r.lookup[k+1])
	for i < end && r.hashes[i] < h {
		i++
	}
	if i == len(r.hashes) {
		return 0
	}
	return i
}

// shares returns each endpoint's fraction of the hash space (for tests).
func (r *ring[T]) shares(n int) []float64 {
	s := make([]float64, n)
	last := r.hashes[len(r.hashes)-1]
	prev := last
	for i, h := range r.hashes {
		s[r.owners[i]] += float64(h-prev) / (1 << 64) // wraps for i == 0
		prev = h
	}
	return s
}
