package retry

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"

	"github.com/lodestar-go/lodestar/internal/monotime"
)

// The latency tracker's histogram: log-linear buckets of microseconds, 16
// per power of two (HdrHistogram's layout with 4 sub-bucket bits), so that a
// bucket is at most 1/16 of its values wide (or 1µs, below 32µs). Values
// from 0 to 2³²-1 µs (about 71 minutes) have buckets; longer ones count in
// the last.
const (
	latencySubBits  = 4
	latencySub      = 1 << latencySubBits // buckets per power of two
	latencyMaxMicro = 1<<32 - 1
	latencyBuckets  = (32 - latencySubBits + 1) * latencySub // 464: latencyMaxMicro's is the last
)

// latencySlots is how many generations the tracker's window is cut into: the
// window slides a generation at a time, so a sample counts for between
// (latencySlots-1)/latencySlots and one window. The ring has one slot more,
// which is cleared ahead of its generation, so that starting a generation
// costs the observers nothing.
const (
	latencySlots = 4
	latencyRing  = latencySlots + 1
)

// Slot generations that never match a clock reading's: a slot whose counts
// are zero, ready for any generation, and a slot being cleared.
const (
	slotFresh    = -2
	slotClearing = -1
)

// DefaultLatencyWindow is the window of the latency tracker a Policy's
// NewHedger makes: the percentile is over the last 7.5 to 10 seconds.
const DefaultLatencyWindow = 10 * time.Second

// MinLatencySamples is how many latencies a tracker must hold (over its
// window) before Quantile answers: a percentile of fewer is noise. Until
// then a percentile hedge is not sent (the request is retried as without
// hedging).
const MinLatencySamples = 100

// LatencyTracker keeps one service's recent latencies, for hedge delays
// given as a percentile ("p95"): a histogram of log-linear buckets per
// generation, the window being the last 4 generations of window/4 each.
// Observe is on every attempt's path: it takes no lock and allocates nothing
// (a clock read, an atomic load and an atomic add). Once per generation, the
// observer that starts it also clears the slot of the next one (the ring has
// a fifth slot, out of the window), one store per bucket, so a generation
// starts on a clean slot. Quantile reads every bucket of the window (about
// 1,900 atomic loads): it is for a caller that caches its answer, as Hedger
// does.
//
// Samples are exact in count but not in value: Quantile answers the upper
// edge of the bucket where the quantile falls, so it is never below the true
// quantile of the window's samples and above it by at most 1/16 (or 1µs).
// After an idle spell of more than a generation the next slot was not cleared
// ahead: the first observer clears it then, and a sample that races that
// clearing is dropped, as is a sample more than a window late (a stale clock
// reading); Dropped counts them. A sample a window late that races the
// clearing ahead of its slot may instead count in the next generation.
//
// A LatencyTracker is safe for concurrent use. Its zero value is not usable:
// make one with NewLatencyTracker.
type LatencyTracker struct {
	slot    time.Duration
	now     func() time.Duration
	dropped atomic.Uint64
	latest  atomic.Int64 // the newest generation started
	slots   [latencyRing]latencySlot
}

type latencySlot struct {
	gen    atomic.Int64 // the generation counted here, or slotFresh / slotClearing
	counts [latencyBuckets]atomic.Uint64
}

// NewLatencyTracker returns a tracker over the given window (at least 4ms:
// shorter windows are raised to it; 0 means DefaultLatencyWindow). now reads
// a monotonic clock, a duration since any fixed point that never decreases;
// nil means the package internal/monotime's clock, the one the HTTP door
// times attempts with. Tests pass a fake clock.
func NewLatencyTracker(window time.Duration, now func() time.Duration) *LatencyTracker {
	if window == 0 {
		window = DefaultLatencyWindow
	}
	window = max(window, latencySlots*time.Millisecond)
	if now == nil {
		now = monotime.Now
	}
	t := &LatencyTracker{slot: window / latencySlots, now: now}
	for i := range t.slots {
		t.slots[i].gen.Store(slotFresh)
	}
	t.latest.Store(-1)
	return t
}

