package balancer

import (
	"cmp"
	"slices"
	"strings"
	"time"

	"github.com/cespare/xxhash/v2"
)

// Subsetting (Config.Subset): at every rebuild the engine narrows the
// discovered endpoints to the candidates, the endpoints the front door keeps
// connections to, before eligibility, panic and locality are worked out.
//
// Every endpoint has a rank, computed once when it joins (or when the
// configuration or, for deterministic, the number of endpoints in its group
// changes): rendezvous ranks by a hash of the client id and the address,
// deterministic by the SRE book's shuffle of the client's round, starting at
// the client's slice. A rebuild walks each group's ranking from the top and
// takes endpoints until Size of them qualify (no Unhealthy, Ejected,
// BreakerOpen or Paused condition; NotConnected does not count): those are
// the members, and the walked endpoints that did not qualify are candidates
// too, so that their health checks go on and they come back when they
// recover. The walk costs O(Size + disqualified endpoints) per group, not
// O(endpoints).
//
// Endpoints outside the candidates carry the internal condition outside:
// Pick's re-check after counting a pick sees it, so a pick that raced the
// rebuild which took its endpoint out of the subset picks again, as for any
// other condition. outside raises no event and is not shown by Conditions.

// subsetQualify are the conditions that make a subset member give way to
// the next-ranked endpoint.
const subsetQualify = Unhealthy | Ejected | BreakerOpen | Paused

// subsetter is the engine's subsetting state, kept across rebuilds. Guarded
// by the engine's mu.
type subsetter struct {
	p        subsetParams
	grouping *groupingMode // the grouping the groups were made for
	seed     uint64        // hash of the client id (rendezvous)

	all     []*Endpoint        // the endpoint set the ranking was made for
	infos   []any              // all's discovery records, to see changes
	groups  []*subsetGroup     // by group key
	cand    map[*Endpoint]bool // the current candidates; true for members
	list    []*Endpoint        // the current candidates, by address
	reranks int                // membership changes rerank handled (for tests)
}

// subsetGroup is one group's ranking.
type subsetGroup struct {
	key    subsetGroupKey
	ranked []*Endpoint // by rank (deterministic: the round's permutation)
	start  int         // where the walk starts (deterministic: the client's slice)
}

// subsetGroupKey tells groups apart: split rule, priority tier, zone group.
type subsetGroupKey struct{ rule, prio, zone int }

// newSubsetter returns the state for p, or nil when subsetting is off.
func newSubsetter(cfg *SubsetConfig, g *groupingMode) *subsetter {
	if cfg == nil {
		return nil
	}
	p, err := cfg.resolve()
	if err != nil { // Validate checked it; the environment changed since
		p = subsetParams{size: DefaultSubsetSize, clientID: processClientID()}
	}
	return &subsetter{p: p, grouping: g, seed: xxhash.Sum64String(p.clientID)}
}

// subsetLocked returns the endpoints of all (sorted by address) that picks
// may consider: the subset's candidates, or all when subsetting is off.
// It keeps the outside condition in step and reports a change of members in
// one log line.
func (e *Engine) subsetLocked(all []*Endpoint, m *mode) []*Endpoint {
	s := e.sub
	if e.cfg.Subset == nil {
		if s != nil { // turned off: every endpoint is a candidate again
			for _, ep := range all {
				ep.setOutside(false, e.opts.Now())
			}
			e.sub = nil
			e.subsetChanged()
		}
		return all
	}
	if s == nil || s.grouping != m.grouping || s.cfgChanged(e.cfg.Subset) {
		old := s
		s = newSubsetter(e.cfg.Subset, m.grouping)
		if old != nil {
			s.cand = old.cand // report the change against what was in force
		}
		e.sub = s
	}
	full := !s.sameSet(all)
	if full && !s.rerank(all) {
		s.rank(all)
	}
	cand := make(map[*Endpoint]bool, len(s.cand)+4)
	var list []*Endpoint
	for _, g := range s.groups {
		list = g.walk(s.p.size, cand, list)
	}
	slices.SortFunc(list, byAddress)
	now := e.opts.Now()
	if full {
		for _, ep := range all {
			_, in := cand[ep]
			ep.setOutside(!in, now)
		}
	} else {
		for ep := range s.cand {
			if _, in := cand[ep]; !in {
				ep.setOutside(true, now)
			}
		}
		for _, ep := range list {
			ep.setOutside(false, now)
		}
	}
	// Endpoints no longer candidates are no longer health checked: their
	// health is unknown from now on, as a new endpoint's (see syncChecker).
	if e.prot != nil && e.prot.hc != nil {
		for ep := range s.cand {
			if _, in := cand[ep]; !in && !ep.Removed() && ep.Conditions()&Unhealthy != 0 {
				e.setConditionLocked(ep, Unhealthy, false, "left the subset: no longer health checked")
			}
		}
	}
	changed := len(cand) != len(s.cand)
	var joined, left []string
	for ep, member := range cand {
		was, ok := s.cand[ep]
		changed = changed || !ok
		if member && !was {
			joined = append(joined, ep.addr)
		}
	}
	for ep, was := range s.cand {
		member, ok := cand[ep]
		changed = changed || !ok
		if was && !member && !ep.Removed() {
			left = append(left, ep.addr)
		}
	}
	s.cand, s.list = cand, list
	if len(joined) > 0 || len(left) > 0 {
		slices.Sort(joined)
		slices.Sort(left)
		e.opts.Logger.Info("lodestar: subset changed", "service", e.opts.Service,
			"joined", strings.Join(joined, ","), "left", strings.Join(left, ","),
			"members", countMembers(cand), "candidates", len(list), "endpoints", len(all))
	}
	if changed && !e.closed {
		e.subsetChanged()
	}
	return list
}

