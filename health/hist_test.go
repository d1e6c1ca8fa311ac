package health

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestHistBuckets(t *testing.T) {
	// Every bucket's range starts where the previous one ends.
	for i := 1; i < histBuckets; i++ {
		_, prevHi := histBounds(i - 1)
		lo, hi := histBounds(i)
		if lo != prevHi || hi <= lo {
			t.Fatalf("bucket %d = [%d, %d), previous ends at %d", i, lo, hi, prevHi)
		}
		// A bucket is at most 1/8 of its lower bound wide.
		if i > 1 && (hi-lo)*histSub > lo {
			t.Fatalf("bucket %d = [%d, %d) is wider than 1/8", i, lo, hi)
		}
	}
	if _, hi := histBounds(histBuckets - 1); hi != 1<<histMaxExp {
		t.Fatalf("last bucket ends at %d, want 2^%d", hi, histMaxExp)
	}
	// Every value falls in the bucket whose range holds it.
	r := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		ns := int64(math.Exp(r.Float64() * math.Log(1<<histMaxExp)))
		i := histBucket(ns)
		if lo, hi := histBounds(i); ns < lo || ns >= hi {
			t.Fatalf("%d ns in bucket %d = [%d, %d)", ns, i, lo, hi)
		}
	}
	for _, ns := range []int64{-5, 0, 1, 1023} {
		if i := histBucket(ns); i != 0 {
			t.Errorf("%d ns in bucket %d, want 0", ns, i)
		}
	}
	for _, ns := range []int64{1 << histMaxExp, math.MaxInt64} {
		if i := histBucket(ns); i != histBuckets-1 {
			t.Errorf("%d ns in bucket %d, want the last", ns, i)
		}
	}
}

// TestHistQuantileAccuracy compares the histogram's quantiles with the exact
// ones of the samples: within 6.25% (half a bucket's width), for point
// masses, uniform, log-normal and bimodal latencies from 5µs to 60s.
func TestHistQuantileAccuracy(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	dists := map[string]func() time.Duration{
		"constant 7ms": func() time.Duration { return 7 * time.Millisecond },
		"constant 5µs": func() time.Duration { return 5 * time.Microsecond },
		"constant 60s": func() time.Duration { return 60 * time.Second },
		"uniform 1-100ms": func() time.Duration {
			return time.Millisecond + time.Duration(r.Int64N(int64(99*time.Millisecond)))
		},
		"lognormal ~20ms": func() time.Duration {
			return time.Duration(math.Exp(math.Log(20e6) + 0.8*r.NormFloat64()))
		},
		"bimodal 2ms/200ms": func() time.Duration {
			if r.IntN(10) == 0 {
				return 200*time.Millisecond + time.Duration(r.Int64N(int64(10*time.Millisecond)))
			}
			return 2*time.Millisecond + time.Duration(r.Int64N(int64(time.Millisecond)))
		},
	}
	for name, gen := range dists {
		var h histogram
		samples := make([]time.Duration, 5000)
		for i := range samples {
			samples[i] = gen()
			h.add(samples[i])
		}
		slices.Sort(samples)
		var buf [histBuckets]uint32
		total := h.drain(&buf)
		if total != uint64(len(samples)) {
			t.Fatalf("%s: drained %d samples, want %d", name, total, len(samples))
		}
		for _, q := range []float64{0.01, 0.5, 0.9, 0.99, 1} {
			want := samples[int(math.Ceil(q*float64(len(samples))))-1]
			got := histQuantile(&buf, total, q)
			if e := math.Abs(float64(got-want)) / float64(want); e > 0.0625 {
				t.Errorf("%s: q%v = %v, exact %v: %.1f%% off", name, q, got, want, 100*e)
			}
		}
	}
}

func TestHistDrainEmpties(t *testing.T) {
	var h histogram
	var buf [histBuckets]uint32
	if got := histQuantile(&buf, h.drain(&buf), 0.9); got != 0 {
		t.Errorf("empty histogram's q0.9 = %v, want 0", got)
	}
	h.add(time.Millisecond)
	h.add(time.Second)
	if n := h.drain(&buf); n != 2 {
		t.Fatalf("drained %d, want 2", n)
	}
	if n := h.drain(&buf); n != 0 {
		t.Fatalf("second drain found %d samples, want 0", n)
	}
}
