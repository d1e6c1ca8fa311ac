package balancer

import (
	"fmt"
	"maps"
	"math"
	"math/bits"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/lodestar-go/lodestar/resolver"
)

// Locality, priority tiers and weighted splits.
//
// At every rebuild (rebuildLocked) the engine asks its groupingMode for a
// plan: when endpoints carry different priorities, the caller's locality is
// known and endpoints sit in different zone groups, or a split is configured,
// the plan partitions the endpoints into leaf groups, subset × tier × zone
// group (the caller's zone, the rest of its region, the rest), works out the
// share of requests each gets, and the algorithm builds one picker per leaf.
// The snapshot then holds a grouped picker that draws a leaf with one random
// number (21 bits for the subset, 21 for the tier, 21 for the zone group) and
// delegates to its picker: a pick stays O(1), lock-free and allocation-free.
// A request with an affinity hash draws from the hash instead (mixed, so the
// leaf's own use of the hash is independent), so a key keeps its leaf.
//
// When nothing applies the plan is nil and the engine runs exactly as
// before; when it leaves a single leaf with fixed shares, the snapshot holds
// that leaf's picker itself.
//
// Two things change shares between rebuilds, both refreshed by a pick that
// draws a 1-in-N chance (N the next power of two at or above 64 and the
// number of endpoints the refresh reads, so its O(n) scan costs O(1) per pick
// on average), storing the new thresholds in atomics:
//
//   - the failback ramp: when a tier that lost its traffic gets usable
//     endpoints back, its load climbs linearly from what it had to its new
//     load over the algorithm's slowStart.window (failover is immediate);
//   - load-aware spill (LocalityConfig.SpillWhenLoaded): the local group's
//     in-flight requests per endpoint are compared with the others' and the
//     local share scaled by a multiplier that the refresh moves towards the
//     point where they are in the configured ratio.

// Shares are fixed-point fractions of shareOne: 21 bits, so that three
// independent draws fit one 64-bit random number.
const (
	shareBits = 21
	shareOne  = 1 << shareBits
	shareMask = shareOne - 1
)

// Zone groups of a tier, in order of preference.
const (
	zoneLocal  = iota // the caller's zone
	zoneRegion        // the other zones of the caller's region
	zoneRest          // everything else
)

// groupingMode is the locality, priority and split part of one configuration
// (made by newMode). Its memory fields are guarded by the engine's mu: only
// plan, called from rebuildLocked, touches them.
type groupingMode struct {
	zone, region string
	minLocal     int
	spill        float64 // LocalityConfig.SpillWhenLoaded, 0 for off
	factor       float64 // overprovisioning factor
	split        []SplitRule
	window       int64 // failback ramp, ns: the algorithm's slow start window

	emptyNote string                // the empty subsets last logged
	subs      map[int]*subsetMemory // by subset key (rule index, -1 without split)
}

// subsetMemory is what one subset's plan keeps across rebuilds, for the
// failback ramp.
type subsetMemory struct {
	health map[int]float64 // tier health by priority at the last rebuild
	peak   map[int]float64 // highest health each tier had
	to     map[int]float64 // the loads the last plan aims at
	from   map[int]float64 // the ramp's start loads, nil when not ramping
	start  int64           // the ramp's start, unix ns
}

func newGroupingMode(cfg Config, alg Algorithm) *groupingMode {
	caller := cfg.Locality.Caller()
	g := &groupingMode{zone: caller.Zone, region: caller.Region, minLocal: DefaultMinLocalEndpoints,
		factor: DefaultOverprovisioningFactor, split: cfg.Split, subs: map[int]*subsetMemory{}}
	if l := cfg.Locality; l != nil {
		if l.MinLocalEndpoints > 0 {
			g.minLocal = l.MinLocalEndpoints
		}
		g.spill = l.SpillWhenLoaded
	}
	if p := cfg.Priority; p != nil && p.OverprovisioningFactor > 0 {
		g.factor = p.OverprovisioningFactor
	}
	if ss, ok := alg.(slowStarter); ok {
		g.window = int64(ss.slowStartConfig().Window)
	}
	return g
}