func countMembers(cand map[*Endpoint]bool) int {
	n := 0
	for _, m := range cand {
		if m {
			n++
		}
	}
	return n
}

// subsetChanged tells the front door, and the active checker, that the
// candidates changed. Called under the engine's lock.
func (e *Engine) subsetChanged() {
	if e.opts.OnSubsetChange != nil {
		e.opts.OnSubsetChange()
	}
	if e.prot != nil && e.prot.checker != nil && !e.closed {
		e.wg.Add(1) // Close waits for it
		go func() {
			defer e.wg.Done()
			e.syncChecker()
		}()
	}
}

// cfgChanged reports whether cfg resolves to other parameters than s's.
func (s *subsetter) cfgChanged(cfg *SubsetConfig) bool {
	p, err := cfg.resolve()
	return err == nil && p != s.p
}

// sameSet reports whether all is the set (and, when grouped, the discovery
// records) the ranking was made for. Membership changes make a new sorted
// slice (mergeSorted), so comparing the slices' identity is enough for them.
func (s *subsetter) sameSet(all []*Endpoint) bool {
	if len(all) != len(s.all) || len(all) > 0 && &all[0] != &s.all[0] || s.groups == nil && len(all) > 0 {
		return false
	}
	for i, ep := range all {
		if any(ep.Info()) != s.infos[i] {
			return false
		}
	}
	return true
}

// rerank updates a rendezvous ranking of one group for all in O(n + a log a)
// (a: the endpoints that joined), where rank sorts every endpoint again: the
// departed leave the ranking and the joined are merged in by their scores,
// which do not depend on the others. It reports false, changing nothing,
// when that does not apply: deterministic mode (whose shuffle follows the
// count), several groups, an endpoint that stayed with a new discovery
// record, or a joiner in another group than the others.
func (s *subsetter) rerank(all []*Endpoint) bool {
	if len(s.groups) != 1 || len(s.all) == 0 {
		return false
	}
	grp := s.groups[0]
	g := s.grouping
	located := g.zone != "" || g.region != ""
	if located || len(g.split) > 0 {
		return false
	}
	old := s.all
	var added []*Endpoint
	infos := make([]any, 0, len(all))
	for i, j := 0, 0; i < len(old) || j < len(all); {
		switch {
		case i < len(old) && j < len(all) && old[i] == all[j]:
			info := any(all[j].Info())
			if info != s.infos[i] {
				return false
			}
			infos = append(infos, info)
			i++
			j++
		case j == len(all) || i < len(old) && old[i].addr <= all[j].addr:
			i++ // departed
		default:
			if all[j].Info().Priority != grp.key.prio {
				return false
			}
			added = append(added, all[j])
			infos = append(infos, any(all[j].Info()))
			j++
		}
	}
	// Rendezvous ranks by score, highest first; deterministic by its round's
	// shuffle, lowest first, which stays while the number of subsets per
	// round (and so the client's round and slice) does.
	seed, desc := s.seed, true
	if s.p.deterministic {
		if len(all)/s.p.size != len(old)/s.p.size {
			return false
		}
		seed, desc = s.roundSeed(len(all)), false
	}
	key := func(ep *Endpoint) uint64 { return mix64(ep.addrHash ^ seed) }
	before := func(a, b *Endpoint) bool { // a ranks before b
		ka, kb := key(a), key(b)
		if ka != kb {
			return ka > kb == desc
		}
		return a.addr < b.addr
	}
	sortByKey(added, key, desc)
	ranked := make([]*Endpoint, 0, len(all))
	a := 0
	for _, ep := range grp.ranked {
		if ep.Removed() {
			continue
		}
		for a < len(added) && before(added[a], ep) {
			ranked = append(ranked, added[a])
			a++
		}
		ranked = append(ranked, ep)
	}
	ranked = append(ranked, added[a:]...)
	if len(ranked) != len(all) {
		return false // the ranking held an endpoint all lacks without its being removed
	}
	grp.ranked, s.all, s.infos = ranked, all, infos
	s.reranks++
	return true
}

