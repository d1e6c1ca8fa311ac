package retry_test

import (
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar/retry"
)

// fakeClock is a monotonic clock tests move by hand, safe for concurrent use.
type fakeClock struct{ t atomic.Int64 }

func (c *fakeClock) now() time.Duration      { return time.Duration(c.t.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.t.Add(int64(d)) }

// exactQuantile is the nearest-rank q-quantile of xs.
func exactQuantile(xs []time.Duration, q float64) time.Duration {
	s := slices.Clone(xs)
	slices.Sort(s)
	rank := max(int(math.Ceil(q*float64(len(s)))), 1)
	return s[rank-1]
}

// within reports whether got is the tracker's answer for the exact quantile
// want: at or above it, and above by at most 1/16 of it or 1µs.
func within(got, want time.Duration) bool {
	w := want.Truncate(time.Microsecond)
	return got > w && got <= w+max(w/16, time.Microsecond)
}

// Known distributions: uniform, exponential and bimodal (one endpoint 10×
// slow), 20,000 samples each from a seeded source (PCG 7, 11): every
// quantile is within the bucket bound of the exact nearest-rank quantile.
func TestLatencyQuantileKnownDistributions(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	dists := map[string]func() time.Duration{
		"uniform 0-10ms": func() time.Duration { return time.Duration(r.Int64N(int64(10 * time.Millisecond))) },
		"exponential 2ms": func() time.Duration {
			return time.Duration(r.ExpFloat64() * float64(2*time.Millisecond))
		},
		"bimodal 2ms/20ms": func() time.Duration {
			if r.IntN(5) == 0 {
				return 20*time.Millisecond + time.Duration(r.Int64N(int64(time.Millisecond)))
			}
			return 2*time.Millisecond + time.Duration(r.Int64N(int64(time.Millisecond)))
		},
		"sub-32µs": func() time.Duration { return time.Duration(r.Int64N(int64(32 * time.Microsecond))) },
		"hours":    func() time.Duration { return time.Duration(r.Int64N(int64(2 * time.Hour))) },
	}
	for name, draw := range dists {
		t.Run(name, func(t *testing.T) {
			clk := &fakeClock{}
			tr := retry.NewLatencyTracker(time.Second, clk.now)
			xs := make([]time.Duration, 20000)
			for i := range xs {
				xs[i] = draw()
				tr.Observe(xs[i])
			}
			if n := tr.Count(); n != uint64(len(xs)) {
				t.Fatalf("count %d, want %d", n, len(xs))
			}
			for _, q := range []float64{0, 0.01, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1} {
				got, ok := tr.Quantile(q)
				want := exactQuantile(xs, q)
				if want > time.Duration(1<<32-1)*time.Microsecond {
					want = time.Duration(1<<32-1) * time.Microsecond // the top bucket
				}
				if !ok || !within(got, want) {
					t.Errorf("q%v: got %v (%v), exact %v", q, got, ok, want)
				}
			}
		})
	}
}

// Every value from 0 to 70 minutes falls in a bucket whose upper edge is
// above it by at most 1/16 (or 1µs): checked at each power of two, its
// neighbours and random points, with the quantile of one sample.
func TestLatencyBucketEdges(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 5))
	var vals []time.Duration
	for e := range 33 {
		p := time.Duration(1<<e) * time.Microsecond
		vals = append(vals, p-time.Microsecond, p, p+time.Microsecond, p+p/2)
	}
	for range 2000 {
		vals = append(vals, time.Duration(r.Int64N(int64(70*time.Minute))))
	}
	for _, v := range vals {
		clk := &fakeClock{}
		tr := retry.NewLatencyTracker(time.Second, clk.now)
		for range retry.MinLatencySamples {
			tr.Observe(v)
		}
		got, ok := tr.Quantile(0.5)
		want := min(max(v, 0), time.Duration(1<<32-1)*time.Microsecond)
		if !ok || !within(got, want) {
			t.Fatalf("%v: quantile %v (%v)", v, got, ok)
		}
	}
	// Negative latencies count as 0; beyond the range, in the top bucket.
	clk := &fakeClock{}
	tr := retry.NewLatencyTracker(time.Second, clk.now)
	for range retry.MinLatencySamples {
		tr.Observe(-time.Second)
		tr.Observe(1000 * time.Hour)
	}
	if got, _ := tr.Quantile(0.5); got != time.Microsecond {
		t.Fatalf("negative: %v, want 1µs", got)
	}
	if got, _ := tr.Quantile(1); got != time.Duration(1<<32)*time.Microsecond {
		t.Fatalf("1000h: %v, want the top edge", got)
	}
}