// Window returns how long a sample counts, at most.
func (t *LatencyTracker) Window() time.Duration { return t.slot * latencySlots }

// Observe records one latency, at the tracker's clock's now.
func (t *LatencyTracker) Observe(d time.Duration) { t.ObserveAt(d, t.now()) }

// ObserveAt is Observe for a caller that has just read the tracker's clock
// (the HTTP door has: the attempt's end); now is that reading. Negative
// latencies count as 0.
func (t *LatencyTracker) ObserveAt(d, now time.Duration) {
	g := int64(max(now, 0) / t.slot)
	s := &t.slots[g%latencyRing]
	if s.gen.Load() != g && !t.start(s, g) {
		t.dropped.Add(1)
		return
	}
	s.counts[latencyBucket(d)].Add(1)
}

// start makes s count generation g, if s is fresh or holds an older one:
// the caller that wins the slot clears it if need be, and clears the next
// generation's slot ahead. It reports false when g is more than a window
// older than the newest generation, s holds a newer generation, or another
// caller is clearing s.
func (t *LatencyTracker) start(s *latencySlot, g int64) bool {
	for {
		old := s.gen.Load()
		switch {
		case old == g:
			return true
		case old > g || old == slotClearing || g <= t.latest.Load()-latencySlots:
			return false
		}
		if old == slotFresh {
			if !s.gen.CompareAndSwap(slotFresh, g) {
				continue
			}
		} else if s.gen.CompareAndSwap(old, slotClearing) {
			clearSlot(s)
			s.gen.Store(g)
		} else {
			continue
		}
		for l := t.latest.Load(); l < g && !t.latest.CompareAndSwap(l, g); l = t.latest.Load() {
		}
		// The next generation's slot holds generation g-4, out of the
		// window from g on: clear it now.
		next := &t.slots[(g+1)%latencyRing]
		if ng := next.gen.Load(); ng >= 0 && ng <= g+1-latencyRing && next.gen.CompareAndSwap(ng, slotClearing) {
			clearSlot(next)
			next.gen.Store(slotFresh)
		}
		return true
	}
}

func clearSlot(s *latencySlot) {
	for i := range s.counts {
		s.counts[i].Store(0)
	}
}

// Dropped counts the samples dropped because they raced the start of their
// generation's slot or came more than a window late.
func (t *LatencyTracker) Dropped() uint64 { return t.dropped.Load() }

// Count returns how many samples the window holds now.
func (t *LatencyTracker) Count() uint64 {
	var n uint64
	t.window(func(s *latencySlot) {
		for i := range s.counts {
			n += s.counts[i].Load()
		}
	})
	return n
}

// window calls f for each slot that holds a generation of the window ending
// now.
func (t *LatencyTracker) window(f func(s *latencySlot)) {
	g := int64(max(t.now(), 0) / t.slot)
	for i := range t.slots {
		s := &t.slots[i]
		if sg := s.gen.Load(); sg >= 0 && sg <= g && sg > g-latencySlots {
			f(s)
		}
	}
}

// Quantile returns the q-quantile (q in [0, 1]: 0.95 is the 95th percentile)
// of the window's latencies by the nearest-rank method: the smallest bucket
// edge at or below which at least ⌈q·n⌉ of the n samples fall (at least one).
// It reports false, and 0, when the window holds fewer than
// MinLatencySamples samples, or q is not a number in [0, 1].
func (t *LatencyTracker) Quantile(q float64) (time.Duration, bool) {
	if !(q >= 0 && q <= 1) {
		return 0, false
	}
	var sum [latencyBuckets]uint64
	var n uint64
	t.window(func(s *latencySlot) {
		for i := range s.counts {
			c := s.counts[i].Load()
			sum[i] += c
			n += c
		}
	})
	if n < MinLatencySamples {
		return 0, false
	}
	rank := max(uint64(math.Ceil(q*float64(n))), 1)
	var seen uint64
	for i, c := range sum {
		if seen += c; seen >= rank {
			return latencyUpper(i), true
		}
	}
	return latencyUpper(latencyBuckets - 1), true // counts raced the sum: the top
}

