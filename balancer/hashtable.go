package balancer

import (
	"math"
	"slices"

	"github.com/cespare/xxhash/v2"
)

// hashTable is the costly part of the ring pickers (ring_hash, bounded_load),
// the part that does not depend on which endpoints are eligible: the ring's
// points over the set's members (BuildInfo.Members). It is immutable; Update
// carries it from picker to picker, and each picker adds only a table of which
// members are eligible (hashView), so an ejection, a readmission or a
// breaker's trip costs O(n) small work instead of a new ring: ineligible
// members' points are skipped on the walk, as grpc's ring hash does.
//
// Membership changes update it too, without regenerating the ring:
//   - a member that leaves keeps its points in the main ring, dead (never
//     eligible again under its index), so keys it owned walk on to the next
//     point, exactly as on a ring built without it;
//   - a member that joins gets its points (as many as a full build gives its
//     weight) in a second ring, over, merged in sorted order with over's
//     other points (O(over) sequential work); a lookup takes the nearer of the
//     two rings' first usable points, which is the point the union of both
//     rings gives.
//
// When the dead points pass a quarter of the main ring or over passes
// 1/overShare of it, the table is lagging: the engine builds afresh over the
// members off its lock (compaction: the ring a new client would build for the
// same set; see Lagging) and updates that one to the set in force. Should
// the debt reach half the ring in dead points or a quarter in over (no engine
// to refresh it, say), or the index type overflow, update says so and the
// algorithm builds afresh at once.
type hashTable[T owner] struct {
	main *ring[T] // owners index eps
	over *ring[T] // nil, or the points of members that joined since main was built
	// eps holds every endpoint with points, by index: main's members first, then
	// those that joined (over). A member that left keeps its index, dead.
	eps    []*Endpoint
	weight []uint32 // the weight each index's points were made for
	count  []uint32 // how many points each index has
	nMain  int      // indexes below nMain are main's; the others over's
	// live lists the members' indexes in eps, in address order (as
	// BuildInfo.Members comes).
	live       []T
	perWeight  float64 // points per unit of weight (main's total / its weights' sum)
	mainPoints int
	overPoints int
	deadPoints int // main's points whose index left
}

// overShare bounds the second ring at 1/overShare of the main one: each join
// merges it whole (O(over)), and each compaction costs a full build, so the
// bound trades one against the other; at 10,000 endpoints 1/32 makes both
// about 0.3 ms per change, amortized (benchmarks/RESULTS.md).
const overShare = 32

// maxOwners is how many endpoints indexes of type T can name.
func maxOwners[T owner]() int { return int(^T(0)) + 1 }

// newHashTable builds the ring over members with the given point counts.
func newHashTable[T owner](members []*Endpoint, counts []int) *hashTable[T] {
	t := &hashTable[T]{
		main:   buildRing[T](members, counts),
		eps:    members,
		weight: make([]uint32, len(members)),
		count:  make([]uint32, len(members)),
		live:   make([]T, len(members)),
		nMain:  len(members),
	}
	var wsum float64
	for i, ep := range members {
		t.weight[i] = ep.Weight()
		t.count[i] = uint32(counts[i])
		t.live[i] = T(i)
		t.mainPoints += counts[i]
		wsum += float64(max(ep.Weight(), 1))
	}
	t.perWeight = float64(t.mainPoints) / wsum
	return t
}

