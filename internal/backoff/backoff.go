// Package backoff computes exponential backoff delays with full jitter. It is the
// one implementation shared by the feeds' reconnect loops and the retry package.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Config is an exponential backoff with jitter. Zero fields take Default's values.
type Config struct {
	// Base is the delay before the first retry (before jitter). Default 100ms.
	Base time.Duration
	// Max caps the delay. Default 10s.
	Max time.Duration
	// Multiplier grows the delay per attempt. Default 2.
	Multiplier float64
	// Jitter is the fraction of the delay that is randomised: the delay is drawn
	// uniformly from [d·(1-Jitter), d]. Default 0.5; 1 is "full jitter".
	Jitter float64
	// Rand returns a float in [0,1). Default math/rand/v2.Float64.
	Rand func() float64
}

// Default is the backoff used where none is configured.
var Default = Config{Base: 100 * time.Millisecond, Max: 10 * time.Second, Multiplier: 2, Jitter: 0.5}

// Delay returns the delay before retry number attempt (0 for the first retry).
func (c Config) Delay(attempt int) time.Duration {
	base, limit, mult, jitter := c.Base, c.Max, c.Multiplier, c.Jitter
	if base <= 0 {
		base = Default.Base
	}
	if limit <= 0 {
		limit = Default.Max
	}
	if mult < 1 {
		mult = Default.Multiplier
	}
	if jitter <= 0 || jitter > 1 {
		jitter = Default.Jitter
	}
	d := float64(base)
	for i := 0; i < attempt && d < float64(limit); i++ {
		d *= mult
	}
	if d > float64(limit) {
		d = float64(limit)
	}
	r := rand.Float64
	if c.Rand != nil {
		r = c.Rand
	}
	return time.Duration(d * (1 - jitter*r()))
}