// latencyBucket returns the bucket of d.
func latencyBucket(d time.Duration) int {
	v := uint64(max(d, 0) / time.Microsecond)
	v = min(v, latencyMaxMicro)
	if v < latencySub {
		return int(v)
	}
	e := bits.Len64(v) - 1 // ≥ latencySubBits
	top := v >> (e - latencySubBits)
	return (e-latencySubBits+1)*latencySub + int(top) - latencySub
}

// latencyUpper returns the exclusive upper edge of bucket i: the smallest
// latency of the next bucket.
func latencyUpper(i int) time.Duration {
	if i < latencySub {
		return time.Duration(i+1) * time.Microsecond
	}
	e := i/latencySub + latencySubBits - 1
	top := uint64(i%latencySub + latencySub)
	return time.Duration((top+1)<<(e-latencySubBits)) * time.Microsecond
}

// Hedger is one service's hedging, for a front door: the policy's Hedge and,
// for a percentile delay, the service's LatencyTracker. A door calls
// ObserveAt with every attempt that got an answer (not one it cancelled: a
// cancelled attempt's time says nothing of the service's latency) and Delay
// before each hedgeable request. The gRPC door can share it as the HTTP door
// does.
//
// A percentile delay is the tracker's quantile, recomputed at most every
// 100ms (by the ObserveAt that finds it stale) and never below 1ms (the
// shortest fixed delay); Delay only loads it. Until the window holds
// MinLatencySamples samples there is no percentile, and Delay reports false:
// no hedging until the service has a latency record.
type Hedger struct {
	hedge   Hedge
	tracker *LatencyTracker // nil for a fixed delay
	q       float64
	delay   atomic.Int64 // the current percentile delay; 0 until there is one
	next    atomic.Int64 // the clock reading after which delay is recomputed
}

// hedgeRefresh is how often a Hedger recomputes its percentile delay.
const hedgeRefresh = 100 * time.Millisecond

// NewHedger returns the hedging state of one service under the policy, or
// nil when the policy does not hedge. now is the clock of its tracker (see
// NewLatencyTracker; nil means internal/monotime's); the window is
// DefaultLatencyWindow.
func (p *Policy) NewHedger(now func() time.Duration) *Hedger {
	if !p.hedged {
		return nil
	}
	h := &Hedger{hedge: p.hedge}
	if p.hedge.Percentile > 0 {
		h.tracker = NewLatencyTracker(DefaultLatencyWindow, now)
		h.q = p.hedge.Percentile / 100
	}
	return h
}

// Hedge returns the policy's hedge settings.
func (h *Hedger) Hedge() Hedge { return h.hedge }

// Tracker returns the latency tracker, or nil for a fixed delay.
func (h *Hedger) Tracker() *LatencyTracker { return h.tracker }

// Delay returns how long to wait for an answer before a hedge: the fixed
// delay, or the current percentile. It reports false when a percentile has
// too few samples yet.
func (h *Hedger) Delay() (time.Duration, bool) {
	if h.tracker == nil {
		return h.hedge.Delay, true
	}
	d := time.Duration(h.delay.Load())
	return d, d > 0
}

// ObserveAt records the latency d of an attempt that ended at now (a
// reading of the tracker's clock). It does nothing for a fixed delay.
func (h *Hedger) ObserveAt(d, now time.Duration) {
	t := h.tracker
	if t == nil {
		return
	}
	t.ObserveAt(d, now)
	if next := h.next.Load(); int64(now) >= next && h.next.CompareAndSwap(next, int64(now+hedgeRefresh)) {
		h.refresh()
	}
}

// Refresh recomputes the percentile delay now, rather than at the next
// ObserveAt after it is 100ms old.
func (h *Hedger) Refresh() {
	if h.tracker != nil {
		h.refresh()
	}
}

func (h *Hedger) refresh() {
	var d time.Duration
	if q, ok := h.tracker.Quantile(h.q); ok {
		d = max(q, minHedgeDelay)
	}
	h.delay.Store(int64(d))
}