// Fewer than MinLatencySamples: no quantile. Bad q: none either.
func TestLatencyQuantileNeedsSamples(t *testing.T) {
	clk := &fakeClock{}
	tr := retry.NewLatencyTracker(time.Second, clk.now)
	for range retry.MinLatencySamples - 1 {
		tr.Observe(time.Millisecond)
	}
	if d, ok := tr.Quantile(0.95); ok || d != 0 {
		t.Fatalf("with %d samples: %v %v", retry.MinLatencySamples-1, d, ok)
	}
	tr.Observe(time.Millisecond)
	if _, ok := tr.Quantile(0.95); !ok {
		t.Fatal("no quantile with MinLatencySamples samples")
	}
	for _, q := range []float64{-0.1, 1.1, math.NaN(), math.Inf(1)} {
		if _, ok := tr.Quantile(q); ok {
			t.Errorf("q %v answered", q)
		}
	}
}

// The window slides a generation (window/4) at a time: samples count for
// between 3/4 and all of the window, then leave it; a slot reused for a new
// generation starts empty.
func TestLatencyWindowRotation(t *testing.T) {
	clk := &fakeClock{}
	tr := retry.NewLatencyTracker(4*time.Second, clk.now) // generations of 1s
	if tr.Window() != 4*time.Second {
		t.Fatalf("window %v", tr.Window())
	}
	for range 200 {
		tr.Observe(10 * time.Millisecond)
	}
	clk.advance(999 * time.Millisecond) // still generation 0
	for range 200 {
		tr.Observe(time.Millisecond)
	}
	if n := tr.Count(); n != 400 {
		t.Fatalf("count %d, want 400", n)
	}
	if got, _ := tr.Quantile(0.5); !within(got, time.Millisecond) {
		t.Fatalf("median %v, want ~1ms", got)
	}
	// Generations 1-3: the old samples are still in the window.
	clk.advance(3 * time.Second) // 3.999s: generation 3
	if n := tr.Count(); n != 400 {
		t.Fatalf("at 3.999s: count %d, want 400", n)
	}
	// From generation 4 on, generation 0 is out of the window.
	clk.advance(time.Millisecond)
	if n := tr.Count(); n != 0 {
		t.Fatalf("at 4s: count %d, want 0", n)
	}
	for range 150 {
		tr.Observe(5 * time.Millisecond)
	}
	if n := tr.Count(); n != 150 {
		t.Fatalf("generation 4: count %d, want 150", n)
	}
	if got, _ := tr.Quantile(0.99); !within(got, 5*time.Millisecond) {
		t.Fatalf("p99 %v, want ~5ms", got)
	}
	// A sample more than a window late (a stale clock reading) is dropped,
	// not counted into the generation that reused its slot.
	tr.ObserveAt(time.Hour, 0)
	if n, d := tr.Count(), tr.Dropped(); n != 150 || d != 1 {
		t.Fatalf("late sample: count %d dropped %d", n, d)
	}
	// Generation 5 takes generation 0's slot, cleared ahead when generation
	// 4 started.
	clk.advance(time.Second)
	for range 50 {
		tr.Observe(7 * time.Millisecond)
	}
	if n := tr.Count(); n != 200 {
		t.Fatalf("generation 5: count %d, want 150 + 50", n)
	}
	if got, _ := tr.Quantile(0.99); !within(got, 7*time.Millisecond) {
		t.Fatalf("generation 5: p99 %v, want ~7ms", got)
	}
	// After an idle spell, generation 10 finds generation 5 in its slot
	// (nothing cleared it ahead) and clears it first.
	clk.advance(5 * time.Second)
	for range 120 {
		tr.Observe(3 * time.Millisecond)
	}
	if n := tr.Count(); n != 120 {
		t.Fatalf("generation 10: count %d, want 120", n)
	}
	if got, _ := tr.Quantile(1); !within(got, 3*time.Millisecond) {
		t.Fatalf("generation 10: max %v, want ~3ms (generation 5's 7ms left over?)", got)
	}
	// A jump of many windows: everything is out.
	clk.advance(time.Hour)
	if n := tr.Count(); n != 0 {
		t.Fatalf("an hour later: count %d", n)
	}
	if _, ok := tr.Quantile(0.5); ok {
		t.Fatal("an hour later: a quantile from an empty window")
	}
}

