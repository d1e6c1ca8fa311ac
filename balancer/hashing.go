package balancer

import (
	"fmt"
	"strconv"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"
)

// Shared parts of the hashing algorithms (ring_hash, maglev, bounded_load): what
// a request without an affinity key gets, and the hash ring.

// Fallback values: what a hashing algorithm does with a request that carries no
// affinity key (PickInfo.HasHash false).
const (
	// FallbackRandom picks an endpoint uniformly at random. The default.
	FallbackRandom = "random"
	// FallbackRoundRobin picks endpoints in turn.
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
	next atomic.Uint64
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

// buildRing places counts[i] points for endpoint i, at xxhash("address_k") for
// k = 0, 1, ... (the keys Envoy's ring hash uses).
func buildRing[T owner](eps []*Endpoint, counts []int) *ring[T] {
	total := 0
	for _, c := range counts {
		total += c
	}
	type point struct {
		h uint64
		o T
	}
	pts := make([]point, 0, total)
	buf := make([]byte, 0, 64)
	for i, ep := range eps {
		buf = append(buf[:0], ep.addr...)
		buf = append(buf, '_')
		base := len(buf)
		for k := range counts[i] {
			buf = strconv.AppendInt(buf[:base], int64(k), 10)
			pts = append(pts, point{xxhash.Sum64(buf), T(i)})
		}
	}
	// LSD radix sort on the hash, 16 bits a pass; stable, so equal hashes stay
	// in endpoint order and the ring is the same on every client.
	tmp := make([]point, len(pts))
	var count [1 << 16]int
	for shift := uint(0); shift < 64; shift += 16 {
		clear(count[:])
		for _, p := range pts {
			count[(p.h>>shift)&0xffff]++
		}
		sum := 0
		for d, c := range count {
			count[d] = sum
			sum += c
		}
		for _, p := range pts {
			d := (p.h >> shift) & 0xffff
			tmp[count[d]] = p
			count[d]++
		}
		pts, tmp = tmp, pts
	}
	r := &ring[T]{hashes: make([]uint64, len(pts)), owners: make([]T, len(pts))}
	for i, p := range pts {
		r.hashes[i], r.owners[i] = p.h, p.o
	}
	// About two points per lookup bucket.
	bits := uint(1)
	for 1<<(bits+1) < len(pts) && bits < 24 {
		bits++
	}
	r.shift = 64 - bits
	r.lookup = make([]uint32, 1<<bits+1)
	j := 0
	for k := range 1 << bits {
		for j < len(r.hashes) && r.hashes[j]>>r.shift < uint64(k) {
			j++
		}
		r.lookup[k] = uint32(j)
	}
	r.lookup[1<<bits] = uint32(len(r.hashes))
	return r
}

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
