package retry

import (
	"testing"
	"time"
)

// FuzzParseHedgeDelay: a hedge delay parses to exactly one of a duration in
// [1ms, 1h] and a percentile in [50, 99.9], or is an error; never a panic.
func FuzzParseHedgeDelay(f *testing.F) {
	for _, s := range []string{"p95", "p99.9", "p50", "20ms", "1h", "p", "p1e2", "pNaN", "p.5", "p95.", "-5ms", "p+95", "p0x1p6"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, p, err := parseHedgeDelay(s)
		switch {
		case err != nil:
			if d != 0 || p != 0 {
				t.Fatalf("%q: error %v with %v, %v", s, err, d, p)
			}
		case d != 0:
			if p != 0 || d < time.Millisecond || d > time.Hour {
				t.Fatalf("%q: %v, %v", s, d, p)
			}
		default:
			if !(p >= 50 && p <= 99.9) {
				t.Fatalf("%q: percentile %v", s, p)
			}
		}
	})
}