// zoneClass returns the zone group of an endpoint at loc.
func (g *groupingMode) zoneClass(loc resolver.Locality) int {
	switch {
	case g.zone != "" && loc.Zone == g.zone && (g.region == "" || loc.Region == "" || loc.Region == g.region):
		return zoneLocal
	case g.region != "" && loc.Region == g.region:
		return zoneRegion
	}
	return zoneRest
}

// applies reports whether grouping changes anything for all: a split, two
// priorities, or (with the caller's locality known) two zone groups.
func (g *groupingMode) applies(all []*Endpoint) bool {
	if len(all) == 0 {
		return false
	}
	if len(g.split) > 0 {
		return true
	}
	located := g.zone != "" || g.region != ""
	first := all[0].Info()
	p0, c0 := first.Priority, g.zoneClass(first.Locality)
	for _, ep := range all[1:] {
		info := ep.Info()
		if info.Priority != p0 || located && g.zoneClass(info.Locality) != c0 {
			return true
		}
	}
	return false
}

// groupPlan is a snapshot's partition into leaves and their shares.
type groupPlan struct {
	g         *groupingMode
	endpoints []*Endpoint // every endpoint picks may return, by address
	tolerated Condition   // Unhealthy|Ejected when a tier is in panic
	why       string      // which tiers are in panic
	subsets   []subsetPlan
	cum       []uint32 // cumulative subset shares
	now       func() time.Time
}

type subsetPlan struct {
	name  string
	tiers []tierPlan // those with leaves, by priority
	loads []float64  // tier loads now
	from  []float64  // ramp start loads (aligned with tiers), nil when static
	to    []float64
	start int64
	share float64
}

type tierPlan struct {
	prio   int
	panic  bool
	leaves [3][]*Endpoint // by zone group; only zoneRest without locality or in panic
	zin    zoneInputs
}

// zoneInputs are what a tier's zone shares are computed from.
type zoneInputs struct {
	level int        // 0: no preference; zoneLocal+1: the zone; zoneRegion+1: the region
	l, u  [3]float64 // each group's share of the tier's discovered and of its usable capacity (weights)
}

// shares returns the share of each zone group, the local group's scaled by
// m (load-aware spill, 1 for none). Envoy's zone-aware routing, with the
// callers assumed spread as the endpoints are: the local group keeps what its
// usable capacity covers of its expected share (u/l, at most all of it); the
// residual goes to the region first, as far as its surplus (u-l) reaches, and
// the rest to the rest. A load spill goes to the others by usable capacity.
func (z *zoneInputs) shares(m float64) (f [3]float64) {
	switch z.level {
	case zoneLocal + 1:
		others := z.u[zoneRegion] + z.u[zoneRest]
		if others == 0 {
			return [3]float64{1, 0, 0}
		}
		keep := 1.0
		if z.u[zoneLocal] < z.l[zoneLocal] {
			keep = z.u[zoneLocal] / z.l[zoneLocal]
		}
		capSpill, loadSpill := 1-keep, keep*(1-m)
		var toRegion float64
		if d := z.l[zoneLocal] - z.u[zoneLocal]; capSpill > 0 && d > 0 {
			toRegion = capSpill * min(d, max(0, z.u[zoneRegion]-z.l[zoneRegion])) / d
		}
		f[zoneLocal] = keep * m
		f[zoneRegion] = toRegion + loadSpill*z.u[zoneRegion]/others
		f[zoneRest] = capSpill - toRegion + loadSpill*z.u[zoneRest]/others
	case zoneRegion + 1:
		lr, ur := z.l[zoneLocal]+z.l[zoneRegion], z.u[zoneLocal]+z.u[zoneRegion]
		keep := 1.0
		if ur < lr {
			keep = ur / lr
		}
		if z.u[zoneRest] == 0 {
			keep, m = 1, 1
		}
		keep *= m
		f[zoneLocal] = keep * z.u[zoneLocal] / ur
		f[zoneRegion] = keep * z.u[zoneRegion] / ur
		f[zoneRest] = 1 - keep
	default:
		return z.u
	}
	return f
}

