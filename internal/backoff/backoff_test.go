package backoff

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// seeded returns a deterministic source of uniform 64-bit values.
func seeded(seed uint64) func() uint64 {
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)).Uint64
}

// Full and equal jitter stay within their bounds at every retry, and their
// means match the uniform distribution's: (lo+hi)/2 within 2% of the step
// (seed 1, 20,000 draws per retry: the standard error of the mean is under
// 0.3% of the step).
func TestJitterBoundsAndMean(t *testing.T) {
	const draws = 20000
	for _, tc := range []struct {
		jitter Jitter
		lo     float64 // the bounds as fractions of exp(n)
	}{{Full, 0}, {Equal, 0.5}} {
		c := Config{Base: 10 * time.Millisecond, Max: 300 * time.Millisecond, Jitter: tc.jitter, Rand: seeded(1)}
		for retry, step := range []time.Duration{10, 20, 40, 80, 160, 300, 300} {
			step *= time.Millisecond
			if got := c.Exp(retry); got != step {
				t.Fatalf("%v: Exp(%d) = %v, want %v", tc.jitter, retry, got, step)
			}
			lo := time.Duration(tc.lo * float64(step))
			var sum float64
			for range draws {
				d := c.Delay(retry)
				if d < lo || d > step {
					t.Fatalf("%v retry %d: %v outside [%v, %v]", tc.jitter, retry, d, lo, step)
				}
				sum += float64(d)
			}
			mean, want := sum/draws, (float64(lo)+float64(step))/2
			if math.Abs(mean-want) > 0.02*float64(step) {
				t.Errorf("%v retry %d: mean %v, want %v ± 2%% of %v", tc.jitter, retry, time.Duration(mean), time.Duration(want), step)
			}
		}
	}
}

// Decorrelated jitter, chained through prev as the AWS definition has it,
// stays within [Base, Max] and draws each delay from [Base, min(Max, 3·prev)]
// (seed 2, 2,000 chains of 30 retries).
func TestDecorrelatedWithinBaseAndMax(t *testing.T) {
	base, limit := 25*time.Millisecond, time.Second
	c := Config{Base: base, Max: limit, Jitter: Decorrelated, Rand: seeded(2)}
	reachedMax := 0
	for range 2000 {
		var prev time.Duration
		for retry := range 30 {
			d := c.Next(retry, prev)
			hi := limit
			if prev > 0 {
				hi = min(limit, 3*prev)
			} else {
				hi = 3 * base
			}
			if d < base || d > hi {
				t.Fatalf("retry %d after %v: %v outside [%v, %v]", retry, prev, d, base, hi)
			}
			prev = d
		}
		if prev > limit/2 {
			reachedMax++
		}
	}
	// The chain wanders over [Base, Max] rather than collapsing to Base: after 30
	// steps a fair share of chains sit in the upper half.
	if reachedMax < 200 {
		t.Errorf("only %d of 2000 chains ended above Max/2", reachedMax)
	}
	// Without history (Delay), the draw is from [Base, 3·exp(n-1)], capped.
	for retry := range 10 {
		hi := 3 * base
		if retry > 0 {
			hi = min(limit, 3*c.Exp(retry-1))
		}
		for range 200 {
			if d := c.Delay(retry); d < base || d > hi {
				t.Fatalf("Delay(%d) = %v outside [%v, %v]", retry, d, base, hi)
			}
		}
	}
}

// Extreme randomness (all zero bits, all one bits) reaches the bounds exactly
// and no further.
func TestJitterExtremes(t *testing.T) {
	zero, ones := func() uint64 { return 0 }, func() uint64 { return math.MaxUint64 }
	c := Config{Base: 100 * time.Millisecond, Max: time.Second}
	for _, tc := range []struct {
		j          Jitter
		prev       time.Duration
		rnd        func() uint64
		retry      int
		want       time.Duration
		wantString string
	}{
		{Full, 0, zero, 2, 0, "full"},
		{Full, 0, ones, 2, 400 * time.Millisecond, "full"},
		{Equal, 0, zero, 2, 200 * time.Millisecond, "equal"},
		{Equal, 0, ones, 2, 400 * time.Millisecond, "equal"},
		{Decorrelated, 200 * time.Millisecond, zero, 5, 100 * time.Millisecond, "decorrelated"},
		{Decorrelated, 200 * time.Millisecond, ones, 5, 600 * time.Millisecond, "decorrelated"},
		{Decorrelated, 900 * time.Millisecond, ones, 5, time.Second, "decorrelated"},
		{Decorrelated, time.Millisecond, ones, 5, 100 * time.Millisecond, "decorrelated"}, // prev below Base
	} {
		c.Jitter, c.Rand = tc.j, tc.rnd
		if got := c.Next(tc.retry, tc.prev); got != tc.want {
			t.Errorf("%v Next(%d, %v) = %v, want %v", tc.j, tc.retry, tc.prev, got, tc.want)
		}
		if tc.j.String() != tc.wantString {
			t.Errorf("String() = %q, want %q", tc.j.String(), tc.wantString)
		}
		if j, err := ParseJitter(tc.wantString); err != nil || j != tc.j {
			t.Errorf("ParseJitter(%q) = %v, %v", tc.wantString, j, err)
		}
	}
	if _, err := ParseJitter("Full"); err == nil {
		t.Error(`ParseJitter("Full") succeeded; names are exact`)
	}
}

// Zero fields take Default's values; huge retry numbers neither overflow nor
// loop; a Max below Base is raised to Base.
func TestDefaultsAndLimits(t *testing.T) {
	ones := func() uint64 { return math.MaxUint64 }
	if got := (Config{Rand: ones}).Delay(0); got != Default.Base {
		t.Errorf("zero Config: Delay(0) = %v, want %v (equal jitter's top)", got, Default.Base)
	}
	if got := (Config{Rand: ones}).Delay(1 << 30); got != Default.Max {
		t.Errorf("Delay(2^30) = %v, want %v", got, Default.Max)
	}
	if got := (Config{Base: time.Second, Max: time.Millisecond, Rand: ones, Jitter: Full}).Delay(3); got != time.Second {
		t.Errorf("Max below Base: Delay = %v, want Base", got)
	}
	if got := (Config{Base: time.Hour, Max: math.MaxInt64, Multiplier: 1e300, Rand: ones, Jitter: Full}).Delay(5); got != math.MaxInt64 {
		t.Errorf("overflowing step: Delay = %v, want Max", got)
	}
	if got := (Config{Base: time.Hour, Max: math.MaxInt64, Rand: ones, Jitter: Decorrelated}).Next(3, math.MaxInt64-1); got != math.MaxInt64 {
		t.Errorf("decorrelated near MaxInt64: %v", got)
	}
}

func BenchmarkDelay(b *testing.B) {
	for _, j := range []Jitter{Full, Equal, Decorrelated} {
		b.Run(j.String(), func(b *testing.B) {
			c := Config{Base: 25 * time.Millisecond, Max: time.Second, Jitter: j}.WithDefaults()
			b.ReportAllocs()
			var d time.Duration
			for i := 0; b.Loop(); i++ {
				d = c.Next(i&7, d)
			}
		})
	}
}