// update returns the table for members (sorted by address), or false when a
// full build should replace it (see hashTable). It returns t itself when the
// members are the same.
func (t *hashTable[T]) update(members []*Endpoint) (*hashTable[T], bool) {
	// Diff t.live against members, both in address order: pointers and weights
	// must match for a member to stay; an address that comes back as another
	// endpoint, or with another weight, leaves and joins.
	if len(members) == len(t.live) {
		same := true
		for k, ep := range members { // the common case: only eligibility changed
			if old := t.live[k]; t.eps[old] != ep || t.weight[old] != ep.Weight() {
				same = false
				break
			}
		}
		if same {
			return t, true
		}
	}
	var gone []T
	var added []*Endpoint
	live := make([]T, 0, len(members))
	i, j, same := 0, 0, true
	for i < len(t.live) || j < len(members) {
		if i < len(t.live) && j < len(members) {
			old := t.live[i]
			if t.eps[old] == members[j] && t.weight[old] == members[j].Weight() {
				live = append(live, old)
				i++
				j++
				continue
			}
		}
		same = false
		if j == len(members) || i < len(t.live) && t.eps[t.live[i]].addr <= members[j].addr {
			gone = append(gone, t.live[i])
			i++
			continue
		}
		live = append(live, T(len(t.eps)+len(added)))
		added = append(added, members[j])
		j++
	}
	if same {
		return t, true
	}
	if len(t.eps)+len(added) > maxOwners[T]() {
		return nil, false
	}
	nt := &hashTable[T]{
		main:       t.main,
		over:       t.over,
		nMain:      t.nMain,
		eps:        append(slices.Clip(t.eps), added...),
		weight:     slices.Clip(t.weight),
		count:      slices.Clip(t.count),
		live:       live,
		perWeight:  t.perWeight,
		mainPoints: t.mainPoints,
		overPoints: t.overPoints,
		deadPoints: t.deadPoints,
	}
	var goneOver []bool // by index, for mergeOver; nil when no joined member left
	for _, g := range gone {
		if int(g) < t.nMain {
			nt.deadPoints += int(t.count[g])
			continue
		}
		if goneOver == nil {
			goneOver = make([]bool, len(t.eps))
		}
		goneOver[g] = true
		nt.overPoints -= int(t.count[g])
	}
	for _, ep := range added {
		c := max(uint32(math.Round(nt.perWeight*float64(max(ep.Weight(), 1)))), 1)
		nt.weight = append(nt.weight, ep.Weight())
		nt.count = append(nt.count, c)
		nt.overPoints += int(c)
	}
	if nt.deadPoints*2 > nt.mainPoints || nt.overPoints*4 > nt.mainPoints {
		return nil, false // far behind: a full build now (no refresh came)
	}
	if len(added) > 0 || goneOver != nil {
		nt.over = t.mergeOver(nt, added, goneOver)
	}
	return nt, true
}

// lagging reports whether a full build is due (see hashTable): the engine
// makes one off its lock (Lagging).
func (t *hashTable[T]) lagging() bool {
	return t.deadPoints*4 > t.mainPoints || t.overPoints*overShare > t.mainPoints
}

// mergeOver returns nt's second ring: t's, without the points of gone
// indexes, merged with the points of added (indexes from len(t.eps) on).
func (t *hashTable[T]) mergeOver(nt *hashTable[T], added []*Endpoint, gone []bool) *ring[T] {
	type point struct {
		h uint64
		o T
	}
	fresh := make([]point, 0, nt.overPoints)
	for k, ep := range added {
		idx := T(len(t.eps) + k)
		s := xxhash.Sum64String(ep.addr)
		for p := range nt.count[idx] {
			fresh = append(fresh, point{mix64(s + uint64(p+1)*golden), idx})
		}
	}
	slices.SortFunc(fresh, func(a, b point) int {
		if a.h != b.h {
			if a.h < b.h {
				return -1
			}
			return 1
		}
		return int(a.o) - int(b.o)
	})
	total := nt.overPoints
	hashes := make([]uint64, 0, total)
	owners := make([]T, 0, total)
	var oh []uint64
	var oo []T
	if t.over != nil {
		oh, oo = t.over.hashes, t.over.owners
	}
	a, b := 0, 0
	for a < len(oh) || b < len(fresh) {
		if a < len(oh) && gone != nil && gone[oo[a]] {
			a++
			continue
		}
		if b == len(fresh) || a < len(oh) && (oh[a] < fresh[b].h || oh[a] == fresh[b].h && oo[a] < fresh[b].o) {
			hashes, owners = append(hashes, oh[a]), append(owners, oo[a])
			a++
		} else {
			hashes, owners = append(hashes, fresh[b].h), append(owners, fresh[b].o)
			b++
		}
	}
	if len(hashes) == 0 {
		return nil
	}
	return indexRing(hashes, owners)
}

// indexRing returns the ring over sorted points with its lookup table
// (about two points a bucket).
func indexRing[T owner](hashes []uint64, owners []T) *ring[T] {
	bits := uint(1)
	for 1<<(bits+1) < len(hashes) && bits < 24 {
		bits++
	}
	shift := 64 - bits
	lookup := make([]uint32, 1<<bits+1)
	k := 0
	for b := range 1 << bits {
		lookup[b] = uint32(k)
		for k < len(hashes) && hashes[k]>>shift == uint64(b) {
			k++
		}
	}
	lookup[1<<bits] = uint32(len(hashes))
	return &ring[T]{hashes: hashes, owners: owners, lookup: lookup, shift: shift}
}