// packShares turns zone shares into the two thresholds a pick compares with.
func packShares(f [3]float64) uint64 {
	t1 := toShare(f[zoneLocal])
	t2 := max(t1, toShare(f[zoneLocal]+f[zoneRegion]))
	return uint64(t1) | uint64(t2)<<32
}

func toShare(x float64) uint32 {
	return uint32(min(shareOne, max(0, math.Round(x*shareOne))))
}

// plan partitions all (sorted by address) for a snapshot, or returns nil
// when no locality, priority or split applies. Called under the engine's mu.
func (g *groupingMode) plan(e *Engine, all []*Endpoint, panicThreshold float64) *groupPlan {
	if !g.applies(all) {
		return nil
	}
	p := &groupPlan{g: g, now: e.opts.Now}
	now := e.opts.Now().UnixNano()
	var empty []string
	var whys []string
	if len(g.split) > 0 {
		members := make([][]*Endpoint, len(g.split))
		var outside bool
		for _, ep := range all {
			md := ep.Info().Metadata
			i := slices.IndexFunc(g.split, func(r SplitRule) bool { return matches(md, r.Match) })
			if i < 0 {
				outside = true
				continue
			}
			members[i] = append(members[i], ep)
		}
		// A subset with no usable endpoint hands its share to the others
		// while another subset has one; only when none has, subsets in
		// panic take requests (Config.PanicThreshold).
		usable := make([]bool, len(g.split))
		anyUsable, outsideUsable := false, false
		for i := range g.split {
			usable[i] = slices.ContainsFunc(members[i], (*Endpoint).eligible)
			anyUsable = anyUsable || usable[i] && g.split[i].Weight > 0
		}
		if outside && !anyUsable {
			outsideUsable = slices.ContainsFunc(all, func(ep *Endpoint) bool {
				return ep.eligible() && !slices.ContainsFunc(g.split, func(r SplitRule) bool { return matches(ep.Info().Metadata, r.Match) })
			})
		}
		var total float64
		for i, r := range g.split {
			name := r.Name
			if name == "" {
				name = fmt.Sprintf("split[%d]", i)
			}
			if !usable[i] && (anyUsable || outsideUsable) {
				g.forget(i)
				empty = append(empty, name)
				continue
			}
			sp, ok, why := g.planSubset(i, name, members[i], panicThreshold, now)
			if why != "" {
				whys = append(whys, name+": "+why)
			}
			if !ok || r.Weight == 0 {
				if !ok {
					empty = append(empty, name)
				}
				continue
			}
			sp.share = float64(r.Weight)
			total += sp.share
			p.subsets = append(p.subsets, sp)
		}
		if total == 0 && outside {
			// No subset can take requests: serve from every endpoint
			// rather than fail them.
			p.subsets, whys = p.subsets[:0], whys[:0]
			empty = append(empty, "(all: ignoring the split)")
			if sp, ok, why := g.planSubset(-1, "", all, panicThreshold, now); ok {
				sp.share, total = 1, 1
				p.subsets = append(p.subsets, sp)
				if why != "" {
					whys = append(whys, why)
				}
			}
		}
		var acc float64
		for i := range p.subsets {
			acc += p.subsets[i].share / total
			p.subsets[i].share /= total
			p.cum = append(p.cum, toShare(acc))
		}
		if n := len(p.cum); n > 0 {
			p.cum[n-1] = shareOne
		}
	} else if sp, ok, why := g.planSubset(-1, "", all, panicThreshold, now); ok {
		sp.share = 1
		p.subsets, p.cum = []subsetPlan{sp}, []uint32{shareOne}
		if why != "" {
			whys = append(whys, why)
		}
	}
	if note := strings.Join(empty, ", "); note != g.emptyNote {
		if note != "" {
			e.opts.Logger.Warn("lodestar: split subsets with no usable endpoint hand their share to the others",
				"service", e.opts.Service, "subsets", note)
		} else {
			e.opts.Logger.Info("lodestar: every split subset has usable endpoints again", "service", e.opts.Service)
		}
		g.emptyNote = note
	}
	// The snapshot's endpoints: every endpoint of a leaf, by address.
	in := map[*Endpoint]bool{}
	for i := range p.subsets {
		for j := range p.subsets[i].tiers {
			t := &p.subsets[i].tiers[j]
			if t.panic {
				p.tolerated = Unhealthy | Ejected
			}
			for _, leaf := range t.leaves {
				for _, ep := range leaf {
					in[ep] = true
				}
			}
		}
	}
	p.endpoints = make([]*Endpoint, 0, len(in))
	for _, ep := range all {
		if in[ep] {
			p.endpoints = append(p.endpoints, ep)
		}
	}
	p.why = strings.Join(whys, "; ")
	return p
}

