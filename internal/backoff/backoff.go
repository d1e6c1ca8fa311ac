// Package backoff computes exponential backoff delays with jitter. It is the one
// implementation shared by the feeds' reconnect loops (resolver.Run, the DNS and
// Consul feeds) and the retry package, which exposes its modes to users as the
// "backoff" section of a retry policy.
//
// The jitter modes are those of the AWS Architecture Blog's "Exponential Backoff
// And Jitter" (Marc Brooker, 2015). With exp(n) = min(Max, Base·Multiplier^n),
// the delay before retry n (0 for the first) is:
//
//   - Full: uniform in [0, exp(n)];
//   - Equal: exp(n)/2 plus uniform in [0, exp(n)/2], so in [exp(n)/2, exp(n)];
//   - Decorrelated: min(Max, uniform in [Base, 3·prev]), where prev is the
//     previous delay (Base before the first retry), so always in [Base, Max].
//
// All arithmetic is on integer nanoseconds except the exponential step, and no
// call allocates.
package backoff

import (
	"fmt"
	"math/bits"
	"math/rand/v2"
	"time"
)

// Jitter selects how a delay is randomised.
type Jitter uint8

const (
	// DefaultJitter is the zero value: Default.Jitter (Equal).
	DefaultJitter Jitter = iota
	// Full draws the delay uniformly from [0, exp(n)]: the least correlated
	// retries, and the least total work for contending clients.
	Full
	// Equal draws the delay uniformly from [exp(n)/2, exp(n)]: never less than
	// half the exponential step.
	Equal
	// Decorrelated draws the delay uniformly from [Base, 3·prev], capped at
	// Max: each delay depends on the previous one rather than on the retry
	// number (Multiplier is not used).
	Decorrelated
	numJitters
)

var jitterNames = [...]string{DefaultJitter: "", Full: "full", Equal: "equal", Decorrelated: "decorrelated"}

// String returns the mode's configuration name ("full", "equal",
// "decorrelated"; "" for DefaultJitter).
func (j Jitter) String() string {
	if j < numJitters {
		return jitterNames[j]
	}
	return fmt.Sprintf("jitter(%d)", uint8(j))
}

// ParseJitter returns the mode a configuration name stands for: "full",
// "equal" or "decorrelated".
func ParseJitter(s string) (Jitter, error) {
	for j := Full; j < numJitters; j++ {
		if jitterNames[j] == s {
			return j, nil
		}
	}
	return 0, fmt.Errorf("unknown jitter %q (want \"full\", \"equal\" or \"decorrelated\")", s)
}

// Config is an exponential backoff with jitter. Zero fields take Default's
// values.
type Config struct {
	// Base is the first retry's exponential step, and Decorrelated's lower
	// bound. Default 100ms.
	Base time.Duration
	// Max caps every delay. Default 10s. A Max below Base is raised to Base.
	Max time.Duration
	// Multiplier grows the exponential step per retry. Default 2; values
	// below 1 take the default.
	Multiplier float64
	// Jitter is the randomisation. Default Equal.
	Jitter Jitter
	// Rand returns uniformly random 64-bit values, concurrently. Default
	// math/rand/v2.Uint64.
	Rand func() uint64
}

// Default is the backoff used where none is configured: the feeds' restart and
// re-query backoff.
var Default = Config{Base: 100 * time.Millisecond, Max: 10 * time.Second, Multiplier: 2, Jitter: Equal}

// WithDefaults returns c with every zero (or invalid) field set to Default's
// value and Max raised to Base if it is below it, so that Next need not check
// them again.
func (c Config) WithDefaults() Config {
	if c.Base <= 0 {
		c.Base = Default.Base
	}
	if c.Max <= 0 {
		c.Max = Default.Max
	}
	c.Max = max(c.Max, c.Base)
	if !(c.Multiplier >= 1) { // NaN too
		c.Multiplier = Default.Multiplier
	}
	if c.Jitter == DefaultJitter || c.Jitter >= numJitters {
		c.Jitter = Default.Jitter
	}
	if c.Rand == nil {
		c.Rand = rand.Uint64
	}
	return c
}

// Delay returns the delay before retry number retry (0 for the first), with no
// knowledge of the previous delay: Next(retry, 0).
func (c Config) Delay(retry int) time.Duration { return c.Next(retry, 0) }

// Next returns the delay before retry number retry (0 for the first), given
// prev, the delay returned for the retry before it. Full and Equal ignore prev.
// Decorrelated needs it to be the AWS definition; prev ≤ 0 means "not known"
// and stands for the un-jittered step of the retry before (Base for the first
// retry), so that Delay still grows with retry.
func (c Config) Next(retry int, prev time.Duration) time.Duration {
	c = c.WithDefaults()
	if c.Jitter == Decorrelated {
		if prev <= 0 {
			prev = c.Base
			if retry > 0 {
				prev = c.exp(retry - 1)
			}
		}
		hi := c.Max
		if prev < c.Max/3 {
			hi = 3 * prev
		}
		if hi <= c.Base {
			return min(c.Base, c.Max)
		}
		return c.Base + uniform(c.Rand(), hi-c.Base)
	}
	d := c.exp(retry)
	if c.Jitter == Full {
		return uniform(c.Rand(), d)
	}
	half := d / 2
	return half + uniform(c.Rand(), d-half) // Equal
}

// Exp returns the un-jittered exponential step of retry number retry:
// min(Max, Base·Multiplier^retry), with c's defaults applied.
func (c Config) Exp(retry int) time.Duration { return c.WithDefaults().exp(retry) }

// exp is Exp for a Config with its defaults applied.
func (c Config) exp(retry int) time.Duration {
	d, limit := float64(c.Base), float64(c.Max)
	for i := 0; i < retry && d < limit; i++ {
		d *= c.Multiplier
	}
	if d >= limit {
		return c.Max
	}
	return time.Duration(d)
}

// uniform maps the random value r to [0, n] (n ≥ 0) without division: the
// high word of r·(n+1). The bias is below (n+1)/2⁶⁴.
func uniform(r uint64, n time.Duration) time.Duration {
	hi, _ := bits.Mul64(r, uint64(n)+1)
	return time.Duration(hi)
}
