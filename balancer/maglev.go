package balancer

import (
	"fmt"

	"github.com/cespare/xxhash/v2"
)

func init() { Register("maglev", func() Algorithm { return &Maglev{} }) }

// Maglev sends requests with the same affinity key to the same endpoint through
// Google's Maglev lookup table: a prime-sized table in which every endpoint
// fills slots in its own pseudo-random order, so each owns an almost equal
// share (within one slot). Use it for cache or session affinity when you
// want the cheapest consistent-hash pick (one table read) and even balance
// without ring hash's memory; prefer ring_hash when placement must match
// another ketama client or keys must move as little as possible, or
// bounded_load when a hot key must not overload one endpoint.
//
// Ejection: the table is filled over the set's members, eligible or not,
// and kept while only eligibility changes: a key whose slot belongs to an
// ejected (unhealthy, breaker-open, paused...) endpoint goes to the next
// slot's owner, so an ejection or a readmission moves that endpoint's keys
// and no other (1/N; slots are interleaved, so they spread over many
// endpoints) and costs no refill (0.16 ms at 10,000 endpoints, 1.7 ms with a
// refill). A member joining or leaving refills the table off the updating
// goroutine (the engine's refresh, see Lagging): until it lands, a member that
// left has its slots passed on like an ejected one's, and one that joined
// takes keyless requests but no keys.
//
// Disruption: removing one of N endpoints moves its own 1/N of keys and, as
// the table refills, some of the others' too. Measured (endpoint N/2 of N
// removed; TestMaglevDisruptionFigures), keys moved against the ideal 1/N:
//
//	N        table 65,537   table 655,373   table 1,000,003
//	10       1.02×          1.01×           1.01×
//	100      1.54×          1.14×           1.11×
//	1,000    6.8×           4.4×            3.0×
//	10,000   9.3×           —               8.8×
//
// The extra falls with slots per endpoint, slowly: a table big enough to
// bring N = 1,000 near the ideal would cost tens of megabytes and a second
// per rebuild. The size cannot follow N either, since a table of another
// size moves nearly every key. So the default is a fixed 65,537 slots, which
// keeps shares within 1% of the mean up to about 1,000 endpoints (max/mean
// 1.007 at 1,000; 1.068 at 10,000). For more endpoints, or for less
// disruption, set TableSize to a prime of about 100 × the largest N you
// expect (1,000,003 gives 1.010 at 10,000), at the cost of memory (2 bytes a
// slot) and rebuild time (a million slots take about 60 ms to build).
//
// Entries are 16-bit endpoint indexes below 65,535 endpoints (2 bytes a
// slot), 32-bit above. Weights scale an endpoint's share of slots.
//
// JSON name "maglev"; options in JSON: {"tableSize": 65537, "fallback": "random"}.
type Maglev struct {
	// TableSize is the number of slots, a prime. Default 65537; valid primes
	// 3-16,777,213. A set of more endpoints than TableSize gets a table of
	// 100 slots each. See the type's doc for choosing it.
	TableSize int `json:"tableSize,omitempty" range:"[3, 16777213]"` // 16777213: the largest prime below 2^24
	// Fallback is what a request without an affinity key gets: "random" (the
	// default) or "round_robin".
	Fallback string `json:"fallback,omitempty"`
}

// Name returns "maglev".
func (*Maglev) Name() string { return "maglev" }

// Validate checks TableSize and Fallback.
func (a *Maglev) Validate() error {
	if err := CheckRanges(a); err != nil {
		return err
	}
	if a.TableSize != 0 && !isPrime(uint64(a.TableSize)) {
		return fmt.Errorf("tableSize: %d is not a prime", a.TableSize)
	}
	return validateFallback(a.Fallback)
}

// Build returns a Maglev picker over info.Endpoints, its table over
// info.Members (info.Endpoints when Members is not set).
func (a *Maglev) Build(info BuildInfo) Picker {
	members := membersOf(info)
	n := len(members)
	m := a.tableSize(n)
	weights := make([]uint32, n)
	for i, ep := range members {
		weights[i] = ep.Weight()
	}
	if n < 1<<16-1 {
		return newMaglevPicker(a, &maglevTab[uint16]{table: maglevTable[uint16](members, m), m: m, members: members, weights: weights}, info)
	}
	return newMaglevPicker(a, &maglevTab[uint32]{table: maglevTable[uint32](members, m), m: m, members: members, weights: weights}, info)
}

// maglevTab is a Maglev table over a set of members, shared by the pickers of
// successive snapshots while only eligibility changes.
type maglevTab[T owner] struct {
	table   []T
	m       uint64
	members []*Endpoint
	weights []uint32 // the members' weights the table was filled for
}