// rank makes the groups' rankings for all.
func (s *subsetter) rank(all []*Endpoint) {
	s.all = all
	g := s.grouping
	located := g.zone != "" || g.region != ""
	byKey := map[subsetGroupKey]*subsetGroup{}
	s.groups = s.groups[:0]
	for _, ep := range all {
		info := ep.Info()
		k := subsetGroupKey{rule: -1, prio: info.Priority}
		if located {
			k.zone = g.zoneClass(info.Locality)
		}
		if len(g.split) > 0 {
			k.rule = slices.IndexFunc(g.split, func(r SplitRule) bool { return matches(info.Metadata, r.Match) })
		}
		grp := byKey[k]
		if grp == nil {
			grp = &subsetGroup{key: k}
			byKey[k] = grp
			s.groups = append(s.groups, grp)
		}
		grp.ranked = append(grp.ranked, ep)
	}
	// A discovery record that changes (priority, locality, metadata) may
	// move its endpoint to another group: sameSet compares the records.
	s.infos = make([]any, len(all))
	for i, ep := range all {
		s.infos[i] = any(ep.Info())
	}
	slices.SortFunc(s.groups, func(a, b *subsetGroup) int {
		return cmp.Or(cmp.Compare(a.key.rule, b.key.rule), cmp.Compare(a.key.prio, b.key.prio), cmp.Compare(a.key.zone, b.key.zone))
	})
	for _, grp := range s.groups {
		s.order(grp)
	}
}

// order sorts a group's endpoints by rank and sets where its walk starts.
func (s *subsetter) order(grp *subsetGroup) {
	n := len(grp.ranked)
	if !s.p.deterministic {
		// Rendezvous: highest score first; each endpoint's score is its
		// address hash mixed with the client's.
		key := func(ep *Endpoint) uint64 { return mix64(ep.addrHash ^ s.seed) }
		sortByKey(grp.ranked, key, true)
		grp.start = 0
		return
	}
	// Deterministic (SRE book, chapter 20): subsetCount = N/size subsets per
	// round; the client's round is index/subsetCount, whose shuffle is the
	// order of hash(round, address), independent of discovery order; its
	// slice is subset index%subsetCount.
	rs := s.roundSeed(n)
	key := func(ep *Endpoint) uint64 { return mix64(ep.addrHash ^ rs) }
	sortByKey(grp.ranked, key, false)
	grp.start = 0
	if count := n / s.p.size; count > 0 {
		grp.start = s.p.index % count * s.p.size
	}
}

// roundSeed is the seed of the deterministic shuffle of the client's round in
// a group of n endpoints.
func (s *subsetter) roundSeed(n int) uint64 {
	round := 0
	if count := n / s.p.size; count > 0 {
		round = s.p.index / count
	}
	return mix64(uint64(round) + 0x9e3779b97f4a7c15)
}

// sortByKey sorts eps by key (descending when desc), ties by address.
func sortByKey(eps []*Endpoint, key func(*Endpoint) uint64, desc bool) {
	type kv struct {
		k  uint64
		ep *Endpoint
	}
	tmp := make([]kv, len(eps))
	for i, ep := range eps {
		tmp[i] = kv{key(ep), ep}
	}
	slices.SortFunc(tmp, func(a, b kv) int {
		c := cmp.Compare(a.k, b.k)
		if desc {
			c = -c
		}
		return cmp.Or(c, cmp.Compare(a.ep.addr, b.ep.addr))
	})
	for i := range tmp {
		eps[i] = tmp[i].ep
	}
}

// walk adds the group's candidates to cand (true for members) and list: the
// ranking from start (wrapping), until size endpoints qualify.
func (g *subsetGroup) walk(size int, cand map[*Endpoint]bool, list []*Endpoint) []*Endpoint {
	n, members := len(g.ranked), 0
	for i := 0; i < n && members < size; i++ {
		ep := g.ranked[(g.start+i)%n]
		q := Condition(ep.conds.Load())&subsetQualify == 0
		if q {
			members++
		}
		cand[ep] = q
		list = append(list, ep)
	}
	return list
}

// setOutside sets or clears the internal outside condition, without an event.
// Joining the subset counts as becoming eligible for slow start.
func (ep *Endpoint) setOutside(on bool, now time.Time) { ep.setCondition(outside, on, now) }

// SubsetCandidates returns the endpoints the front door should keep
// connections to, by address, and true, when subsetting is on: the subset's
// members and the better-ranked endpoints they stand in for (unhealthy,
// ejected, breaker-open or paused ones, which come back when they recover).
// With subsetting off it returns nil, false: every endpoint is a candidate.
func (e *Engine) SubsetCandidates() ([]*Endpoint, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.sub == nil {
		return nil, false
	}
	return slices.Clone(e.sub.list), true
}

// InSubset reports whether ep is a candidate of the engine's subset (always
// true with subsetting off).
func (e *Engine) InSubset(ep *Endpoint) bool {
	return Condition(ep.conds.Load())&outside == 0
}