// hashView is a ring picker's own part, built per snapshot: which of the
// table's indexes are eligible.
type hashView[T owner] struct {
	*hashTable[T]
	ok     []bool // by index in eps
	mainOK bool   // main has an eligible point
	overOK bool   // over has one
	eidx   []T    // BuildInfo.Endpoints' position → index in eps
}

// view returns t's view for the eligible endpoints (sorted by address, a
// subset of t's members), or false if one is not a member.
func (t *hashTable[T]) view(eligible []*Endpoint) (hashView[T], bool) {
	v := hashView[T]{hashTable: t, ok: make([]bool, len(t.eps)), eidx: make([]T, len(eligible))}
	k := 0
	for e, ep := range eligible {
		for k < len(t.live) && t.eps[t.live[k]] != ep {
			k++
		}
		if k == len(t.live) {
			return hashView[T]{}, false
		}
		idx := t.live[k]
		v.ok[idx], v.eidx[e] = true, idx
		if int(idx) < t.nMain {
			v.mainOK = true
		} else {
			v.overOK = true
		}
		k++
	}
	return v, true
}

// successor returns the index owning the first eligible point at or after h,
// clockwise, over both rings. The view has at least one eligible point.
func (v *hashView[T]) successor(h uint64) T {
	var best T
	var bestD uint64
	if v.mainOK {
		best, bestD = v.first(v.main, h)
	}
	if v.overOK {
		if o, d := v.first(v.over, h); !v.mainOK || d < bestD {
			best = o
		}
	}
	return best
}

// first returns the owner of r's first eligible point at or after h and its
// clockwise distance from h. r has an eligible point.
func (v *hashView[T]) first(r *ring[T], h uint64) (T, uint64) {
	i := r.find(h)
	for !v.ok[r.owners[i]] {
		if i++; i == len(r.hashes) {
			i = 0
		}
	}
	return r.owners[i], r.hashes[i] - h
}

// walk calls try with the index of each eligible point from h on, clockwise
// over both rings, once around, until try returns true; it reports whether
// one did.
func (v *hashView[T]) walk(h uint64, try func(T) bool) bool {
	m, o := v.main, v.over
	nm, no := len(m.hashes), 0
	i, j := m.find(h), 0
	if o != nil {
		no, j = len(o.hashes), o.find(h)
	}
	for si, sj := 0, 0; si < nm || sj < no; {
		var idx T
		if sj == no || si < nm && m.hashes[i]-h <= o.hashes[j]-h {
			idx = m.owners[i]
			if i++; i == nm {
				i = 0
			}
			si++
		} else {
			idx = o.owners[j]
			if j++; j == no {
				j = 0
			}
			sj++
		}
		if v.ok[idx] && try(idx) {
			return true
		}
	}
	return false
}

// shares returns each eligible index's fraction of the hash space (for
// tests), indexed by position in BuildInfo.Endpoints.
func (v *hashView[T]) shares(n int) []float64 {
	type point struct {
		h uint64
		o T
	}
	var pts []point
	for _, r := range []*ring[T]{v.main, v.over} {
		if r == nil {
			continue
		}
		for i, h := range r.hashes {
			if v.ok[r.owners[i]] {
				pts = append(pts, point{h, r.owners[i]})
			}
		}
	}
	slices.SortFunc(pts, func(a, b point) int {
		if a.h < b.h {
			return -1
		} else if a.h > b.h {
			return 1
		}
		return 0
	})
	pos := map[T]int{}
	for e, idx := range v.eidx {
		pos[idx] = e
	}
	s := make([]float64, n)
	prev := pts[len(pts)-1].h
	for _, p := range pts {
		s[pos[p.o]] += float64(p.h-prev) / (1 << 64) // wraps for the first
		prev = p.h
	}
	return s
}

// membersOf returns info.Members, or info.Endpoints when Members is not set
// (a picker built outside an engine).
func membersOf(info BuildInfo) []*Endpoint {
	if info.Members == nil {
		return info.Endpoints
	}
	return info.Members
}