func newMaglevPicker[T owner](a *Maglev, t *maglevTab[T], info BuildInfo) Picker {
	p := &maglevPicker[T]{alg: a, maglevTab: t, ok: make([]bool, len(t.members))}
	k, some := 0, false
	for _, ep := range info.Endpoints {
		for k < len(t.members) && t.members[k].addr < ep.addr {
			k++
		}
		if k < len(t.members) && t.members[k] == ep && t.weights[k] == ep.Weight() {
			p.ok[k], some = true, true
			k++
		} else {
			p.lag = true // joined since the table was filled: keyless picks only, for now
		}
	}
	if !some { // no eligible endpoint has slots: fill a table now
		return a.Build(BuildInfo{Endpoints: info.Endpoints, Members: info.Members, Now: info.Now, Rand: info.Rand})
	}
	p.keyless.init(a.Fallback, info)
	return p
}

// Update keeps the table while the members and their weights stay: an
// ejection or a readmission fills no table. When members join or leave it
// keeps the table too, lagging: a member that left has its slots passed on
// like an ineligible one's, a member that joined takes keyless requests but
// no keys, until the engine's refresh fills a table for the new set off the
// updating goroutine (see Lagging).
func (p *maglevPicker[T]) Update(info BuildInfo) Picker {
	members := membersOf(info)
	same := len(members) == len(p.members)
	for i := 0; same && i < len(members); i++ {
		same = p.members[i] == members[i] && p.weights[i] == members[i].Weight()
	}
	q := newMaglevPicker(p.alg, p.maglevTab, info)
	if mp, ok := q.(*maglevPicker[T]); ok && !same {
		mp.lag = true
	}
	return q
}

// Lagging reports whether members joined or left since the table was filled.
func (p *maglevPicker[T]) Lagging() bool { return p.lag }

// tableSize returns the table size for n endpoints: TableSize (default
// 65,537), or 100 slots an endpoint when n is larger. The size must not
// follow n otherwise: a table of another size moves nearly every key.
func (a *Maglev) tableSize(n int) uint64 {
	m := uint64(a.TableSize)
	if m == 0 {
		m = 65537
	}
	if uint64(n) > m {
		m = nextPrime(100 * uint64(n))
	}
	return m
}

// maglevPicker looks a key up in the table; a slot whose member is not
// eligible passes the key to the next slot's, so an ejected endpoint's keys
// spread over the others (slots are interleaved) and no other key moves.
type maglevPicker[T owner] struct {
	alg *Maglev
	*maglevTab[T]
	ok  []bool // by member index: eligible
	lag bool   // the set's members are not the table's (see Update)
	keyless
}

func (p *maglevPicker[T]) Pick(info PickInfo) (*Endpoint, error) {
	if !info.HasHash {
		return p.keyless.eps[p.index()], nil
	}
	i := ((info.Hash >> 32) * p.m) >> 32
	for !p.ok[p.table[i]] {
		if i++; i == p.m {
			i = 0
		}
	}
	return p.members[p.table[i]], nil
}

// maglevTable fills a table of m slots (m prime, ≥ len(eps)) with endpoint
// indexes: in each round every endpoint due a slot (endpoints of the highest
// weight every round, one of a third of it every third round: Envoy's weighted
// Maglev) takes the next free slot of its permutation offset + j·skip (mod m).
func maglevTable[T owner](eps []*Endpoint, m uint64) []T {
	type entry struct {
		cur, skip uint64
		weight    uint64
		target    uint64
	}
	es := make([]entry, len(eps))
	var maxW uint64
	for i, ep := range eps {
		h := xxhash.Sum64String(ep.addr)
		offset := h % m
		skip := mix64(h)%(m-1) + 1
		es[i] = entry{cur: offset, skip: skip, weight: uint64(ep.Weight())}
		maxW = max(maxW, es[i].weight)
	}
	empty := ^T(0)
	table := make([]T, m)
	for i := range table {
		table[i] = empty
	}
	filled := uint64(0)
	for round := uint64(1); filled < m; round++ {
		for i := range es {
			e := &es[i]
			if round*e.weight < e.target {
				continue
			}
			e.target += maxW
			c := e.cur
			for table[c] != empty {
				if c += e.skip; c >= m {
					c -= m
				}
			}
			table[c] = T(i)
			if c += e.skip; c >= m {
				c -= m
			}
			e.cur = c
			if filled++; filled == m {
				break
			}
		}
	}
	return table
}

// mix64 is splitmix64's finaliser: a second, independent hash from the first.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

func isPrime(n uint64) bool {
	if n < 2 {
		return false
	}
	for d := uint64(2); d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

func nextPrime(n uint64) uint64 {
	for !isPrime(n) {
		n++
	}
	return n
}