// Concurrent observers (8 goroutines × 5,000) on one generation lose
// nothing; with the clock moving under them the counts stay consistent
// (every sample counted or dropped, none twice). Run with -race.
func TestLatencyConcurrentObserve(t *testing.T) {
	clk := &fakeClock{}
	tr := retry.NewLatencyTracker(4*time.Second, clk.now)
	const workers, each = 8, 5000
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				tr.Observe(time.Duration(w*each+i) * time.Microsecond)
			}
		})
	}
	wg.Wait()
	if n := tr.Count(); n != workers*each {
		t.Fatalf("count %d, want %d", n, workers*each)
	}
	got, _ := tr.Quantile(0.5)
	if !within(got, time.Duration(workers*each/2-1)*time.Microsecond) {
		t.Fatalf("median %v", got)
	}

	// Now with the clock crossing generations as they observe (slots are
	// cleared and reused under them): nothing is counted twice, whatever
	// races the clearing is dropped or counted once, and the race detector
	// sees no unsynchronised access.
	clk2 := &fakeClock{}
	tr2 := retry.NewLatencyTracker(4*time.Millisecond, clk2.now) // generations of 1ms
	stop := make(chan struct{})
	var mover sync.WaitGroup
	mover.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			clk2.advance(100 * time.Microsecond)
			if i%50 == 0 {
				time.Sleep(0) // let the observers run (not a synchronisation)
			}
		}
	})
	var observed atomic.Uint64
	for range workers {
		wg.Go(func() {
			for range each {
				tr2.Observe(time.Millisecond)
				observed.Add(1)
			}
		})
	}
	wg.Wait()
	close(stop)
	mover.Wait()
	n, d := tr2.Count(), tr2.Dropped()
	if n+d > observed.Load() {
		t.Fatalf("counted %d + dropped %d > observed %d", n, d, observed.Load())
	}
	t.Logf("observed %d: in window %d, dropped %d", observed.Load(), n, d)
}

// The Hedger: a fixed delay is its own; a percentile has none until
// MinLatencySamples, then the tracker's quantile, recomputed at most every
// 100ms, never below 1ms.
func TestHedgerDelay(t *testing.T) {
	fixed := mustPolicy(t, retry.Config{Hedge: &retry.HedgeConfig{Delay: "20ms", MaxExtra: 2}})
	h := fixed.NewHedger(nil)
	if d, ok := h.Delay(); !ok || d != 20*time.Millisecond || h.Tracker() != nil || h.Hedge().MaxExtra != 2 {
		t.Fatalf("fixed: %v %v tracker %v", d, ok, h.Tracker())
	}
	h.ObserveAt(time.Second, 0) // no tracker: nothing to do
	if none := mustPolicy(t, retry.Config{}).NewHedger(nil); none != nil {
		t.Fatal("a hedger without a hedge section")
	}

	clk := &fakeClock{}
	clk.advance(time.Hour)
	p := mustPolicy(t, retry.Config{Hedge: &retry.HedgeConfig{Delay: "p90"}})
	h = p.NewHedger(clk.now)
	if h.Tracker() == nil || h.Tracker().Window() != retry.DefaultLatencyWindow {
		t.Fatal("percentile hedger without its tracker")
	}
	for i := range retry.MinLatencySamples - 1 {
		h.ObserveAt(time.Duration(i+1)*100*time.Microsecond, clk.now())
		clk.advance(101 * time.Millisecond) // each observation refreshes; all stay in the window
		if _, ok := h.Delay(); ok {
			t.Fatalf("a delay after %d samples", i+1)
		}
	}
	h.ObserveAt(10*time.Millisecond, clk.now()) // the 100th: 0.1ms … 9.9ms, 10ms
	d, ok := h.Delay()
	if !ok || !within(d, 9*time.Millisecond) {
		t.Fatalf("p90 of 0.1…10ms: %v %v, want ~9ms", d, ok)
	}
	// Within 100ms of the last refresh, new samples do not move it.
	for range 1000 {
		h.ObserveAt(50*time.Millisecond, clk.now())
	}
	if d2, _ := h.Delay(); d2 != d {
		t.Fatalf("refreshed within 100ms: %v → %v", d, d2)
	}
	clk.advance(100 * time.Millisecond)
	h.ObserveAt(50*time.Millisecond, clk.now())
	if d2, _ := h.Delay(); !within(d2, 50*time.Millisecond) {
		t.Fatalf("after 100ms: %v, want ~50ms", d2)
	}
	// Never below 1ms.
	clk.advance(time.Hour)
	for range 200 {
		h.ObserveAt(10*time.Microsecond, clk.now())
	}
	h.Refresh()
	if d, ok := h.Delay(); !ok || d != time.Millisecond {
		t.Fatalf("fast service: %v %v, want the 1ms floor", d, ok)
	}
}