// matches reports whether md holds every key of want with its value.
func matches(md, want map[string]string) bool {
	for k, v := range want {
		if got, ok := md[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// tierCounts is one tier while a subset is planned.
type tierCounts struct {
	prio               int
	members            []*Endpoint
	usable, connected  int
	health, load, from float64
	panic              bool
}

// planSubset plans one subset's tiers (Envoy's priority load, with the panic
// threshold per tier) and their zone groups. ok is false when the subset has
// no endpoint to send to; why names the tiers in panic.
func (g *groupingMode) planSubset(key int, name string, members []*Endpoint, threshold float64, now int64) (sp subsetPlan, ok bool, why string) {
	sp.name = name
	byPrio := map[int][]*Endpoint{}
	for _, ep := range members {
		p := ep.Info().Priority
		byPrio[p] = append(byPrio[p], ep)
	}
	prios := slices.Sorted(maps.Keys(byPrio))
	tiers := make([]tierCounts, len(prios))
	var total float64
	for i, p := range prios {
		t := &tiers[i]
		t.prio, t.members = p, byPrio[p]
		for _, ep := range t.members {
			c := Condition(ep.conds.Load())
			if c == 0 {
				t.usable++
			}
			if c&(NotConnected|BreakerOpen|Paused|removed) == 0 {
				t.connected++
			}
		}
		t.health = min(1, g.factor*float64(t.usable)/float64(len(t.members)))
		total += t.health
	}
	norm := min(1, total)
	if norm == 0 {
		// Nothing usable anywhere: in panic, the first connected tier
		// takes everything, over all its connected endpoints (Envoy).
		if threshold <= 0 {
			g.forget(key)
			return sp, false, ""
		}
		i := slices.IndexFunc(tiers, func(t tierCounts) bool { return t.connected > 0 })
		if i < 0 {
			g.forget(key)
			return sp, false, ""
		}
		tiers[i].load, tiers[i].panic = 1, true
	} else {
		left := 1.0
		for i := range tiers {
			tiers[i].load = min(left, tiers[i].health/norm)
			left -= tiers[i].load
		}
		if norm < 1 && threshold > 0 {
			// Not enough usable capacity over all tiers: a tier below the
			// panic threshold spreads its load over all its connected
			// endpoints.
			for i := range tiers {
				t := &tiers[i]
				if t.load > 0 && t.connected > 0 && float64(t.usable)*100 < threshold*float64(t.connected) {
					t.panic = true
				}
			}
		}
	}
	ramping := g.rampLocked(key, tiers, now)
	var whys []string
	for i := range tiers {
		t := &tiers[i]
		if t.load == 0 && t.from == 0 {
			continue
		}
		tp := tierPlan{prio: t.prio, panic: t.panic}
		if t.panic {
			whys = append(whys, fmt.Sprintf("priority %d: only %d of %d connected endpoints usable, below the %v%% panic threshold: spreading over all of them",
				t.prio, t.usable, t.connected, threshold))
			for _, ep := range t.members {
				if Condition(ep.conds.Load())&^(Unhealthy|Ejected) == 0 {
					tp.leaves[zoneRest] = append(tp.leaves[zoneRest], ep)
				}
			}
		} else {
			g.zones(&tp, t.members)
		}
		sp.tiers = append(sp.tiers, tp)
		sp.loads = append(sp.loads, t.load)
		if ramping {
			sp.from = append(sp.from, t.from)
			sp.to = append(sp.to, t.load)
		}
	}
	if ramping {
		sp.start = g.subs[key].start
		sp.loads = rampAt(sp.from, sp.to, sp.start, g.window, now, sp.loads)
	}
	return sp, len(sp.tiers) > 0, strings.Join(whys, "; ")
}

// zones fills a tier's zone groups from its members' usable endpoints.
func (g *groupingMode) zones(tp *tierPlan, members []*Endpoint) {
	if g.zone == "" && g.region == "" {
		for _, ep := range members {
			if ep.eligible() {
				tp.leaves[zoneRest] = append(tp.leaves[zoneRest], ep)
			}
		}
		tp.zin.u = [3]float64{0, 0, 1}
		return
	}
	var disc, usable [3]float64
	var n [3]int
	for _, ep := range members {
		c, w := g.zoneClass(ep.Info().Locality), float64(ep.Weight())
		disc[c] += w
		if ep.eligible() {
			usable[c] += w
			n[c]++
			tp.leaves[c] = append(tp.leaves[c], ep)
		}
	}
	var dsum, usum float64
	for c := range 3 {
		dsum += disc[c]
		usum += usable[c]
	}
	for c := range 3 {
		tp.zin.l[c], tp.zin.u[c] = disc[c]/dsum, usable[c]/usum
	}
	switch {
	case n[zoneLocal] > 0 && n[zoneLocal] >= g.minLocal:
		tp.zin.level = zoneLocal + 1
	case g.region != "" && n[zoneLocal]+n[zoneRegion] > 0 && n[zoneLocal]+n[zoneRegion] >= g.minLocal:
		tp.zin.level = zoneRegion + 1
	}
}

// forget drops a subset's ramp memory (it has nothing to send to).
func (g *groupingMode) forget(key int) { delete(g.subs, key) }

// rampLocked decides a subset's failback ramp and sets each tier's from (the
// load it ramps from; t.load is where it goes). It reports whether a ramp
// runs. When a tier's health rises back towards a level it had before and
// its load rises with it (a failback), the loads ramp from those in force
// now to the new ones over the window, unless some tier's health fell
// meanwhile: a failover is never delayed. A tier whose health never was
// higher (endpoints connecting at start, a new tier) gets its load at once.
func (g *groupingMode) rampLocked(key int, tiers []tierCounts, now int64) bool {
	mem := g.subs[key]
	if mem == nil {
		mem = &subsetMemory{health: map[int]float64{}, peak: map[int]float64{}}
		g.subs[key] = mem
	}
	target := make(map[int]float64, len(tiers))
	health := make(map[int]float64, len(tiers))
	for _, t := range tiers {
		target[t.prio], health[t.prio] = t.load, t.health
	}
	fell := false
	for p, h := range mem.health {
		if health[p] < h-1e-9 {
			fell = true
		}
	}
	var cur map[int]float64 // the loads in force now
	if mem.to != nil {
		cur = mem.to
		if mem.from != nil {
			cur = map[int]float64{}
			alpha := rampAlpha(mem.start, g.window, now)
			for p := range union(mem.from, mem.to) {
				cur[p] = mem.from[p] + (mem.to[p]-mem.from[p])*alpha
			}
		}
	}
	ramping := false
	if g.window > 0 && !fell && cur != nil {
		if mem.from != nil && maps.Equal(target, mem.to) && rampAlpha(mem.start, g.window, now) < 1 {
			ramping = true // the same ramp goes on
		} else {
			// A failback: a tier's health rose back towards a level it
			// had before, and its load rises with it.
			gain := false
			for p, l := range target {
				if l > cur[p]+1e-9 && health[p] > mem.health[p]+1e-9 && mem.peak[p] > mem.health[p]+1e-9 {
					gain = true
				}
			}
			if gain {
				// Start from the loads in force, on tiers that can still
				// take them.
				from := map[int]float64{}
				var sum float64
				for _, t := range tiers {
					if l := cur[t.prio]; l > 0 && (t.usable > 0 || t.panic) {
						from[t.prio] = l
						sum += l
					}
				}
				if sum > 0 {
					for p := range from {
						from[p] /= sum
					}
					mem.from, mem.start, ramping = from, now, true
				}
			}
		}
	}
	if !ramping {
		mem.from = nil
	}
	mem.to, mem.health = target, health
	for p, h := range health {
		mem.peak[p] = max(mem.peak[p], h)
	}
	if ramping {
		for i := range tiers {
			tiers[i].from = mem.from[tiers[i].prio]
		}
	}
	return ramping
}

func union(a, b map[int]float64) map[int]float64 {
	u := maps.Clone(a)
	maps.Copy(u, b)
	return u
}

// rampAlpha is how far a ramp that started at start has gone at now, in [0, 1].
func rampAlpha(start, window, now int64) float64 {
	if window <= 0 || now-start >= window {
		return 1
	}
	return max(0, float64(now-start)/float64(window))
}

// rampAt writes the loads at now of a ramp from from to to into out.
func rampAt(from, to []float64, start, window, now int64, out []float64) []float64 {
	alpha := rampAlpha(start, window, now)
	for i := range to {
		out[i] = from[i] + (to[i]-from[i])*alpha
	}
	return out
}

// picker builds the leaves' pickers with alg and returns the grouped picker,
// or the only leaf's picker when there is one leaf and nothing moves.
func (p *groupPlan) picker(alg Algorithm, bi BuildInfo) Picker {
	g := &grouped{rand: bi.Rand, now: bi.Now, spill: p.g.spill, window: p.g.window}
	g.subsets = make([]groupedSubset, len(p.subsets))
	g.cum = p.cum
	var leaves []*Picker
	var counting, plain int
	var only Picker
	spillEps := 0
	for i := range p.subsets {
		sp, gs := &p.subsets[i], &g.subsets[i]
		gs.tiers = make([]groupedTier, len(sp.tiers))
		gs.cum = make([]atomic.Uint32, len(sp.tiers))
		gs.storeLoads(sp.loads)
		if sp.from != nil {
			gs.from, gs.to, gs.start = sp.from, sp.to, sp.start
			gs.ramping.Store(true)
			g.ramps = true
		}
		for j := range sp.tiers {
			tp, gt := &sp.tiers[j], &gs.tiers[j]
			gt.zin = tp.zin
			gt.mult.Store(math.Float64bits(1))
			f := tp.zin.shares(1)
			gt.th.Store(packShares(f))
			if p.g.spill > 0 && tp.zin.level > 0 && !tp.panic {
				gt.spill = true
				for _, leaf := range tp.leaves {
					spillEps += len(leaf)
				}
			}
			for c, eps := range tp.leaves {
				if len(eps) == 0 {
					continue
				}
				lbi := bi
				lbi.Endpoints, lbi.Members = eps, eps
				if bi.AddTotalInFlight != nil {
					lbi.AddTotalInFlight = scaledTotal(bi.AddTotalInFlight, sp.share*sp.loads[j]*f[c], len(eps), len(p.endpoints))
				}
				gt.leaves[c] = alg.Build(lbi)
				gt.eps[c] = eps
				if _, ok := gt.leaves[c].(SelfCounting); ok {
					counting++
				} else {
					plain++
				}
				only = gt.leaves[c]
				leaves = append(leaves, &gt.leaves[c])
			}
		}
	}
	if len(leaves) == 0 {
		return nil
	}
	if len(leaves) == 1 && !g.ramps && spillEps == 0 {
		return only
	}
	g.spilling = spillEps > 0
	g.dynamic.Store(g.ramps || g.spilling)
	g.mask = 63
	if spillEps > 64 {
		g.mask = 1<<bits.Len(uint(spillEps-1)) - 1
	}
	if counting > 0 && plain > 0 {
		// One algorithm built pickers of both kinds: count for the plain
		// ones, so that every leaf counts for itself.
		for _, l := range leaves {
			if _, ok := (*l).(SelfCounting); !ok {
				*l = &countingLeaf{p: *l, add: bi.AddTotalInFlight}
			}
		}
	}
	for i := range g.subsets {
		for j := range g.subsets[i].tiers {
			gt := &g.subsets[i].tiers[j]
			for _, l := range gt.leaves {
				if l != nil {
					gt.first = l
					break
				}
			}
		}
	}
	if counting > 0 {
		return &groupedCounting{g}
	}
	return g
}

// scaledTotal gives a leaf of a TotalCounting algorithm the engine's total
// scaled by the leaf's expected share of requests, so that a cap derived from
// the average load stays about right within the leaf. A leaf expected to get
// nothing is scaled by its share of the endpoints.
func scaledTotal(add func(int64) int64, share float64, n, all int) func(int64) int64 {
	if share <= 0 {
		share = float64(n) / float64(max(all, 1))
	}
	if share >= 1 {
		return add
	}
	return func(d int64) int64 {
		t := add(d)
		if t <= 0 {
			return t
		}
		return max(1, int64(math.Ceil(float64(t)*share)))
	}
}

// countingLeaf counts its picks in flight itself, as a SelfCounting picker
// does, for a leaf whose picker does not.
type countingLeaf struct {
	p   Picker
	add func(int64) int64
}

func (c *countingLeaf) Pick(info PickInfo) (*Endpoint, error) {
	ep, err := c.p.Pick(info)
	if err != nil {
		return nil, err
	}
	if c.add != nil {
		c.add(1)
	}
	ep.Acquire()
	return ep, nil
}

func (*countingLeaf) CountsInFlight() {}

// grouped is the snapshot's picker when there are several leaves: it draws
// the subset, the tier and the zone group, and delegates to that leaf.
type grouped struct {
	rand    func() uint64
	now     func() time.Time
	subsets []groupedSubset
	cum     []uint32 // cumulative subset shares

	spill    float64 // LocalityConfig.SpillWhenLoaded
	window   int64
	ramps    bool // a subset ramped when built
	spilling bool // a tier has load-aware spill
	mask     uint64
	dynamic  atomic.Bool // refreshes are due: ramps run, or spill is on
}

type groupedSubset struct {
	tiers    []groupedTier
	cum      []atomic.Uint32 // cumulative tier loads
	from, to []float64       // the failback ramp, when ramping
	start    int64
	ramping  atomic.Bool
}

type groupedTier struct {
	leaves [3]Picker // by zone group
	eps    [3][]*Endpoint
	first  Picker        // the first leaf that is not nil
	th     atomic.Uint64 // zone thresholds: local | (local+region)<<32
	zin    zoneInputs
	mult   atomic.Uint64 // load-aware spill's multiplier of the local share (float64 bits)
	spill  bool
}

// groupedCounting is grouped over SelfCounting leaves.
type groupedCounting struct{ *grouped }

func (*groupedCounting) CountsInFlight() {}

// Pick draws a leaf and picks from it.
func (g *grouped) Pick(info PickInfo) (*Endpoint, error) {
	var r uint64
	if info.HasHash {
		r = leafDraw(info.Hash)
		if g.dynamic.Load() && g.rand()&g.mask == 0 {
			g.refresh()
		}
	} else {
		// One random number: its low bits also sample the refresh (which
		// leaf this pick takes does not matter to it).
		r = g.rand()
		if r&g.mask == 0 && g.dynamic.Load() {
			g.refresh()
		}
	}
	s := &g.subsets[0]
	if len(g.subsets) > 1 {
		s = &g.subsets[pickCum(g.cum, uint32(r&shareMask))]
	}
	t := &s.tiers[0]
	if len(s.tiers) > 1 {
		u := uint32(r>>shareBits) & shareMask
		i := 0
		for i < len(s.tiers)-1 && u >= s.cum[i].Load() {
			i++
		}
		t = &s.tiers[i]
	}
	u, th := uint32(r>>(2*shareBits))&shareMask, t.th.Load()
	c := zoneRest
	if u < uint32(th) {
		c = zoneLocal
	} else if u < uint32(th>>32) {
		c = zoneRegion
	}
	if p := t.leaves[c]; p != nil {
		return p.Pick(info)
	}
	return t.first.Pick(info)
}

// pickCum returns the index of the first cumulative share above u.
func pickCum(cum []uint32, u uint32) int {
	for i, c := range cum {
		if u < c {
			return i
		}
	}
	return len(cum) - 1
}

// leafDraw scrambles an affinity hash (splitmix64's finalizer, after a
// constant that sets it apart from maglev's second hash) so that the leaf
// drawn from it is independent of where the hash lands within the leaf.
func leafDraw(h uint64) uint64 { return mix64(h ^ 0x5851f42d4c957f2d) }

// storeLoads publishes tier loads as cumulative thresholds.
func (s *groupedSubset) storeLoads(loads []float64) {
	var acc float64
	for i, l := range loads {
		acc += l
		s.cum[i].Store(toShare(acc))
	}
	if n := len(s.cum); n > 0 {
		s.cum[n-1].Store(shareOne)
	}
}

// refresh moves the failback ramps on and recomputes load-aware spill. Any
// pick may run it (about one in mask+1 do); concurrent runs store what they
// computed, each consistent.
func (g *grouped) refresh() {
	still := g.spilling
	if g.ramps {
		now := g.now().UnixNano()
		for i := range g.subsets {
			s := &g.subsets[i]
			if !s.ramping.Load() {
				continue
			}
			alpha := rampAlpha(s.start, g.window, now)
			var acc float64
			for j := range s.to {
				acc += s.from[j] + (s.to[j]-s.from[j])*alpha
				s.cum[j].Store(toShare(acc))
			}
			s.cum[len(s.cum)-1].Store(shareOne)
			if alpha < 1 {
				still = true
			} else {
				s.ramping.Store(false)
			}
		}
	}
	if g.spilling {
		for i := range g.subsets {
			for j := range g.subsets[i].tiers {
				if t := &g.subsets[i].tiers[j]; t.spill {
					t.updateSpill(g.spill)
				}
			}
		}
	}
	if !still {
		g.dynamic.Store(false)
	}
}

// updateSpill compares the local group's in-flight requests per endpoint
// with the others' (counted as at least 1) and moves the multiplier of the
// local share: down while local is above spill times the others, back up
// (at most doubling per refresh) while it is below.
func (t *groupedTier) updateSpill(spill float64) {
	var li, oi int64
	var ln, on int
	for c, eps := range t.eps {
		local := c == zoneLocal || c == zoneRegion && t.zin.level == zoneRegion+1
		for _, ep := range eps {
			if local {
				li += ep.InFlight()
				ln++
			} else {
				oi += ep.InFlight()
				on++
			}
		}
	}
	if ln == 0 || on == 0 {
		return
	}
	la := float64(li) / float64(ln)
	limit := spill * max(1, float64(oi)/float64(on))
	m := math.Float64frombits(t.mult.Load())
	next := m
	if la > limit {
		next = max(0.05, m*math.Sqrt(limit/la))
	} else if m < 1 {
		next = min(1, m*math.Sqrt(min(4, limit/max(la, 1e-9))))
	}
	if next != m {
		t.mult.Store(math.Float64bits(next))
		t.th.Store(packShares(t.zin.shares(next)))
	}
}
